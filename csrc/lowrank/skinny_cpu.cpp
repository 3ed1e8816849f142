#include "lowrank/skinny_cpu.h"

#include "common/cpu_features.h"
#include "common/parallel.h"
#include <ATen/ops/mm.h>
#include <ATen/record_function.h>
#include <c10/util/Exception.h>

#include <algorithm>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define PEFTCORE_SKINNY_AVX512 1
#endif

namespace peftcore {
namespace {

#ifdef PEFTCORE_SKINNY_AVX512
#define AVX512_FN __attribute__((target("avx512f")))

// Rows per pass over the columns (see outer_acc_avx512).
constexpr int64_t kRows = 32;

// K rank rows x J column vectors summed in registers over `rows` (<= kRows) rows of
// left and right, then added to acc: the running sum in acc gets one term per pass,
// not one per row (float32 error then grows with rows / kRows, not rows).
// `last` masks the J-th vector's columns (a tail).
template <int K, int J>
AVX512_FN void outer_tile(const float* left, int64_t ldl, const float* right, int64_t ldr, int64_t rows,
                          float* acc, int64_t lda, __mmask16 last) {
  __m512 c[K][J];
#pragma GCC unroll 16
  for (int k = 0; k < K; ++k) {
#pragma GCC unroll 8
    for (int j = 0; j < J; ++j) c[k][j] = _mm512_setzero_ps();
  }
  for (int64_t i = 0; i < rows; ++i) {
    const float* r = right + i * ldr;
    const float* l = left + i * ldl;
    __m512 v[J];
#pragma GCC unroll 8
    for (int j = 0; j < J; ++j) {
      v[j] = _mm512_maskz_loadu_ps(j == J - 1 ? last : 0xFFFF, r + 16 * j);
      // The same columns of the next pass's rows (prefetches never fault past the end).
      _mm_prefetch(reinterpret_cast<const char*>(r + kRows * ldr + 16 * j), _MM_HINT_T1);
    }
#pragma GCC unroll 16
    for (int k = 0; k < K; ++k) {
      const __m512 b = _mm512_set1_ps(l[k]);
#pragma GCC unroll 8
      for (int j = 0; j < J; ++j) c[k][j] = _mm512_fmadd_ps(b, v[j], c[k][j]);
    }
  }
#pragma GCC unroll 16
  for (int k = 0; k < K; ++k) {
#pragma GCC unroll 8
    for (int j = 0; j < J; ++j) {
      float* dst = acc + k * lda + 16 * j;
      const __mmask16 m = j == J - 1 ? last : 0xFFFF;
      _mm512_mask_storeu_ps(dst, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, dst), c[k][j]));
    }
  }
}

// K rank rows of acc over every column: J vectors at a time, then one (masked) at a time.
template <int K, int J>
AVX512_FN void outer_rank_chunk(const float* left, int64_t ldl, const float* right, int64_t ldr, int64_t rows,
                                int64_t cols, float* acc, int64_t lda) {
  int64_t c0 = 0;
  for (; c0 + 16 * J <= cols; c0 += 16 * J) outer_tile<K, J>(left, ldl, right + c0, ldr, rows, acc + c0, lda, 0xFFFF);
  for (; c0 < cols; c0 += 16) {
    const int64_t n = std::min<int64_t>(16, cols - c0);
    const auto mask = static_cast<__mmask16>(n == 16 ? 0xFFFF : (1u << n) - 1);
    outer_tile<K, 1>(left, ldl, right + c0, ldr, rows, acc + c0, lda, mask);
  }
}

