// CPU backend of composable sparse deltas. Phase 1 checks every index list (order
// and range). Phase 2, only if all are valid, runs one pass per parameter (in
// parallel over parameters): a linear merge of its sorted index lists whose final
// step writes the parameter directly, saving the original values on the way.
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

// Two-pointer merge of sorted unique lists; equal indices add. For each union entry,
// in increasing order, it calls emit(n, k, d, i, j): its position n in the union, its
// index k and summed value d, and the read positions i, j in a and b. Returns the
// union's length.
template <typename Acc, typename Emit>
int64_t merge_two(const WeightedList<Acc>& a, const WeightedList<Acc>& b, const Emit& emit) {
  int64_t i = 0, j = 0, n = 0;
  while (i < a.n && j < b.n) {
    const int64_t x = a.idx[i], y = b.idx[j];
    emit(n++, x < y ? x : y, (x <= y ? a.w * a.val[i] : Acc(0)) + (y <= x ? b.w * b.val[j] : Acc(0)), i, j);
    i += x <= y;
    j += y <= x;
  }
  for (; i < a.n; ++i) emit(n++, a.idx[i], a.w * a.val[i], i, j);
  for (; j < b.n; ++j) emit(n++, b.idx[j], b.w * b.val[j], i, j);
  return n;
}

// One parameter's parts (entry numbers), already validated, as weighted lists read in
// place (values converted to Acc only when they are not Acc already).
template <typename Acc>
std::vector<WeightedList<Acc>> weighted_lists(const std::vector<int64_t>& parts, at::TensorList indices,
                                              at::TensorList values, at::ArrayRef<double> weights,
                                              std::vector<at::Tensor>& keep) {
  std::vector<WeightedList<Acc>> lists;
  for (const int64_t j : parts) {
    const at::Tensor idx_t = indices[j].contiguous();
    const at::Tensor val_t = values[j].to(acc_dtype<Acc>()).contiguous();
    lists.push_back({idx_t.const_data_ptr<int64_t>(), val_t.const_data_ptr<Acc>(), idx_t.numel(),
                     static_cast<Acc>(weights[j])});
    keep.push_back(idx_t);
    keep.push_back(val_t);
  }
  return lists;
}

// Adds one parameter's parts into it in a single pass: the lists but the last are
// merged into a scratch union first (ping-pong for three or more), and the final
// merge writes the parameter directly, saving its original values and the union's
// indices on the way. Returns (union indices, originals).
template <typename T>
std::pair<at::Tensor, at::Tensor> compose_parameter(const at::Tensor& param, const std::vector<int64_t>& parts,
                                                    at::TensorList indices, at::TensorList values,
                                                    at::ArrayRef<double> weights) {
  using Acc = std::conditional_t<std::is_same_v<T, double>, double, float>;
  std::vector<at::Tensor> keep;  // contiguous / converted inputs, alive while read
  std::vector<WeightedList<Acc>> lists = weighted_lists<Acc>(parts, indices, values, weights, keep);
  int64_t total = 0;
  for (const auto& l : lists) total += l.n;
  const auto idx_opts = indices[parts[0]].options();
  at::Tensor union_idx = at::empty({total}, idx_opts), originals = at::empty({total}, param.options());
  int64_t* out_idx = union_idx.mutable_data_ptr<int64_t>();
  T* orig = originals.mutable_data_ptr<T>();
  T* p = param.mutable_data_ptr<T>();
  // Scattered rows of a large parameter miss the cache: the final pass fetches the
  // targets of its two lists ahead.
  WeightedList<Acc> last = lists.back(), acc = lists.front();
  auto write = [&](int64_t n, int64_t k, Acc d) {
    const T old = p[k];
    orig[n] = old;
    p[k] = static_cast<T>(static_cast<Acc>(old) + d);
    out_idx[n] = k;
  };
  int64_t n = 0;
  if (lists.size() == 1) {
    for (int64_t i = 0; i < acc.n; ++i) {
      if (i + kPrefetch < acc.n) __builtin_prefetch(p + acc.idx[i + kPrefetch], 1);
      write(i, acc.idx[i], acc.w * acc.val[i]);
    }
    n = acc.n;
  } else {
    std::vector<int64_t> scratch_idx[2];
    std::vector<Acc> scratch_val[2];
    for (size_t k = 1; k + 1 < lists.size(); ++k) {  // lists[0..k] into one union
      const int slot = static_cast<int>(k & 1);
      scratch_idx[slot].resize(acc.n + lists[k].n);
      scratch_val[slot].resize(acc.n + lists[k].n);
      int64_t* si = scratch_idx[slot].data();
      Acc* sv = scratch_val[slot].data();
      const int64_t len = merge_two(acc, lists[k], [&](int64_t m, int64_t key, Acc d, int64_t, int64_t) {
        si[m] = key, sv[m] = d;
      });
      acc = {si, sv, len, Acc(1)};
    }
    n = merge_two(acc, last, [&](int64_t m, int64_t key, Acc d, int64_t i, int64_t j) {
      // The merge advances through both lists: fetch the coming targets of each.
      if (i + kPrefetch < acc.n) __builtin_prefetch(p + acc.idx[i + kPrefetch], 1);
      if (j + kPrefetch < last.n) __builtin_prefetch(p + last.idx[j + kPrefetch], 1);
      write(m, key, d);
    });
  }
  // Shrinking keeps the storage: at most the overlap count of entries is unused.
  union_idx.resize_({n});
  originals.resize_({n});
  return {union_idx, originals};
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> sparse_compose_cpu(
    at::TensorList params, at::TensorList indices, at::TensorList values, at::IntArrayRef owner,
    at::ArrayRef<double> weights) {
  const auto parts = check_sparse_compose(params, indices, values, owner, weights);
  const int64_t n = static_cast<int64_t>(params.size());
  // Every index list is checked (order and range) before anything is written.
  at::parallel_for(0, static_cast<int64_t>(indices.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j) {
      const at::Tensor idx_t = indices[j].contiguous();
      check_index_list(idx_t.const_data_ptr<int64_t>(), idx_t.numel(), params[owner[j]].numel(), j);
    }
  });
  // Then one pass per parameter. Union indices are unique: no two writes collide.
  std::vector<at::Tensor> unions(n), originals(n);
  at::parallel_for(0, n, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      if (parts[i].empty()) {
        unions[i] = at::empty({0}, params[i].options().dtype(at::kLong));
        originals[i] = at::empty({0}, params[i].options());
        continue;
      }
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[i].scalar_type(), "sparse_compose_", [&] {
        std::tie(unions[i], originals[i]) = compose_parameter<scalar_t>(params[i], parts[i], indices, values, weights);
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
