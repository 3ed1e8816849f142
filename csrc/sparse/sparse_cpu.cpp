// CPU backend of composable sparse deltas. Phase 1, in parallel over parameters:
// a linear k-way merge of each parameter's sorted index lists into one union
// with summed, weighted values, validating order and range. Phase 2 writes only
// if phase 1 found no error: it saves the original values and adds the delta.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <vector>

#include "sparse/sparse_checks.h"

namespace peftcore {
namespace {

// How far ahead the scattered writes prefetch their target.
constexpr int64_t kPrefetch = 16;

template <typename Acc>
at::ScalarType acc_dtype() {
  return std::is_same_v<Acc, double> ? at::kDouble : at::kFloat;
}

// Raises unless idx[0..n) is strictly increasing and inside [0, numel).
void check_index_list(const int64_t* idx, int64_t n, int64_t numel, int64_t entry) {
  bool ok = n == 0 || (idx[0] >= 0 && idx[n - 1] < numel);
  for (int64_t i = 1; i < n; ++i) ok &= idx[i] > idx[i - 1];
  if (ok) return;
  for (int64_t i = 0; i < n; ++i) {  // slow path: name the first offending position
    TORCH_CHECK(idx[i] >= 0 && idx[i] < numel, "sparse_compose_: indices[", entry, "] holds ", idx[i],
                " at position ", i, ", out of range for a parameter of ", numel, " elements");
    TORCH_CHECK(i == 0 || idx[i] > idx[i - 1], "sparse_compose_: indices[", entry,
                "] must be strictly increasing, but position ", i, " holds ", idx[i], " after ",
                idx[i - 1]);
  }
}

// A sorted index list with weighted values, read in place: value i is w * val[i].
template <typename Acc>
struct WeightedList {
  const int64_t* idx;
  const Acc* val;
  int64_t n;
  Acc w;
};

// Two-pointer merge of sorted unique lists into out_idx / out_val (room for a.n + b.n);
// equal indices add. Returns the union's length.
template <typename Acc>
int64_t merge_two(const WeightedList<Acc>& a, const WeightedList<Acc>& b, int64_t* out_idx, Acc* out_val) {
  int64_t i = 0, j = 0, n = 0;
  while (i < a.n && j < b.n) {
    const int64_t x = a.idx[i], y = b.idx[j];
    out_idx[n] = x < y ? x : y;
    out_val[n] = (x <= y ? a.w * a.val[i] : Acc(0)) + (y <= x ? b.w * b.val[j] : Acc(0));
    i += x <= y;
    j += y <= x;
    ++n;
  }
  for (; i < a.n; ++i, ++n) out_idx[n] = a.idx[i], out_val[n] = a.w * a.val[i];
  for (; j < b.n; ++j, ++n) out_idx[n] = b.idx[j], out_val[n] = b.w * b.val[j];
  return n;
}

// One parameter's parts (entry numbers): validated, weighted and merged straight from
// the inputs into the returned tensors (one pass per merge, no intermediate copies).
template <typename Acc>
std::pair<at::Tensor, at::Tensor> merge_parts(const std::vector<int64_t>& parts, at::TensorList indices,
                                              at::TensorList values, at::ArrayRef<double> weights,
                                              int64_t numel) {
  std::vector<at::Tensor> keep;  // contiguous / converted inputs, alive while read
  std::vector<WeightedList<Acc>> lists;
  int64_t total = 0;
  for (const int64_t j : parts) {
    const at::Tensor idx_t = indices[j].contiguous();
    const at::Tensor val_t = values[j].to(acc_dtype<Acc>()).contiguous();
    check_index_list(idx_t.const_data_ptr<int64_t>(), idx_t.numel(), numel, j);
    lists.push_back({idx_t.const_data_ptr<int64_t>(), val_t.const_data_ptr<Acc>(), idx_t.numel(),
                     static_cast<Acc>(weights[j])});
    keep.push_back(idx_t);
    keep.push_back(val_t);
    total += idx_t.numel();
  }
  const auto idx_opts = indices[parts[0]].options();
  const auto val_opts = values[parts[0]].options().dtype(acc_dtype<Acc>());
  at::Tensor union_idx = at::empty({total}, idx_opts), delta = at::empty({total}, val_opts);
  int64_t* out_idx = union_idx.mutable_data_ptr<int64_t>();
  Acc* out_val = delta.mutable_data_ptr<Acc>();
  int64_t n = 0;
  if (lists.size() == 1) {
    const auto& a = lists[0];
    std::copy(a.idx, a.idx + a.n, out_idx);
    for (int64_t i = 0; i < a.n; ++i) out_val[i] = a.w * a.val[i];
    n = a.n;
  } else {
    // Pairwise: the running union ping-pongs between the output and a scratch pair.
    at::Tensor scratch_idx = at::empty({total}, idx_opts), scratch_val = at::empty({total}, val_opts);
    int64_t* dst_idx[2] = {out_idx, scratch_idx.mutable_data_ptr<int64_t>()};
    Acc* dst_val[2] = {out_val, scratch_val.mutable_data_ptr<Acc>()};
    // Merge so that the last merge lands in the output: start in slot (k - 2) % 2.
    int slot = static_cast<int>((lists.size() - 2) % 2);
    n = merge_two(lists[0], lists[1], dst_idx[slot], dst_val[slot]);
    for (size_t k = 2; k < lists.size(); ++k) {
      const WeightedList<Acc> acc{dst_idx[slot], dst_val[slot], n, Acc(1)};
      slot ^= 1;
      n = merge_two(acc, lists[k], dst_idx[slot], dst_val[slot]);
    }
  }
  // Shrinking keeps the storage: at most the overlap count of entries is unused.
  union_idx.resize_({n});
  delta.resize_({n});
  return {union_idx, delta};
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> sparse_compose_cpu(
    at::TensorList params, at::TensorList indices, at::TensorList values, at::IntArrayRef owner,
    at::ArrayRef<double> weights) {
  const auto parts = check_sparse_compose(params, indices, values, owner, weights);
  const int64_t n = static_cast<int64_t>(params.size());
  std::vector<at::Tensor> unions(n), deltas(n), originals(n);
  at::parallel_for(0, n, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      if (parts[i].empty()) {
        unions[i] = at::empty({0}, params[i].options().dtype(at::kLong));
        continue;
      }
      std::tie(unions[i], deltas[i]) =
          params[i].scalar_type() == at::kDouble
              ? merge_parts<double>(parts[i], indices, values, weights, params[i].numel())
              : merge_parts<float>(parts[i], indices, values, weights, params[i].numel());
    }
  });
  // Every index list is valid: now write. Indices are unique, so no two writes collide.
  at::parallel_for(0, n, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const at::Tensor& param = params[i];
      originals[i] = at::empty({unions[i].numel()}, param.options());
      if (unions[i].numel() == 0) continue;
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, param.scalar_type(), "sparse_compose_", [&] {
        using Acc = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
        scalar_t* p = param.mutable_data_ptr<scalar_t>();
        scalar_t* orig = originals[i].mutable_data_ptr<scalar_t>();
        const int64_t* ix = unions[i].const_data_ptr<int64_t>();
        const Acc* dv = deltas[i].const_data_ptr<Acc>();
        const int64_t count = unions[i].numel();
        for (int64_t j = 0; j < count; ++j) {
          // Scattered rows of a large parameter miss the cache: fetch ahead.
          if (j + kPrefetch < count) __builtin_prefetch(p + ix[j + kPrefetch], 1);
          const scalar_t old = p[ix[j]];
          orig[j] = old;
          p[ix[j]] = static_cast<scalar_t>(static_cast<Acc>(old) + dv[j]);
        }
      });
    }
  });
  return {unions, originals};
}

