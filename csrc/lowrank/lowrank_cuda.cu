// CUDA backend of the low-rank engine (lowrank.h).
//
// Every product is a cuBLAS GEMM through ATen on the current stream; the callers
// write the adapter's output and input-gradient terms first and let the base GEMM
// accumulate into them (beta = 1), so no N x out or N x in temporary exists without
// dropout. With dropout the keep-mask is regenerated from the seed
// (lowrank_kernels.cuh): shrink and dA read a masked copy of x that lives only for
// that GEMM, and dx's term T A has its dropped elements zeroed in place (or, when
// added into an existing gradient, added through the mask), so nothing mask-sized
// is ever saved for backward.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <type_traits>

#include "common/philox.h"
#include "lowrank/lowrank.h"
#include "lowrank/lowrank_kernels.cuh"

namespace peftcore {
namespace {

namespace k = lowrank_kernels;

// The kernels' view of a dropout; `seed` keeps a contiguous copy of the seed words
// alive for the launch.
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
  return at::cuda::getDeviceProperties(device.index())->multiProcessorCount;
}


// Launches one of the Philox mask kernels over `like`'s elements:
// launch(T* tag, blocks, stream, device_dropout) with T the element type.
template <typename Launch>
void launch_mask_kernel(const at::Tensor& like, const DropoutSpec& dropout, const Launch& launch) {
  if (like.numel() == 0) return;
  const KernelDropout drop = kernel_dropout(dropout);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const unsigned blocks = k::mask_blocks(like.numel(), sm_count(like.device()));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, like.scalar_type(), "lowrank_mask_kernel_cuda",
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

// scale * a b in one cuBLAS call (the scale as its alpha, rounded once), not a GEMM
// and a scaling kernel: one launch less per call, which counts where the host bounds
// the step (small N). beta = 0, so the uninitialised output is never read.
at::Tensor scaled_mm(const at::Tensor& a, const at::Tensor& b, double scale) {
  if (scale == 1.0) return at::mm(a, b);
  at::Tensor out = at::empty({a.size(0), b.size(1)}, a.options());
  return at::addmm_out(out, out, a, b, /*beta=*/0, /*alpha=*/scale);
}

// scale * (m∘x) A^T -> [N, r].
at::Tensor shrink_cuda(const at::Tensor& x, const at::Tensor& A, double scale, const DropoutSpec* dropout) {
  const c10::cuda::CUDAGuard guard(x.device());
  if (dropout == nullptr) return scaled_mm(x, A.t(), scale);
  at::Tensor xm = at::empty({x.size(0), x.size(1)}, x.options());
  masked_copy(x, *dropout, xm);
  return scaled_mm(xm, A.t(), scale);
}

void expand_add_cuda(at::Tensor& y, const at::Tensor& h, const at::Tensor& B) {
  const c10::cuda::CUDAGuard guard(y.device());
  y.addmm_(h, B.t());
}

// dA = T^T (m∘x), [r, in]. With dropout it reads a masked copy of x from `buffer`
// (N x in, allocated here when undefined).
at::Tensor grad_A_of(const at::Tensor& t, const at::Tensor& x, const DropoutSpec* dropout, at::Tensor& buffer) {
  if (dropout == nullptr) return at::mm(t.t(), x);
  if (!buffer.defined()) buffer = at::empty({x.size(0), x.size(1)}, x.options());
  masked_copy(x, *dropout, buffer);
  return at::mm(t.t(), buffer);
}

// grad_x += m∘(T A) when defined, else grad_x = m∘(T A); `buffer` (N x in) is reused
// when defined. With dropout a second pass applies the mask (zeroing, or the masked
// add of a temporary).
void add_dx_term(const at::Tensor& t, const at::Tensor& A, const DropoutSpec* dropout, at::Tensor& grad_x,
                 at::Tensor& buffer) {
  const bool accumulate = grad_x.defined();
  if (dropout == nullptr) {
    if (accumulate) {
      grad_x.addmm_(t, A);
    } else {
      grad_x = buffer.defined() ? at::mm_out(buffer, t, A) : at::mm(t, A);
    }
    return;
  }
  if (!buffer.defined()) buffer = at::empty({t.size(0), A.size(1)}, t.options());
  at::mm_out(buffer, t, A);
  if (accumulate) {
    masked_add_(grad_x, buffer, *dropout);
  } else {
    zero_dropped_(buffer, *dropout);
    grad_x = buffer;
  }
}

LowRankGrads backward_cuda(const at::Tensor& g, const at::Tensor& x, const at::Tensor& hidden,
                           const at::Tensor& A, const at::Tensor& B, double scale,
                           const DropoutSpec* dropout, at::Tensor* grad_x, bool want_A,
                           bool want_B) {
  const c10::cuda::CUDAGuard guard(g.device());
  LowRankGrads grads;
  if (want_B) grads.grad_B = at::mm(g.t(), hidden);  // [out, r]
  if (!want_A && grad_x == nullptr) return grads;
  const at::Tensor t = scaled_mm(g, B, scale);  // T = scale * G B, [N, r]
  at::Tensor buffer;  // one N x in buffer: the masked x for dA, then T A for dx
  if (want_A) grads.grad_A = grad_A_of(t, x, dropout, buffer);
  if (grad_x != nullptr) add_dx_term(t, A, dropout, *grad_x, buffer);
  return grads;
}

}  // namespace

extern const LowRankOps kLowRankCuda{&shrink_cuda, &expand_add_cuda, &backward_cuda};

}  // namespace peftcore