// Rows go 32 at a time so that only 32 row streams of `right` are open at once
// (the hardware prefetchers follow a limited number); the rank goes in chunks of
// 16/8/4/2/1 with J vectors per chunk so that 8-16 independent FMA chains hide latency.
AVX512_FN void outer_acc_avx512(const float* left, int64_t ldl, const float* right, int64_t ldr, int64_t rows,
                                int64_t rank, int64_t cols, float* acc, int64_t lda) {
  for (int64_t i0 = 0; i0 < rows; i0 += kRows) {
    const int64_t m = std::min(kRows, rows - i0);
    const float* l = left + i0 * ldl;
    const float* r = right + i0 * ldr;
    for (int64_t k0 = 0; k0 < rank;) {
      const int64_t left_ranks = rank - k0;
      float* a = acc + k0 * lda;
      if (left_ranks >= 16) {
        outer_rank_chunk<16, 1>(l + k0, ldl, r, ldr, m, cols, a, lda);
        k0 += 16;
      } else if (left_ranks >= 8) {
        outer_rank_chunk<8, 2>(l + k0, ldl, r, ldr, m, cols, a, lda);
        k0 += 8;
      } else if (left_ranks >= 4) {
        outer_rank_chunk<4, 4>(l + k0, ldl, r, ldr, m, cols, a, lda);
        k0 += 4;
      } else if (left_ranks >= 2) {
        outer_rank_chunk<2, 8>(l + k0, ldl, r, ldr, m, cols, a, lda);
        k0 += 2;
      } else {
        outer_rank_chunk<1, 8>(l + k0, ldl, r, ldr, m, cols, a, lda);
        k0 += 1;
      }
    }
  }
}

// Inner-dimension steps summed in registers before they join the running sum (as
// outer_tile's passes: float32 error grows with k / kChunk, not k).
constexpr int64_t kChunk = 64;

// V vectors of the rank per row for RG rows at a time: out rows = a rows . bt, with
// bt's row j (the rank) loaded once per RG broadcasts of a[i][j]. At most 8 rows:
// rows 4 KiB apart (1024 float32 columns) share L1 sets, and 16 of them thrashed it.
template <int V, int RG>
AVX512_FN void nt_rows(const float* a, int64_t lda, const float* bt, int64_t ldb, int64_t k, float* out,
                       int64_t ldo, float scale, __mmask16 last) {
  __m512 c[RG][V], part[RG][V];
#pragma GCC unroll 8
  for (int q = 0; q < RG; ++q) {
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) c[q][v] = _mm512_setzero_ps();
  }
  for (int64_t j0 = 0; j0 < k; j0 += kChunk) {
#pragma GCC unroll 8
    for (int q = 0; q < RG; ++q) {
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) part[q][v] = _mm512_setzero_ps();
    }
    const int64_t j1 = std::min(k, j0 + kChunk);
    for (int64_t j = j0; j < j1; ++j) {
      __m512 b[V];
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) b[v] = _mm512_maskz_loadu_ps(v == V - 1 ? last : 0xFFFF, bt + j * ldb + 16 * v);
#pragma GCC unroll 8
      for (int q = 0; q < RG; ++q) {
        const __m512 x = _mm512_set1_ps(a[q * lda + j]);
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v) part[q][v] = _mm512_fmadd_ps(x, b[v], part[q][v]);
      }
    }
#pragma GCC unroll 8
    for (int q = 0; q < RG; ++q) {
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) c[q][v] = _mm512_add_ps(c[q][v], part[q][v]);
    }
  }
  const __m512 s = _mm512_set1_ps(scale);
#pragma GCC unroll 8
  for (int q = 0; q < RG; ++q) {
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v)
      _mm512_mask_storeu_ps(out + q * ldo + 16 * v, v == V - 1 ? last : 0xFFFF, _mm512_mul_ps(s, c[q][v]));
  }
}

template <int V, int RG>
AVX512_FN void nt_lanes(const float* a, int64_t lda, const float* bt, int64_t ldb, int64_t rows, int64_t k,
                        float* out, int64_t ldo, float scale, __mmask16 last) {
  int64_t i = 0;
  for (; i + RG <= rows; i += RG) nt_rows<V, RG>(a + i * lda, lda, bt, ldb, k, out + i * ldo, ldo, scale, last);
  for (; i < rows; ++i) nt_rows<V, 1>(a + i * lda, lda, bt, ldb, k, out + i * ldo, ldo, scale, last);
}

