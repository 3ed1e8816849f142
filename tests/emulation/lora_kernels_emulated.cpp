// The LoRA CUDA kernels run on the host through cuda_host_emulation.h: the
// tensor-core skinny kernels (csrc/lora/skinny_tc_kernels.cuh) with the launcher's
// geometry (skinny_tc_plan.h) against a float64 evaluation of the same formula with
// the same dropout mask (common/philox.h), and the dropout kernels of
// lora_kernels.cuh (packed and element-by-element) bit for bit. Built and run by tests/test_lora_kernels_emulated.py, with
// AddressSanitizer: an out-of-bounds read or write aborts the run.
// Prints one line per case ("ok ..." or "FAIL ..."); exit status 1 on any failure.
#include "cuda_host_emulation.h"
// clang-format off
#include "lora/skinny_tc_plan.h"
// clang-format on

#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <string>

namespace {

using namespace peftcore;
namespace k = peftcore::skinny_tc;

template <typename T>
T to16(float f);
template <>
__nv_bfloat16 to16(float f) {
  return __float2bfloat16(f);
}
template <>
__half to16(float f) {
  return __float2half(f);
}

template <typename T>
const char* name_of() {
  return std::is_same_v<T, __half> ? "fp16" : "bf16";
}

template <typename T>
double eps_of() {
  return std::is_same_v<T, __half> ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8);
}

// rows x cols of 16-bit values, row stride ld, in 16-byte aligned storage.
template <typename T>
struct Mat {
  int64_t rows, cols, ld;
  std::vector<uint4> storage;

  Mat(int64_t r, int64_t c, int64_t l, std::mt19937& gen) : rows(r), cols(c), ld(l) {
    storage.resize((r * l * sizeof(T) + sizeof(uint4) - 1) / sizeof(uint4) + 1);
    std::normal_distribution<float> normal;
    for (int64_t i = 0; i < r * l; ++i) data()[i] = to16<T>(normal(gen));
  }
  T* data() { return reinterpret_cast<T*>(storage.data()); }
  const T* data() const { return reinterpret_cast<const T*>(storage.data()); }
  double at(int64_t i, int64_t j) const { return emu_to_float(data()[i * ld + j]); }
};

struct Mask {
  int64_t seed[2] = {0x5eed1234, -77};
  double p;
  DropoutMask host;
  lora_kernels::DeviceDropout device;

  explicit Mask(double p_) : p(p_) {
    host.key = static_cast<uint64_t>(seed[0]);
    host.stream = static_cast<uint64_t>(seed[1]);
    host.threshold = dropout_threshold(p);
    if (p > 0) {
      device.seed = seed;
      device.threshold = host.threshold;
    }
  }
  double keep(int64_t flat) const { return p == 0 || host.keep(static_cast<uint64_t>(flat)) ? 1.0 : 0.0; }
};

int failures = 0;

// |got - want| <= 4 eps |want| + 1e-5 * (sum of |terms|): far below what a wrong row,
// column, split or mask bit moves.
void compare(const std::string& what, const std::vector<double>& got, const std::vector<double>& want,
             const std::vector<double>& magnitude, double eps) {
  double worst = 0;
  int64_t bad = -1;
  for (size_t i = 0; i < want.size(); ++i) {
    const double err = std::fabs(got[i] - want[i]);
    const double tol = 4 * eps * std::fabs(want[i]) + 1e-5 * magnitude[i] + 1e-30;
    if (!(err <= tol) && (bad < 0 || err / tol > worst)) {
      worst = err / tol;
      bad = static_cast<int64_t>(i);
    }
  }
  if (bad >= 0) {
    ++failures;
    std::printf("FAIL %s: element %lld got %.6g want %.6g (%.1fx tolerance)\n", what.c_str(),
                static_cast<long long>(bad), got[bad], want[bad], worst);
  } else {
    std::printf("ok %s\n", what.c_str());
  }
}

