// Helpers for Autocast{CPU,CUDA} kernels: cast floating inputs to the autocast
// dtype the user chose, then re-dispatch below the autocast key.
#pragma once

#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <optional>

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

}  // namespace peftcore
