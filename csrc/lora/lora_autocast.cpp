// Autocast for lora_linear: floating inputs are cast to the dtype the user
// chose in torch.autocast (bfloat16 or float16), like F.linear. The backward op
// needs no rule: autograd calls it with tensors that are already cast.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "common/autocast.h"

namespace peftcore {
namespace {

using LoraLinearFn = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&,
    const at::Tensor&, double, double, const std::optional<at::Tensor>&);

template <c10::DeviceType Device>
std::tuple<at::Tensor, at::Tensor> lora_linear_autocast(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& lora_A, const at::Tensor& lora_B, double scaling, double dropout_p,
    const std::optional<at::Tensor>& dropout_seed) {
  AutocastExcludeGuard no_autocast(Device);
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("peftcore::lora_linear", "")
                             .typed<LoraLinearFn>();
  return op.call(autocast_cast(x, Device), autocast_cast(weight, Device),
                 autocast_cast(bias, Device), autocast_cast(lora_A, Device),
                 autocast_cast(lora_B, Device), scaling, dropout_p, dropout_seed);
}

}  // namespace

TORCH_LIBRARY_IMPL(peftcore, AutocastCPU, m) {
  m.impl("lora_linear", &lora_linear_autocast<c10::DeviceType::CPU>);
}
TORCH_LIBRARY_IMPL(peftcore, AutocastCUDA, m) {
  m.impl("lora_linear", &lora_linear_autocast<c10::DeviceType::CUDA>);
}

}  // namespace peftcore