// Sums the float32 partials with sum_partials_kernel into rows x cols of T.
template <typename T>
std::vector<double> sum_partials(const std::vector<float>& partial, int64_t splits, int64_t split_stride,
                                 int64_t ld, int64_t rows, int64_t cols, float scale, bool transposed, int sms) {
  std::vector<T> out(rows * cols);
  const int64_t rs = transposed ? 1 : cols, cs = transposed ? rows : 1;
  emu::launch(dim3(k::sum_blocks(rows * cols, sms)), dim3(256), [&] {
    k::sum_partials_kernel<T>(partial.data(), splits, split_stride, ld, rows, cols, scale, out.data(), rs, cs);
  });
  std::vector<double> got(rows * cols);
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) got[i * cols + j] = emu_to_float(out[i * rs + j * cs]);
  }
  return got;
}

// out [rows, rank] = scale (m∘x) w^T
template <typename T>
void shrink_case(int64_t rows, int64_t cols, int64_t ld_extra, int rank, double p, int sms) {
  std::mt19937 gen(rows * 131 + cols * 7 + rank);
  const Mat<T> x(rows, cols, cols + ld_extra, gen), w(rank, cols, cols, gen);
  const Mask mask(p);
  const float scale = 0.75f;
  const k::ShrinkPlan plan = k::shrink_plan(rows, cols, rank, sms);
  std::vector<float> partial(plan.split.count * plan.padded_rows * plan.padded_rank,
                             std::numeric_limits<float>::quiet_NaN());
  emu::launch(dim3(plan.row_blocks, plan.split.count), dim3(k::kThreads), [&] {
    k::shrink_kernel<T>(x.data(), x.ld, rows, cols, w.data(), rank, plan.k_per_split(), partial.data(),
                        plan.padded_rows, mask.device);
  });
  const auto got = sum_partials<T>(partial, plan.split.count, plan.padded_rows * plan.padded_rank,
                                   plan.padded_rank, rows, rank, scale, false, sms);
  std::vector<double> want(rows * rank), magnitude(rows * rank);
  for (int64_t n = 0; n < rows; ++n) {
    for (int j = 0; j < rank; ++j) {
      double s = 0, m = 0;
      for (int64_t c = 0; c < cols; ++c) {
        const double term = mask.keep(n * cols + c) * x.at(n, c) * w.at(j, c);
        s += term;
        m += std::fabs(term);
      }
      want[n * rank + j] = scale * s;
      magnitude[n * rank + j] = scale * m;
    }
  }
  compare("shrink " + std::string(name_of<T>()) + " rows=" + std::to_string(rows) + " K=" + std::to_string(cols) +
              " ld+" + std::to_string(ld_extra) + " r=" + std::to_string(rank) + " p=" + std::to_string(p) +
              " splits=" + std::to_string(plan.split.count),
          got, want, magnitude, eps_of<T>());
}

// out [rank, cols] (or its transpose) = l^T (m∘R)
template <typename T>
void outer_case(int64_t rows, int64_t cols, int64_t ld_extra, int rank, double p, bool transposed, int sms) {
  std::mt19937 gen(rows * 17 + cols * 3 + rank);
  const Mat<T> l(rows, rank, rank, gen), big(rows, cols, cols + ld_extra, gen);
  const Mask mask(p);
  const k::OuterPlan plan = k::outer_plan(rows, cols, rank, sms);
  std::vector<float> partial(plan.slabs.count * plan.padded_rank * plan.padded_cols,
                             std::numeric_limits<float>::quiet_NaN());
  emu::launch(dim3(plan.col_blocks, plan.slabs.count), dim3(k::kThreads), [&] {
    k::outer_kernel<T>(l.data(), rank, big.data(), big.ld, rows, cols, plan.rows_per_slab(), partial.data(),
                       plan.padded_cols, mask.device);
  });
  const auto got = sum_partials<T>(partial, plan.slabs.count, plan.padded_rank * plan.padded_cols,
                                   plan.padded_cols, rank, cols, 1.0f, transposed, sms);
  std::vector<double> want(rank * cols), magnitude(rank * cols);
  for (int i = 0; i < rank; ++i) {
    for (int64_t c = 0; c < cols; ++c) {
      double s = 0, m = 0;
      for (int64_t n = 0; n < rows; ++n) {
        const double term = l.at(n, i) * mask.keep(n * cols + c) * big.at(n, c);
        s += term;
        m += std::fabs(term);
      }
      want[i * cols + c] = s;
      magnitude[i * cols + c] = m;
    }
  }
  compare("outer " + std::string(name_of<T>()) + " rows=" + std::to_string(rows) + " C=" + std::to_string(cols) +
              " ld+" + std::to_string(ld_extra) + " r=" + std::to_string(rank) + " p=" + std::to_string(p) +
              (transposed ? " transposed" : "") + " slabs=" + std::to_string(plan.slabs.count),
          got, want, magnitude, eps_of<T>());
}

