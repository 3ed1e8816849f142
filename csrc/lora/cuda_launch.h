// What the LoRA CUDA launchers share: a dropout as the kernels see it, and the SM
// count for sizing grids. Included by .cu files only.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>

#include "common/philox.h"
#include "lora/lora_compose.h"
#include "lora/lora_kernels.cuh"

namespace peftcore {

// The kernels' view of a dropout (seed == nullptr: no mask); `seed` keeps a
// contiguous copy of the seed words alive for the launch.
struct KernelDropout {
  at::Tensor seed;
  lora_kernels::DeviceDropout device;
};

inline KernelDropout kernel_dropout(const DropoutSpec* dropout) {
  KernelDropout kd;
  if (dropout == nullptr) return kd;
  kd.seed = dropout->seed.contiguous();
  kd.device.seed = kd.seed.const_data_ptr<int64_t>();
  kd.device.threshold = dropout_threshold(dropout->p);
  return kd;
}

inline int sm_count(const at::Device& device) {
  return at::cuda::getDeviceProperties(device.index())->multiProcessorCount;
}

}  // namespace peftcore
