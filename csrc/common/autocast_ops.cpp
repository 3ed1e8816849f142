// Autocast for the adapter ops: under torch.autocast every floating input is cast
// to the dtype the user chose (bfloat16 or float16), like F.linear, so that fp32
// adapter weights meet 16-bit activations in one dtype. Integer inputs (dropout
// seeds) pass through. Backward ops need no rule: autograd calls them with tensors
// that are already cast.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "common/autocast.h"

namespace peftcore {
namespace {

template <c10::DeviceType Device, typename T>
decltype(auto) cast_arg(T&& arg) {
  using Plain = std::decay_t<T>;
  if constexpr (std::is_same_v<Plain, at::Tensor> || std::is_same_v<Plain, std::optional<at::Tensor>>) {
    return autocast_cast(arg, Device);
  } else {
    return std::forward<T>(arg);
  }
}

// The autocast kernel of the op `Name` with signature Ret(Args...): cast, then
// re-dispatch below the autocast key.
template <c10::DeviceType Device, const char* Name, typename Sig>
struct Autocast;

template <c10::DeviceType Device, const char* Name, typename Ret, typename... Args>
struct Autocast<Device, Name, Ret(Args...)> {
  static Ret call(Args... args) {
    AutocastExcludeGuard no_autocast(Device);
    static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow(Name, "").template typed<Ret(Args...)>();
    return op.call(cast_arg<Device>(args)...);
  }
};

using Opt = const std::optional<at::Tensor>&;
using T = const at::Tensor&;

constexpr char kLora[] = "peftcore::lora_linear";
using LoraSig = std::tuple<at::Tensor, at::Tensor>(T, T, Opt, T, T, double, double, Opt);
constexpr char kHydra[] = "peftcore::hydra_linear";
using HydraSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(T, T, Opt, Opt, Opt, Opt, Opt, double,
                                                                          double, double, Opt);
constexpr char kBat[] = "peftcore::bone_bat_linear";
using BatSig = at::Tensor(T, T, Opt, T);
constexpr char kBone[] = "peftcore::bone_linear";
using BoneSig = std::tuple<at::Tensor, at::Tensor>(T, T, Opt, T, int64_t);

template <c10::DeviceType Device, typename Library>
void register_autocast(Library& m) {
  m.impl("lora_linear", &Autocast<Device, kLora, LoraSig>::call);
  m.impl("hydra_linear", &Autocast<Device, kHydra, HydraSig>::call);
  m.impl("bone_bat_linear", &Autocast<Device, kBat, BatSig>::call);
  m.impl("bone_linear", &Autocast<Device, kBone, BoneSig>::call);
}

}  // namespace

TORCH_LIBRARY_IMPL(peftcore, AutocastCPU, m) { register_autocast<c10::DeviceType::CPU>(m); }
TORCH_LIBRARY_IMPL(peftcore, AutocastCUDA, m) { register_autocast<c10::DeviceType::CUDA>(m); }

}  // namespace peftcore
