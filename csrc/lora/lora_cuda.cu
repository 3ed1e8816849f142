// CUDA backend of the fused LoRA linear (see lora_compose.h for the math).
//
// Every product is a cuBLAS GEMM through ATen on the current stream; the adapter's
// output and input-gradient terms are written first and the base GEMM accumulates
// into them (beta = 1), so no N x out or N x in temporary exists without dropout.
// With dropout the keep-mask is regenerated from the seed (lora_kernels.cuh):
// forward and dA read a masked copy of x that lives only for that GEMM, and dx's
// term T A has its dropped elements zeroed in place, so nothing mask-sized is ever
// saved for backward. (Hydra still adds into existing buffers: masked_add_.)
// Optionally (common/side_stream.h) the backward's dA and dB run on a second stream
// beside the large GEMM.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <initializer_list>
#include <memory>
#include <type_traits>

#include "common/philox.h"
#include "common/side_stream.h"
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

KernelDropout kernel_dropout(const DropoutSpec& dropout) {
  KernelDropout kd;
  kd.seed = dropout.seed.contiguous();
  kd.device.seed = kd.seed.const_data_ptr<int64_t>();
  kd.device.threshold = dropout_threshold(dropout.p);
  return kd;
}

int sm_count(const at::Device& device) {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device.index()));
  return sms;
}

// Launches one of the Philox mask kernels over `like`'s elements:
// launch(T* tag, blocks, stream, device_dropout) with T the element type.
template <typename Launch>
void launch_mask_kernel(const at::Tensor& like, const DropoutSpec& dropout, const Launch& launch) {
  if (like.numel() == 0) return;
  const KernelDropout drop = kernel_dropout(dropout);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const unsigned blocks = k::mask_blocks(like.numel(), sm_count(like.device()));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, like.scalar_type(), "lora_mask_kernel_cuda",
                                  [&] { launch(static_cast<scalar_t*>(nullptr), blocks, stream, drop.device); });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// m∘x for a contiguous copy of x, written into `out` (same shape, contiguous).
void masked_copy(const at::Tensor& x, const DropoutSpec& dropout, at::Tensor& out) {
  const at::Tensor xc = x.contiguous();
  launch_mask_kernel(xc, dropout, [&](auto* tag, unsigned blocks, cudaStream_t stream, k::DeviceDropout d) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* src = xc.const_data_ptr<T>();
    T* dst = out.mutable_data_ptr<T>();
    if (k::pack_aligned<T>(src, dst)) {
      k::masked_copy_pack_kernel<T><<<blocks, k::kMaskThreads, 0, stream>>>(src, dst, xc.numel(), d);
    } else {
      k::masked_copy_kernel<T><<<blocks, k::kMaskThreads, 0, stream>>>(src, dst, xc.numel(), d);
    }
  });
}

// dst = m∘dst in place (dst contiguous): only the dropped elements are written.
void zero_dropped_(at::Tensor& dst, const DropoutSpec& dropout) {
  TORCH_INTERNAL_ASSERT(dst.is_contiguous(), "zero_dropped_: contiguous operand");
  launch_mask_kernel(dst, dropout, [&](auto* tag, unsigned blocks, cudaStream_t stream, k::DeviceDropout d) {
    using T = std::remove_pointer_t<decltype(tag)>;
    k::zero_dropped_kernel<T><<<blocks, k::kMaskThreads, 0, stream>>>(dst.mutable_data_ptr<T>(), dst.numel(), d);
  });
}

// dst += m∘src, dst and src contiguous [N, K].
void masked_add_(at::Tensor& dst, const at::Tensor& src, const DropoutSpec& dropout) {
  TORCH_INTERNAL_ASSERT(dst.is_contiguous() && src.is_contiguous(), "masked_add_: contiguous operands");
  launch_mask_kernel(dst, dropout, [&](auto* tag, unsigned blocks, cudaStream_t stream, k::DeviceDropout d) {
    using T = std::remove_pointer_t<decltype(tag)>;
    T* out = dst.mutable_data_ptr<T>();
    const T* add = src.const_data_ptr<T>();
    if (k::pack_aligned<T>(out, add)) {
      k::masked_add_pack_kernel<T><<<blocks, k::kMaskThreads, 0, stream>>>(out, add, dst.numel(), d);
    } else {
      k::masked_add_kernel<T><<<blocks, k::kMaskThreads, 0, stream>>>(out, add, dst.numel(), d);
    }
  });
}

// scale * (m∘x) A^T -> [N, r]; the scale is applied to the N x r result.
at::Tensor shrink_cuda(const at::Tensor& x, const at::Tensor& A, double scale, const DropoutSpec* dropout) {
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor h;
  if (dropout == nullptr) {
    h = at::mm(x, A.t());
  } else {
    at::Tensor xm = at::empty({x.size(0), x.size(1)}, x.options());
    masked_copy(x, *dropout, xm);
    h = at::mm(xm, A.t());
  }
  if (scale != 1.0) h.mul_(scale);
  return h;
}