// The rank goes in chunks of up to 64 lanes; rows per step such that the running
// and chunk sums of all rows fit the 32 vector registers with 8+ FMA chains.
AVX512_FN void skinny_nt_avx512(const float* a, int64_t lda, const float* bt, int64_t ldb, int64_t rows, int64_t k,
                                int64_t rank, float* out, int64_t ldo, float scale) {
  for (int64_t r0 = 0; r0 < rank; r0 += 64) {
    const int64_t lanes = std::min<int64_t>(64, rank - r0);
    const int64_t tail = lanes % 16;
    const auto last = static_cast<__mmask16>(tail == 0 ? 0xFFFF : (1u << tail) - 1);
    const float* b = bt + r0;
    float* o = out + r0;
    switch ((lanes + 15) / 16) {
      case 1: nt_lanes<1, 8>(a, lda, b, ldb, rows, k, o, ldo, scale, last); break;
      case 2: nt_lanes<2, 4>(a, lda, b, ldb, rows, k, o, ldo, scale, last); break;
      case 3: nt_lanes<3, 4>(a, lda, b, ldb, rows, k, o, ldo, scale, last); break;
      default: nt_lanes<4, 2>(a, lda, b, ldb, rows, k, o, ldo, scale, last); break;
    }
  }
}

#endif

// The destination a contiguous float32 tensor next to operands that qualify.
bool simd_fits(const at::Tensor& dst, const at::Tensor& a, const at::Tensor& b) {
  return dst.scalar_type() == at::kFloat && dst.is_contiguous() && skinny_simd_applies(a, b);
}

}  // namespace

bool skinny_simd_applies(const at::Tensor& a, const at::Tensor& b) {
  return avx512_kernels_enabled() && a.is_cpu() && b.is_cpu() && a.scalar_type() == at::kFloat &&
         b.scalar_type() == at::kFloat && a.dim() == 2 && b.dim() == 2 && a.stride(1) == 1 && b.stride(1) == 1;
}

void outer_acc_(at::Tensor& acc, const at::Tensor& left, const at::Tensor& right) {
  RECORD_FUNCTION("peftcore::cpu_outer_acc", std::vector<c10::IValue>());
  TORCH_INTERNAL_ASSERT(left.dim() == 2 && right.dim() == 2 && acc.dim() == 2 && left.size(0) == right.size(0) &&
                        acc.size(0) == left.size(1) && acc.size(1) == right.size(1));
#ifdef PEFTCORE_SKINNY_AVX512
  if (simd_fits(acc, left, right)) {
    outer_acc_avx512(left.const_data_ptr<float>(), left.stride(0), right.const_data_ptr<float>(), right.stride(0),
                     left.size(0), left.size(1), right.size(1), acc.mutable_data_ptr<float>(), acc.stride(0));
    return;
  }
#endif
  acc.addmm_(left.t(), right);
}


void skinny_nt_(at::Tensor& out, const at::Tensor& a, const at::Tensor& bt, double scale) {
  RECORD_FUNCTION("peftcore::cpu_skinny_nt", std::vector<c10::IValue>());
  TORCH_INTERNAL_ASSERT(a.dim() == 2 && bt.dim() == 2 && out.dim() == 2 && a.size(1) == bt.size(0) &&
                        out.size(0) == a.size(0) && out.size(1) == bt.size(1));
#ifdef PEFTCORE_SKINNY_AVX512
  if (simd_fits(out, a, bt)) {
    skinny_nt_avx512(a.const_data_ptr<float>(), a.stride(0), bt.const_data_ptr<float>(), bt.stride(0), a.size(0),
                     a.size(1), bt.size(1), out.mutable_data_ptr<float>(), out.stride(0), static_cast<float>(scale));
    return;
  }
#endif
  at::mm_out(out, a, bt);
  if (scale != 1.0) out.mul_(scale);
}

void parallel_skinny_nt_(at::Tensor& out, const at::Tensor& a, const at::Tensor& bt, double scale) {
  if (!simd_fits(out, a, bt)) {
    skinny_nt_(out, a, bt, scale);
    return;
  }
  parallel_for_below_autograd(0, a.size(0), 64, [&](int64_t r0, int64_t r1) {
    at::Tensor o = out.narrow(0, r0, r1 - r0);
    skinny_nt_(o, a.narrow(0, r0, r1 - r0), bt, scale);
  });
}

}  // namespace peftcore