void sparse_revert_cpu(at::TensorList params, at::TensorList indices, at::TensorList originals) {
  check_sparse_revert(params, indices, originals);
  const int64_t n = static_cast<int64_t>(params.size());
  std::vector<at::Tensor> ix_t(n), orig_t(n);
  for (int64_t i = 0; i < n; ++i) {
    ix_t[i] = indices[i].contiguous();
    orig_t[i] = originals[i].contiguous();
  }
  // Validate every list before writing anything.
  std::vector<uint8_t> bad(n, 0);
  at::parallel_for(0, n, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t* ix = ix_t[i].const_data_ptr<int64_t>();
      const int64_t numel = params[i].numel();
      bool ok = true;
      for (int64_t j = 0; j < ix_t[i].numel(); ++j) ok &= ix[j] >= 0 && ix[j] < numel;
      bad[i] = !ok;
    }
  });
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(!bad[i], "sparse_revert_: indices[", i, "] has values outside [0, ", params[i].numel(), ")");
  }
  at::parallel_for(0, n, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[i].scalar_type(), "sparse_revert_", [&] {
        scalar_t* p = params[i].mutable_data_ptr<scalar_t>();
        const scalar_t* orig = orig_t[i].const_data_ptr<scalar_t>();
        const int64_t* ix = ix_t[i].const_data_ptr<int64_t>();
        const int64_t count = ix_t[i].numel();
        for (int64_t j = 0; j < count; ++j) {
          if (j + kPrefetch < count) __builtin_prefetch(p + ix[j + kPrefetch], 1);
          p[ix[j]] = orig[j];
        }
      });
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(peftcore, CPU, m) {
  m.impl("sparse_compose_", &sparse_compose_cpu);
  m.impl("sparse_revert_", &sparse_revert_cpu);
}

}  // namespace peftcore