// out [rows, cols] (+)= m∘(t a)
template <typename T>
void expand_case(int64_t rows, int64_t cols, int rank, double p, bool accumulate) {
  std::mt19937 gen(rows * 5 + cols * 11 + rank);
  const Mat<T> t(rows, rank, rank, gen), a(rank, cols, cols, gen);
  Mat<T> out(rows, cols, cols, gen);
  const Mat<T> before = out;
  const Mask mask(p);
  emu::launch(k::expand_grid(rows, cols), dim3(k::kThreads),
              [&] { k::expand_kernel<T>(t.data(), rank, a.data(), rows, cols, out.data(), accumulate, mask.device); });
  std::vector<double> got(rows * cols), want(rows * cols), magnitude(rows * cols);
  for (int64_t n = 0; n < rows; ++n) {
    for (int64_t c = 0; c < cols; ++c) {
      double s = 0, m = 0;
      for (int i = 0; i < rank; ++i) {
        s += t.at(n, i) * a.at(i, c);
        m += std::fabs(t.at(n, i) * a.at(i, c));
      }
      const double keep = mask.keep(n * cols + c);
      const double old = accumulate ? before.at(n, c) : 0.0;
      got[n * cols + c] = out.at(n, c);
      want[n * cols + c] = old + keep * s;
      magnitude[n * cols + c] = std::fabs(old) + keep * m;
    }
  }
  compare("expand " + std::string(name_of<T>()) + " rows=" + std::to_string(rows) + " K=" + std::to_string(cols) +
              " r=" + std::to_string(rank) + " p=" + std::to_string(p) + (accumulate ? " accumulate" : ""),
          got, want, magnitude, eps_of<T>());
}

