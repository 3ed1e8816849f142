#include "sparse/sparse_checks.h"

#include <c10/util/Exception.h>

namespace peftcore {
namespace {

void check_param(const char* op, const at::Tensor& param) {
  TORCH_CHECK(param.defined() && at::isFloatingType(param.scalar_type()), op,
              ": param must be a floating tensor, got ",
              param.defined() ? toString(param.scalar_type()) : "undefined");
  TORCH_CHECK(param.is_contiguous(), op, ": param with shape ", param.sizes(), " must be contiguous");
}

void check_index_tensor(const char* op, const char* name, const at::Tensor& idx,
                        const at::Tensor& param) {
  TORCH_CHECK(idx.scalar_type() == at::kLong && idx.dim() == 1, op, ": ", name,
              " must be a 1-D int64 tensor, got ", idx.scalar_type(), " of shape ", idx.sizes());
  TORCH_CHECK(idx.device() == param.device(), op, ": ", name, " is on ", idx.device(),
              " but param is on ", param.device());
}

}  // namespace

void check_sparse_compose(const at::Tensor& param, at::TensorList indices, at::TensorList values,
                          const std::vector<double>& weights) {
  constexpr const char* op = "sparse_compose_";
  check_param(op, param);
  TORCH_CHECK(indices.size() == values.size() && indices.size() == weights.size(), op,
              ": indices, values and weights must have one entry per delta, got ", indices.size(),
              ", ", values.size(), " and ", weights.size());
  for (size_t i = 0; i < indices.size(); ++i) {
    check_index_tensor(op, "indices[i]", indices[i], param);
    TORCH_CHECK(values[i].dim() == 1 && values[i].numel() == indices[i].numel(), op, ": values[", i,
                "] must be 1-D with one value per index (", indices[i].numel(), "), got shape ",
                values[i].sizes());
    TORCH_CHECK(at::isFloatingType(values[i].scalar_type()) && values[i].device() == param.device(),
                op, ": values[", i, "] must be a floating tensor on ", param.device(), ", got ",
                values[i].scalar_type(), " on ", values[i].device());
  }
}

void check_sparse_revert(const at::Tensor& param, const at::Tensor& indices,
                         const at::Tensor& originals) {
  constexpr const char* op = "sparse_revert_";
  check_param(op, param);
  check_index_tensor(op, "indices", indices, param);
  TORCH_CHECK(originals.dim() == 1 && originals.numel() == indices.numel() &&
                  originals.scalar_type() == param.scalar_type() &&
                  originals.device() == param.device(),
              op, ": originals must be a 1-D ", param.scalar_type(), " tensor on ", param.device(),
              " with one value per index (", indices.numel(), "), got ", originals.scalar_type(),
              " of shape ", originals.sizes(), " on ", originals.device());
}

}  // namespace peftcore
