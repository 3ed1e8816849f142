// CUDA backend of the fused LoRA linear (see lora_compose.h for the math).
//
// Every product is a cuBLAS GEMM through ATen on the current stream; the adapter's
// output and input-gradient terms are written first and the base GEMM accumulates
// into them (beta = 1), so no N x out or N x in temporary exists without dropout.
// With dropout the keep-mask is regenerated from the seed (lora_kernels.cuh):
// forward and dA read a masked copy of x that lives only for that GEMM, and dx's
// term T A has its dropped elements zeroed in place, so nothing mask-sized is ever
// saved for backward. (Hydra still adds into existing buffers: masked_add_.)
// Two paths stay off until a GPU run times them (common/gpu_paths.h): the backward's
// dA and dB on a second stream beside the large GEMM, and the skinny products as
// tensor-core kernels with the mask applied on the fly (skinny_tc.h).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
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

#include "common/gpu_paths.h"
#include "common/philox.h"
#include "hydra/hydra_compose.h"
#include "lora/cuda_launch.h"
#include "lora/lora_compose.h"
#include "lora/lora_kernels.cuh"
#include "lora/skinny_tc.h"

namespace peftcore {
namespace {

namespace k = lora_kernels;

// Launches one of the Philox mask kernels over `like`'s elements:
// launch(T* tag, blocks, stream, device_dropout) with T the element type.
template <typename Launch>
void launch_mask_kernel(const at::Tensor& like, const DropoutSpec& dropout, const Launch& launch) {
  if (like.numel() == 0) return;
  const KernelDropout drop = kernel_dropout(&dropout);
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
  if (tc_skinny_applies(x, A.size(0))) return tc_shrink(x, A, scale, dropout);
  if (dropout == nullptr) return scaled_mm(x, A.t(), scale);
  at::Tensor xm = at::empty({x.size(0), x.size(1)}, x.options());
  masked_copy(x, *dropout, xm);
  return scaled_mm(xm, A.t(), scale);
}

void expand_add_cuda(at::Tensor& y, const at::Tensor& h, const at::Tensor& B) {
  const c10::cuda::CUDAGuard guard(y.device());
  y.addmm_(h, B.t());
}

// The backward's parts, each by the tensor-core kernels where they apply, else cuBLAS.
// T = scale * G B, [N, r].
at::Tensor scaled_t(const at::Tensor& g, const at::Tensor& B, double scale) {
  if (tc_skinny_applies(g, B.size(1))) return tc_shrink(g, B.t(), scale, nullptr);
  return scaled_mm(g, B, scale);
}

// dB = G^T hidden, [out, r].
at::Tensor grad_B_of(const at::Tensor& g, const at::Tensor& hidden) {
  if (tc_skinny_applies(g, hidden.size(1))) return tc_outer(hidden, g, nullptr, /*transposed=*/true);
  return at::mm(g.t(), hidden);
}

// dA = T^T (m∘x), [r, in]. cuBLAS with dropout reads a masked copy of x from `buffer`
// (N x in, allocated here when undefined).
at::Tensor grad_A_of(const at::Tensor& t, const at::Tensor& x, const DropoutSpec* dropout, at::Tensor& buffer) {
  if (tc_skinny_applies(x, t.size(1))) return tc_outer(t, x, dropout, /*transposed=*/false);
  if (dropout == nullptr) return at::mm(t.t(), x);
  if (!buffer.defined()) buffer = at::empty({x.size(0), x.size(1)}, x.options());
  masked_copy(x, *dropout, buffer);
  return at::mm(t.t(), buffer);
}

// grad_x += m∘(T A) when defined, else grad_x = m∘(T A); `buffer` (N x in) is reused
// when defined. The tensor-core expand writes the (masked) term in one pass; cuBLAS
// needs a second one with dropout (zeroing, or the masked add of a temporary).
void add_dx_term(const at::Tensor& t, const at::Tensor& A, const DropoutSpec* dropout, at::Tensor& grad_x,
                 at::Tensor& buffer) {
  const bool accumulate = grad_x.defined();
  const auto new_buffer = [&] { return at::empty({t.size(0), A.size(1)}, t.options()); };
  if (tc_skinny_enabled()) {
    if (!accumulate && !buffer.defined()) buffer = new_buffer();
    at::Tensor& target = accumulate ? grad_x : buffer;
    if (target.is_contiguous() && tc_skinny_applies(target, t.size(1))) {
      tc_expand(t, A, dropout, target, accumulate);
      if (!accumulate) grad_x = buffer;
      return;
    }
  }
  if (dropout == nullptr) {
    if (accumulate) {
      grad_x.addmm_(t, A);
    } else {
      grad_x = buffer.defined() ? at::mm_out(buffer, t, A) : at::mm(t, A);
    }
    return;
  }
  if (!buffer.defined()) buffer = new_buffer();
  at::mm_out(buffer, t, A);
  if (accumulate) {
    masked_add_(grad_x, buffer, *dropout);
  } else {
    zero_dropped_(buffer, *dropout);
    grad_x = buffer;
  }
}

// dB and dA (reductions over N that stream G and x once each) on a pool stream: dB
// from the start, beside T = s G B on the current stream (both read G), dA once T
// is there, while the current stream writes T A and goes on to the caller's large
// GEMM G W; grads.pending makes the current stream wait for them. The side stream's
// inputs are recorded on it and its outputs on the current stream, so the caching
// allocator hands none of their blocks out again before the stream using them is done.
LoraSkinnyGrads backward_overlapped(const at::Tensor& g, const at::Tensor& x, const at::Tensor& hidden,
                                    const at::Tensor& A, const at::Tensor& B, double scale,
                                    const DropoutSpec* dropout, at::Tensor& grad_x, bool want_A, bool want_B) {
  const c10::cuda::CUDAStream main = c10::cuda::getCurrentCUDAStream();
  const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, g.device().index());
  const auto side_waits_for_main = [&] {
    at::cuda::CUDAEvent ready;
    ready.record(main);
    ready.block(side);
  };
  LoraSkinnyGrads grads;
  side_waits_for_main();  // g, x, hidden are ready
  if (want_B) {
    const c10::cuda::CUDAStreamGuard on_side(side);
    grads.grad_B = grad_B_of(g, hidden);
  }
  const at::Tensor t = scaled_t(g, B, scale);
  if (want_A) {
    side_waits_for_main();  // t is ready
    const c10::cuda::CUDAStreamGuard on_side(side);
    at::Tensor side_buffer;  // cuBLAS dA with dropout only; freed in the side stream's order
    grads.grad_A = grad_A_of(t, x, dropout, side_buffer);
  }
  const auto record = [](const at::Tensor& used, const c10::cuda::CUDAStream& stream) {
    if (used.defined()) c10::cuda::CUDACachingAllocator::recordStream(used.storage().data_ptr(), stream);
  };
  for (const at::Tensor* input : std::initializer_list<const at::Tensor*>{&g, &x, &hidden, &t}) record(*input, side);
  record(grads.grad_A, main);
  record(grads.grad_B, main);
  auto done = std::make_shared<at::cuda::CUDAEvent>();
  done->record(side);
  grads.pending = [done, main] { done->block(main); };
  at::Tensor buffer;
  add_dx_term(t, A, dropout, grad_x, buffer);
  return grads;
}

LoraSkinnyGrads backward_cuda(const at::Tensor& g, const at::Tensor& x, const at::Tensor& hidden,
                              const at::Tensor& A, const at::Tensor& B, double scale,
                              const DropoutSpec* dropout, at::Tensor* grad_x, bool want_A,
                              bool want_B) {
  const c10::cuda::CUDAGuard guard(g.device());
  // With dropout, the cuBLAS dA needs the N x in buffer that dx's term reuses: only the
  // tensor-core dA (mask on the fly) overlaps then.
  if (grad_x != nullptr && (want_A || want_B) && side_stream_enabled() &&
      (dropout == nullptr || tc_skinny_applies(x, A.size(0)))) {
    return backward_overlapped(g, x, hidden, A, B, scale, dropout, *grad_x, want_A, want_B);
  }
  LoraSkinnyGrads grads;
  if (want_B) grads.grad_B = grad_B_of(g, hidden);
  if (!want_A && grad_x == nullptr) return grads;
  const at::Tensor t = scaled_t(g, B, scale);
  at::Tensor buffer;  // one N x in buffer: the masked x for dA, then T A for dx
  if (want_A) grads.grad_A = grad_A_of(t, x, dropout, buffer);
  if (grad_x != nullptr) add_dx_term(t, A, dropout, *grad_x, buffer);
  return grads;
}

constexpr LoraSkinnyOps kCudaOps{&shrink_cuda, &expand_add_cuda, &backward_cuda};

}  // namespace

TORCH_LIBRARY_IMPL(peftcore, CUDA, m) {
  register_lora_kernels<kCudaOps>(m);
  register_hydra_kernels<kCudaOps>(m);
}

}  // namespace peftcore
