// The adapters' skinny products on the CPU, single-threaded (callers split rows
// across threads): a tall operand streams once against a narrow one of rank r.
//   outer_acc_: acc [r, cols] += left^T right   (dA += T^T x, dB^T += hidden^T G)
//   skinny_nt_: out [rows, r] = scale * a bt    (hidden = x A^T, T = G B)
// float32 operands whose rows are contiguous go to hand-written AVX-512 kernels
// where the CPU has AVX-512F: the tall operand is read in its own row order with no
// packing, the accumulators stay in registers. MKL runs these shapes well below its
// large-GEMM rate (it packs the tall operand for a result of only r columns).
// Everything else falls back to MKL through ATen.
#pragma once

#include <ATen/core/Tensor.h>

namespace peftcore {

// acc [rank, cols] += left^T right, left [rows, rank], right [rows, cols].
void outer_acc_(at::Tensor& acc, const at::Tensor& left, const at::Tensor& right);

// out [rows, rank] = scale * a bt, a [rows, k], bt [k, rank]; out contiguous.
void skinny_nt_(at::Tensor& out, const at::Tensor& a, const at::Tensor& bt, double scale);

// skinny_nt_ with the rows split across threads (MKL's own threading on the fallback).
void parallel_skinny_nt_(at::Tensor& out, const at::Tensor& a, const at::Tensor& bt, double scale);

// Whether outer_acc_(acc, a, b) and skinny_nt_(out, a, b) take the AVX-512 kernels
// for these operands (float32 CPU tensors with contiguous rows, and
// avx512_kernels_enabled(): common/cpu_features.h).
bool skinny_simd_applies(const at::Tensor& a, const at::Tensor& b);

}  // namespace peftcore