// The dropout kernels of lora_kernels.cuh over `numel` elements, grid as the launcher
// sizes it; every result must be bit-identical to the host evaluation.
template <typename T>
void dropout_kernels_case(int64_t numel, double p, int sms) {
  namespace lk = peftcore::lora_kernels;
  std::mt19937 gen(numel * 3 + 1);
  std::normal_distribution<float> normal;
  const Mask mask(p);
  std::vector<uint4> src_store(numel * sizeof(T) / 16 + 2), dst_store(numel * sizeof(T) / 16 + 2);
  T* src = reinterpret_cast<T*>(src_store.data());
  T* dst = reinterpret_cast<T*>(dst_store.data());
  std::vector<T> start(numel);
  for (int64_t i = 0; i < numel; ++i) {
    src[i] = T(normal(gen));
    start[i] = T(normal(gen));
  }
  const dim3 grid(lk::mask_blocks(numel, sms)), block(lk::kMaskThreads);
  const auto bits_of = [](T v) {
    uint32_t u = 0;
    std::memcpy(&u, &v, sizeof(T) < 4 ? sizeof(T) : 4);
    return u;
  };
  const auto check = [&](const std::string& what, auto expected) {
    int64_t bad = -1;
    for (int64_t i = 0; i < numel && bad < 0; ++i) {
      if (bits_of(dst[i]) != bits_of(expected(i))) bad = i;
    }
    const std::string label = what + (sizeof(T) == 2 ? " bf16" : " fp32") + " numel=" + std::to_string(numel) +
                              " p=" + std::to_string(p);
    if (bad >= 0) {
      ++failures;
      std::printf("FAIL %s: element %lld\n", label.c_str(), static_cast<long long>(bad));
    } else {
      std::printf("ok %s\n", label.c_str());
    }
  };
  const auto kept = [&](int64_t i) { return mask.keep(i) != 0.0; };
  const auto copied = [&](int64_t i) { return kept(i) ? src[i] : T(0.0f); };
  const auto added = [&](int64_t i) {
    return kept(i) ? T(static_cast<float>(start[i]) + static_cast<float>(src[i])) : start[i];
  };
  const auto zeroed = [&](int64_t i) { return kept(i) ? start[i] : T(0.0f); };
  const auto reset = [&] { std::copy(start.begin(), start.end(), dst); };

  reset();
  emu::launch(grid, block, [&] { lk::masked_copy_pack_kernel<T>(src, dst, numel, mask.device); });
  check("masked_copy_pack", copied);
  reset();
  emu::launch(grid, block, [&] { lk::masked_copy_kernel<T>(src, dst, numel, mask.device); });
  check("masked_copy", copied);
  reset();
  emu::launch(grid, block, [&] { lk::masked_add_pack_kernel<T>(dst, src, numel, mask.device); });
  check("masked_add_pack", added);
  reset();
  emu::launch(grid, block, [&] { lk::masked_add_kernel<T>(dst, src, numel, mask.device); });
  check("masked_add", added);
  reset();
  emu::launch(grid, block, [&] { lk::zero_dropped_kernel<T>(dst, numel, mask.device); });
  check("zero_dropped", zeroed);
}

}  // namespace

int main() {
  // Few SMs, so that even these small shapes split their reductions.
  constexpr int sms = 3;
  shrink_case<__nv_bfloat16>(1, 8, 0, 1, 0.0, sms);
  shrink_case<__nv_bfloat16>(37, 136, 8, 16, 0.3, sms);
  shrink_case<__nv_bfloat16>(300, 200, 0, 33, 0.3, sms);
  shrink_case<__half>(129, 64, 16, 64, 0.0, sms);
  shrink_case<__nv_bfloat16>(130, 1000, 0, 8, 0.1, sms);
  shrink_case<__half>(40, 520, 0, 17, 0.5, 132);  // many SMs: a split per tile
  outer_case<__nv_bfloat16>(1, 8, 0, 1, 0.0, false, sms);
  outer_case<__nv_bfloat16>(37, 136, 8, 16, 0.3, true, sms);
  outer_case<__nv_bfloat16>(300, 264, 0, 33, 0.3, false, sms);
  outer_case<__half>(65, 128, 0, 64, 0.0, true, sms);
  outer_case<__nv_bfloat16>(1000, 24, 0, 8, 0.1, false, sms);
  outer_case<__half>(200, 256, 8, 5, 0.5, false, 132);  // many SMs: a slab per tile
  expand_case<__nv_bfloat16>(1, 8, 1, 0.3, false);
  expand_case<__nv_bfloat16>(37, 136, 16, 0.3, true);
  expand_case<__nv_bfloat16>(300, 264, 33, 0.3, false);
  expand_case<__half>(65, 128, 64, 0.1, true);
  expand_case<__half>(64, 256, 8, 0.0, false);
  // numel % 8 != 0: the packed kernels' element tail; 1 SM: grid-stride loops wrap.
  dropout_kernels_case<float>(4099, 0.3, 1);
  dropout_kernels_case<__nv_bfloat16>(4101, 0.1, 1);
  dropout_kernels_case<__nv_bfloat16>(7, 0.5, 132);
  std::printf("%d failures\n", failures);
  return failures == 0 ? 0 : 1;
}
