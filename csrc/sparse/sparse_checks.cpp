#include "sparse/sparse_checks.h"

#include <c10/util/Exception.h>

namespace peftcore {
namespace {

void check_param(const char* op, size_t i, const at::Tensor& param) {
  TORCH_CHECK(param.defined() && at::isFloatingType(param.scalar_type()), op, ": params[", i,
              "] must be a floating tensor, got ",
              param.defined() ? c10::toString(param.scalar_type()) : "undefined");
  TORCH_CHECK(param.is_contiguous(), op, ": params[", i, "] with shape ", param.sizes(),
              " must be contiguous");
}

void check_index_tensor(const char* op, const char* name, size_t j, const at::Tensor& idx,
                        const at::Tensor& param) {
  TORCH_CHECK(idx.scalar_type() == at::kLong && idx.dim() == 1, op, ": ", name, "[", j,
              "] must be a 1-D int64 tensor, got ", idx.scalar_type(), " of shape ", idx.sizes());
  TORCH_CHECK(idx.device() == param.device(), op, ": ", name, "[", j, "] is on ", idx.device(),
              " but its parameter is on ", param.device());
}

}  // namespace

std::vector<std::vector<int64_t>> check_sparse_compose(at::TensorList params, at::TensorList indices,
                                                       at::TensorList values, at::IntArrayRef owner,
                                                       at::ArrayRef<double> weights, const char* op) {
  for (size_t i = 0; i < params.size(); ++i) check_param(op, i, params[i]);
  const size_t n = indices.size();
  TORCH_CHECK(values.size() == n && owner.size() == n && weights.size() == n, op,
              ": indices, values, owner and weights must have one entry per delta part, got ", n,
              ", ", values.size(), ", ", owner.size(), " and ", weights.size());
  std::vector<std::vector<int64_t>> parts(params.size());
  for (size_t j = 0; j < n; ++j) {
    TORCH_CHECK(owner[j] >= 0 && owner[j] < static_cast<int64_t>(params.size()), op, ": owner[", j,
                "]=", owner[j], " is not a parameter index (", params.size(), " params)");
    const at::Tensor& param = params[owner[j]];
    check_index_tensor(op, "indices", j, indices[j], param);
    TORCH_CHECK(values[j].dim() == 1 && values[j].numel() == indices[j].numel(), op, ": values[", j,
                "] must be 1-D with one value per index (", indices[j].numel(), "), got shape ",
                values[j].sizes());
    TORCH_CHECK(at::isFloatingType(values[j].scalar_type()) && values[j].device() == param.device(),
                op, ": values[", j, "] must be a floating tensor on ", param.device(), ", got ",
                values[j].scalar_type(), " on ", values[j].device());
    parts[owner[j]].push_back(static_cast<int64_t>(j));
  }
  return parts;
}

void check_sparse_revert(at::TensorList params, at::TensorList indices, at::TensorList originals) {
  constexpr const char* op = "sparse_revert_";
  TORCH_CHECK(indices.size() == params.size() && originals.size() == params.size(), op,
              ": params, indices and originals must have the same length, got ", params.size(), ", ",
              indices.size(), " and ", originals.size());
  for (size_t i = 0; i < params.size(); ++i) {
    check_param(op, i, params[i]);
    check_index_tensor(op, "indices", i, indices[i], params[i]);
    const at::Tensor& o = originals[i];
    TORCH_CHECK(o.dim() == 1 && o.numel() == indices[i].numel() &&
                    o.scalar_type() == params[i].scalar_type() && o.device() == params[i].device(),
                op, ": originals[", i, "] must be a 1-D ", params[i].scalar_type(), " tensor on ",
                params[i].device(), " with one value per index (", indices[i].numel(), "), got ",
                o.scalar_type(), " of shape ", o.sizes(), " on ", o.device());
  }
}

}  // namespace peftcore