void expand_add_cuda(at::Tensor& y, const at::Tensor& h, const at::Tensor& B) {
  const c10::cuda::CUDAGuard guard(y.device());
  y.addmm_(h, B.t());
}

// Without dropout, when dx is wanted and the side stream is switched on: dA = T^T x
// and dB = G^T hidden (reductions over N that stream x and G once each) run on a pool
// stream while the current stream writes T A and goes on to the caller's large GEMM
// G W; grads.pending makes the current stream wait for them. Outputs are allocated on
// the current stream, and every tensor the side stream touches is recorded on it, so
// the caching allocator reuses none of their blocks before the side work is done.
LoraSkinnyGrads backward_overlapped(const at::Tensor& g, const at::Tensor& x, const at::Tensor& hidden,
                                    const at::Tensor& A, const at::Tensor& B, double scale,
                                    at::Tensor& grad_x, bool want_A, bool want_B) {
  const c10::cuda::CUDAStream main = c10::cuda::getCurrentCUDAStream();
  at::Tensor t = at::mm(g, B);  // [N, r]
  if (scale != 1.0) t.mul_(scale);
  LoraSkinnyGrads grads;
  if (want_A) grads.grad_A = at::empty({A.size(0), A.size(1)}, x.options());
  if (want_B) grads.grad_B = at::empty({B.size(0), B.size(1)}, g.options());
  const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, g.device().index());
  at::cuda::CUDAEvent inputs_ready;
  inputs_ready.record(main);
  inputs_ready.block(side);
  {
    const c10::cuda::CUDAStreamGuard on_side(side);
    if (want_B) at::mm_out(grads.grad_B, g.t(), hidden);
    if (want_A) at::mm_out(grads.grad_A, t.t(), x);
  }
  for (const at::Tensor* used : std::initializer_list<const at::Tensor*>{&g, &x, &hidden, &t, &grads.grad_A,
                                                                         &grads.grad_B}) {
    if (used->defined()) c10::cuda::CUDACachingAllocator::recordStream(used->storage().data_ptr(), side);
  }
  auto done = std::make_shared<at::cuda::CUDAEvent>();
  done->record(side);
  grads.pending = [done, main] { done->block(main); };
  if (grad_x.defined()) {
    grad_x.addmm_(t, A);
  } else {
    grad_x = at::mm(t, A);
  }
  return grads;
}

LoraSkinnyGrads backward_cuda(const at::Tensor& g, const at::Tensor& x, const at::Tensor& hidden,
                              const at::Tensor& A, const at::Tensor& B, double scale,
                              const DropoutSpec* dropout, at::Tensor* grad_x, bool want_A,
                              bool want_B) {
  const c10::cuda::CUDAGuard guard(g.device());
  if (dropout == nullptr && grad_x != nullptr && (want_A || want_B) && side_stream_enabled()) {
    return backward_overlapped(g, x, hidden, A, B, scale, *grad_x, want_A, want_B);
  }
  LoraSkinnyGrads grads;
  if (want_B) grads.grad_B = at::mm(g.t(), hidden);
  if (!want_A && grad_x == nullptr) return grads;
  at::Tensor t = at::mm(g, B);  // [N, r]
  if (scale != 1.0) t.mul_(scale);
  if (dropout == nullptr) {
    if (want_A) grads.grad_A = at::mm(t.t(), x);
    if (grad_x != nullptr) {
      if (grad_x->defined()) {
        grad_x->addmm_(t, A);
      } else {
        *grad_x = at::mm(t, A);
      }
    }
    return grads;
  }
  // One N x in buffer serves the masked x for dA, then T A for dx.
  at::Tensor buffer = at::empty({x.size(0), x.size(1)}, x.options());
  if (want_A) {
    masked_copy(x, *dropout, buffer);
    grads.grad_A = at::mm(t.t(), buffer);
  }
  if (grad_x != nullptr) {
    at::mm_out(buffer, t, A);
    if (grad_x->defined()) {
      masked_add_(*grad_x, buffer, *dropout);
    } else {
      zero_dropped_(buffer, *dropout);
      *grad_x = buffer;
    }
  }
  return grads;
}

constexpr LoraSkinnyOps kCudaOps{&shrink_cuda, &expand_add_cuda, &backward_cuda};

}  // namespace

TORCH_LIBRARY_IMPL(peftcore, CUDA, m) {
  register_lora_kernels<kCudaOps>(m);
  register_hydra_kernels<kCudaOps>(m);
}

}  // namespace peftcore
