// The autocast kernels of the adapter ops: under torch.autocast every floating input
// is cast to the dtype the user chose (bfloat16 or float16), like F.linear, so that
// fp32 adapter weights meet 16-bit activations in one dtype. Integer inputs (dropout
// seeds) pass through. Backward ops need no rule: autograd calls them with tensors
// that are already cast. A family registers its forward ops with
//   TORCH_LIBRARY_IMPL(peftcore, AutocastCPU, m) { impl_autocast<kCPU, kName, Sig>(m); }
// (and the same for AutocastCUDA) in its <family>_schema.cpp.
#pragma once

#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <optional>
#include <type_traits>
#include <utility>

namespace peftcore {

inline at::Tensor autocast_cast(const at::Tensor& t, c10::DeviceType device) {
  return at::autocast::cached_cast(at::autocast::get_lower_precision_fp_from_device_type(device),
                                   t, device);
}

inline std::optional<at::Tensor> autocast_cast(const std::optional<at::Tensor>& t,
                                               c10::DeviceType device) {
  return at::autocast::cached_cast(at::autocast::get_lower_precision_fp_from_device_type(device),
                                   t, device);
}

// Excludes the autocast key of `device` for the lifetime of the guard.
struct AutocastExcludeGuard {
  explicit AutocastExcludeGuard(c10::DeviceType device)
      : guard_(at::autocast::get_autocast_dispatch_key_from_device_type(device)) {}
  c10::impl::ExcludeDispatchKeyGuard guard_;
};

template <c10::DeviceType Device, typename Arg>
decltype(auto) autocast_arg(Arg&& arg) {
  using Plain = std::decay_t<Arg>;
  if constexpr (std::is_same_v<Plain, at::Tensor> || std::is_same_v<Plain, std::optional<at::Tensor>>) {
    return autocast_cast(arg, Device);
  } else {
    return std::forward<Arg>(arg);
  }
}

// The autocast kernel of the op `Name` ("peftcore::op") with signature Ret(Args...):
// cast, then re-dispatch below the autocast key.
template <c10::DeviceType Device, const char* Name, typename Sig>
struct Autocast;

template <c10::DeviceType Device, const char* Name, typename Ret, typename... Args>
struct Autocast<Device, Name, Ret(Args...)> {
  static Ret call(Args... args) {
    AutocastExcludeGuard no_autocast(Device);
    static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow(Name, "").template typed<Ret(Args...)>();
    return op.call(autocast_arg<Device>(args)...);
  }
};

inline constexpr c10::DeviceType kCPU = c10::DeviceType::CPU;
inline constexpr c10::DeviceType kCUDA = c10::DeviceType::CUDA;

template <c10::DeviceType Device, const char* Name, typename Sig>
void impl_autocast(torch::Library& m) {
  m.impl(Name, &Autocast<Device, Name, Sig>::call);
}

}  // namespace peftcore
