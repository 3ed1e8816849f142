// CPU backend of composable sparse deltas: a linear k-way merge of the sorted
// index lists (validating order and range before anything is written), then one
// parallel pass that saves the original values and adds the merged delta.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <torch/library.h>

#include <limits>
#include <vector>

#include "sparse/sparse_checks.h"

namespace peftcore {
namespace {

// The union of the deltas' indices with weighted, summed values, in Acc.
template <typename Acc>
struct MergedDelta {
  std::vector<int64_t> indices;
  std::vector<Acc> values;
};

template <typename Acc>
MergedDelta<Acc> merge_deltas(at::TensorList indices, at::TensorList values,
                              at::ArrayRef<double> weights, int64_t numel) {
  const size_t k = indices.size();
  std::vector<const int64_t*> idx(k);
  std::vector<at::Tensor> vals(k);
  std::vector<int64_t> pos(k, 0), len(k);
  size_t total = 0;
  for (size_t i = 0; i < k; ++i) {
    idx[i] = indices[i].contiguous().const_data_ptr<int64_t>();
    vals[i] = values[i].to(c10::CppTypeToScalarType<Acc>::value).contiguous();
    len[i] = indices[i].numel();
    total += static_cast<size_t>(len[i]);
  }
  MergedDelta<Acc> out;
  out.indices.reserve(total);
  out.values.reserve(total);
  while (true) {
    int64_t next = std::numeric_limits<int64_t>::max();
    for (size_t i = 0; i < k; ++i) {
      if (pos[i] < len[i]) next = std::min(next, idx[i][pos[i]]);
    }
    if (next == std::numeric_limits<int64_t>::max()) break;
    TORCH_CHECK(next >= 0 && next < numel, "sparse_compose_: index ", next,
                " is out of range for a parameter of ", numel, " elements");
    Acc sum = 0;
    for (size_t i = 0; i < k; ++i) {
      if (pos[i] < len[i] && idx[i][pos[i]] == next) {
        sum += static_cast<Acc>(weights[i]) * vals[i].const_data_ptr<Acc>()[pos[i]];
        ++pos[i];
        TORCH_CHECK(pos[i] == len[i] || idx[i][pos[i]] > next, "sparse_compose_: indices[", i,
                    "] must be strictly increasing, but position ", pos[i], " holds ",
                    idx[i][pos[i]], " after ", next);
      }
    }
    out.indices.push_back(next);
    out.values.push_back(sum);
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor> sparse_compose_cpu(const at::Tensor& param, at::TensorList indices,
                                                      at::TensorList values,
                                                      at::ArrayRef<double> weights) {
  check_sparse_compose(param, indices, values, weights.vec());
  at::Tensor union_idx, originals;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, param.scalar_type(), "sparse_compose_", [&] {
    using Acc = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    MergedDelta<Acc> merged = merge_deltas<Acc>(indices, values, weights, param.numel());
    const int64_t n = static_cast<int64_t>(merged.indices.size());
    union_idx = at::empty({n}, param.options().dtype(at::kLong));
    std::copy(merged.indices.begin(), merged.indices.end(), union_idx.mutable_data_ptr<int64_t>());
    originals = at::empty({n}, param.options());
    scalar_t* p = param.mutable_data_ptr<scalar_t>();
    scalar_t* orig = originals.mutable_data_ptr<scalar_t>();
    const int64_t* ix = merged.indices.data();
    const Acc* dv = merged.values.data();
    // Indices are unique, so iterations never touch the same element.
    at::parallel_for(0, n, 4096, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const scalar_t old = p[ix[i]];
        orig[i] = old;
        p[ix[i]] = static_cast<scalar_t>(static_cast<Acc>(old) + dv[i]);
      }
    });
  });
  return {union_idx, originals};
}

void sparse_revert_cpu(const at::Tensor& param, const at::Tensor& indices, const at::Tensor& originals) {
  check_sparse_revert(param, indices, originals);
  const at::Tensor ix_t = indices.contiguous(), orig_t = originals.contiguous();
  const int64_t n = ix_t.numel(), numel = param.numel();
  const int64_t* ix = ix_t.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {  // validate before writing anything
    TORCH_CHECK(ix[i] >= 0 && ix[i] < numel, "sparse_revert_: index ", ix[i],
                " is out of range for a parameter of ", numel, " elements");
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, param.scalar_type(), "sparse_revert_", [&] {
    scalar_t* p = param.mutable_data_ptr<scalar_t>();
    const scalar_t* orig = orig_t.const_data_ptr<scalar_t>();
    at::parallel_for(0, n, 4096, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) p[ix[i]] = orig[i];
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(peftcore, CPU, m) {
  m.impl("sparse_compose_", &sparse_compose_cpu);
  m.impl("sparse_revert_", &sparse_revert_cpu);
}

}  // namespace peftcore
