// CUDA backend of the fused LoRA linear: the skinny primitives of lora_compose.h
// as hand-written kernels (lora_kernels.cuh) on the current stream; the large
// GEMMs stay with cuBLAS through ATen in lora_compose.cpp.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/philox.h"
#include "hydra/hydra_compose.h"
#include "lora/lora_compose.h"
#include "lora/lora_kernels.cuh"

namespace peftcore {
namespace {

namespace k = lora_kernels;

// The kernels' view of a dropout; `seed` keeps a contiguous copy of the seed alive.
struct KernelDropout {
  at::Tensor seed;
  k::DeviceDropout device;
};

KernelDropout kernel_dropout(const DropoutSpec* dropout) {
  KernelDropout kd;
  if (dropout != nullptr) {
    kd.seed = dropout->seed.contiguous();
    kd.device.seed = kd.seed.data_ptr<int64_t>();
    kd.device.threshold = dropout_threshold(dropout->p);
  }
  return kd;
}

at::Tensor shrink_cuda(const at::Tensor& x, const at::Tensor& A, double scale,
                       const DropoutSpec* dropout) {
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), ac = A.contiguous();
  const int64_t n = xc.size(0), kdim = xc.size(1), rank = ac.size(0);
  at::Tensor out = at::empty({n, rank}, x.options());
  if (out.numel() == 0) return out;
  const KernelDropout drop = kernel_dropout(dropout);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lora_shrink_cuda", [&] {
    k::launch_shrink<scalar_t>(xc.data_ptr<scalar_t>(), ac.data_ptr<scalar_t>(),
                               out.data_ptr<scalar_t>(), n, kdim, rank, scale, drop.device, stream);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// y += m∘(h bt^T), with bt [C, r].
void expand_add_masked_cuda(at::Tensor& y, const at::Tensor& h, const at::Tensor& Bt,
                            const DropoutSpec* dropout) {
  TORCH_INTERNAL_ASSERT(y.is_contiguous(), "expand_add_cuda: y must be contiguous");
  const c10::cuda::CUDAGuard guard(y.device());
  if (y.numel() == 0) return;
  const at::Tensor hc = h.contiguous(), bc = Bt.contiguous();
  const KernelDropout drop = kernel_dropout(dropout);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "lora_expand_add_cuda", [&] {
    k::launch_expand_add<scalar_t>(y.data_ptr<scalar_t>(), hc.data_ptr<scalar_t>(),
                                   bc.data_ptr<scalar_t>(), y.size(0), y.size(1), hc.size(1),
                                   drop.device, stream);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

int current_sm_count(const at::Device& device) {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device.index()));
  return sms;
}

at::Tensor reduce_cuda(const at::Tensor& L, const at::Tensor& R, const DropoutSpec* dropout) {
  const c10::cuda::CUDAGuard guard(L.device());
  const at::Tensor lc = L.contiguous(), rc = R.contiguous();
  const int64_t n = lc.size(0), rank = lc.size(1), cols = rc.size(1);
  at::Tensor out = at::empty({rank, cols}, L.options());
  if (out.numel() == 0) return out;
  const KernelDropout drop = kernel_dropout(dropout);
  const int64_t splits = k::reduce_splits(n, cols, rank, current_sm_count(L.device()));
  const auto acc_type = L.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor workspace = at::empty({splits, rank, cols}, L.options().dtype(acc_type));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, L.scalar_type(), "lora_reduce_cuda", [&] {
    using acc_t = typename k::Acc<scalar_t>::type;
    k::launch_reduce<scalar_t>(lc.data_ptr<scalar_t>(), rc.data_ptr<scalar_t>(),
                               workspace.data_ptr<acc_t>(), out.data_ptr<scalar_t>(), n, cols,
                               rank, splits, drop.device, stream);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

void expand_add_cuda(at::Tensor& y, const at::Tensor& h, const at::Tensor& B) {
  expand_add_masked_cuda(y, h, B, nullptr);
}

// Sequential kernels for now: T, dB, dA and dx each make their own pass.
LoraSkinnyGrads backward_cuda(const at::Tensor& g, const at::Tensor& x, const at::Tensor& hidden,
                              const at::Tensor& A, const at::Tensor& B, double scale,
                              const DropoutSpec* dropout, at::Tensor* grad_x, bool want_A,
                              bool want_B) {
  LoraSkinnyGrads grads;
  if (want_B) grads.grad_B = reduce_cuda(hidden, g, nullptr).t().contiguous();
  if (!want_A && grad_x == nullptr) return grads;
  const at::Tensor t = shrink_cuda(g, B.t(), scale, nullptr);
  if (want_A) grads.grad_A = reduce_cuda(t, x, dropout);
  if (grad_x != nullptr) expand_add_masked_cuda(*grad_x, t, A.t(), dropout);
  return grads;
}

constexpr LoraSkinnyOps kCudaOps{&shrink_cuda, &expand_add_cuda, &backward_cuda};

}  // namespace

TORCH_LIBRARY_IMPL(peftcore, CUDA, m) {
  register_lora_kernels<kCudaOps>(m);
  register_hydra_kernels<kCudaOps>(m);
}

}  // namespace peftcore
