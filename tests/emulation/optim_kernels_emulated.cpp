// The multi-tensor optimizer kernels (csrc/optim/optim_kernels.cuh) run on the host
// through cuda_host_emulation.h, launched by the CUDA backend's own metadata packing
// (optim/multi_tensor_meta.h), against host loops over the same formulas
// (optim/optim_math.h). More tensors than one launch's metadata holds, tensors of
// several chunks and ragged tails, float32 and bfloat16 parameters. Moments and
// momentum buffers must match bit for bit; norms (summed in another order) and
// what depends on them to float rounding. Built and run by
// tests/test_cuda_kernels_emulated.py with AddressSanitizer.
// Prints one line per check ("ok ..." or "FAIL ..."); exit status 1 on any failure.
#include "cuda_host_emulation.h"
// clang-format off
#include "optim/multi_tensor_meta.h"
// clang-format on

#include <cmath>
#include <cstdio>
#include <map>
#include <random>
#include <set>
#include <string>

namespace {

using namespace peftcore;
namespace k = peftcore::optim_kernels;

int failures = 0;

void report(bool ok, const std::string& what, const std::string& detail = "") {
  if (!ok) ++failures;
  std::printf("%s %s%s\n", ok ? "ok" : "FAIL", what.c_str(), detail.c_str());
}

// Sizes: one-chunk tensors around the kernels' thread and ILP strides, chunk
// boundaries, several-chunk tensors; more tensors than kMaxTensors.
std::vector<int64_t> sizes() {
  std::vector<int64_t> n = {1, 7, 511, 512, 513, 2047, 2048, 2049, k::kChunk - 1, k::kChunk, k::kChunk + 1,
                            2 * k::kChunk + 300};
  std::mt19937 gen(5);
  while (n.size() < 40) n.push_back(1 + gen() % 20000);
  return n;
}

// Every (tensor, chunk) of the layout reaches exactly one block, with its global
// chunk number, and no launch exceeds the metadata limits; checked on a list whose
// chunks (about 700) need several launches, without any memory behind it.
void meta_packing_check() {
  std::vector<int64_t> numels;
  for (int i = 0; i < 70; ++i) numels.push_back(1 + (i % 3) * k::kChunk);  // 1, 2 or 3 chunks
  numels.push_back(300 * int64_t{k::kChunk} + 5);                         // 301 chunks: spans launches
  numels.push_back(0);
  const k::ChunkLayout layout = k::chunk_layout(numels);
  std::vector<k::Entry<1>> entries;
  for (size_t i = 0; i < numels.size(); ++i) {
    entries.push_back({{reinterpret_cast<void*>(0x1000 * (i + 1))}, numels[i], static_cast<int32_t>(i), 0});
  }
  std::set<std::pair<int32_t, int32_t>> seen;
  bool ok = true;
  int launches = 0;
  k::multi_tensor_apply<1>(entries, layout, [&](const k::ListMeta<1>& meta, int blocks) {
    ++launches;
    ok &= blocks >= 1 && blocks <= k::kMaxBlocks;
    for (int b = 0; b < blocks; ++b) {
      const int slot = meta.block_tensor[b];
      ok &= slot < k::kMaxTensors;
      const int32_t global = meta.global_tensor[slot];
      ok &= meta.ptr[0][slot] == reinterpret_cast<void*>(0x1000 * (global + 1));
      ok &= meta.numel[slot] == numels[global];
      ok &= meta.block_global_chunk[b] == layout.first_chunk[global] + meta.block_chunk[b];
      ok &= seen.insert({global, meta.block_chunk[b]}).second;
    }
  });
  ok &= static_cast<int64_t>(seen.size()) == layout.total;
  report(ok, "multi_tensor_apply packing: " + std::to_string(layout.total) + " chunks in " +
                 std::to_string(launches) + " launches");
}

template <typename T>
struct Tensors {
  std::vector<std::vector<T>> data;
  Tensors(const std::vector<int64_t>& numels, std::mt19937& gen, float scale, float offset = 0.0f) {
    std::normal_distribution<float> normal;
    for (int64_t n : numels) {
      std::vector<T> t(n);
      for (auto& e : t) e = T(offset + scale * normal(gen));
      data.push_back(std::move(t));
    }
  }
};

// Runs a kernel over all tensors the way optim_cuda.cu does: one multi_tensor_apply
// over entries of D pointers each.
template <int D, typename Kernel>
void apply_all(const std::vector<std::array<void*, D>>& ptrs, const std::vector<int64_t>& numels,
               const std::vector<uint8_t>& flags, const k::ChunkLayout& layout, const Kernel& kernel) {
  std::vector<k::Entry<D>> entries;
  for (size_t i = 0; i < ptrs.size(); ++i) {
    entries.push_back({ptrs[i], numels[i], static_cast<int32_t>(i), flags.empty() ? uint8_t{0} : flags[i]});
  }
  k::multi_tensor_apply<D>(entries, layout, [&](const k::ListMeta<D>& meta, int blocks) {
    emu::launch(dim3(blocks), dim3(k::kThreads), [&] { kernel(meta); });
  });
}

// Per-tensor totals of the partials, through chunk_totals_kernel.
std::vector<double> totals_of(const std::vector<double>& partial, const k::ChunkLayout& layout, int rows) {
  const int64_t n = static_cast<int64_t>(layout.n_chunks.size());
  std::vector<double> totals(rows * n, 0.0);
  k::for_each_totals_batch(layout, [&](const k::TotalsMeta& meta) {
    emu::launch(dim3((meta.count + 127) / 128), dim3(128), [&] {
      k::chunk_totals_kernel(partial.data(), layout.total, totals.data(), n, rows, meta);
    });
  });
  return totals;
}

bool close(double got, double want, double rel) { return std::fabs(got - want) <= rel * std::fabs(want) + 1e-30; }

void sumsq_check() {
  const auto numels = sizes();
  std::mt19937 gen(1);
  Tensors<float> x(numels, gen, 1.0f);
  const k::ChunkLayout layout = k::chunk_layout(numels);
  std::vector<double> partial(layout.total);
  std::vector<std::array<void*, 1>> ptrs;
  for (auto& t : x.data) ptrs.push_back({t.data()});
  apply_all<1>(ptrs, numels, {}, layout,
               [&](const k::ListMeta<1>& meta) { k::sumsq_kernel<float>(meta, partial.data(), layout.total); });
  const auto totals = totals_of(partial, layout, 1);
  bool ok = true;
  for (size_t i = 0; i < numels.size(); ++i) {
    double want = 0;
    for (float v : x.data[i]) want += double(v) * v;
    ok &= close(totals[i], want, 1e-5);
  }
  report(ok, "sumsq fp32 over " + std::to_string(numels.size()) + " tensors");
}

// One LAMB step (P params, G grads, float moments), or a skipped one (found_inf).
template <typename P, typename G>
void lamb_check(const char* name, bool skip) {
  const auto numels = sizes();
  std::mt19937 gen(2);
  Tensors<P> p(numels, gen, 0.5f);
  Tensors<G> g(numels, gen, 0.1f);
  Tensors<float> m(numels, gen, 0.01f), v(numels, gen, 0.001f, 0.002f);
  for (auto& t : v.data) {
    for (auto& e : t) e = std::fabs(e);
  }
  const Tensors<P> p0 = p;
  const Tensors<float> m0 = m, v0 = v;
  const optim::LambHyper h{0.9, 0.999, 1e-6, 0.01, 0.0, 10.0, 0.0, true, true, true, false};
  const float lr = 0.01f, step = 3.0f, divisor = 2.0f, found_inf = skip ? 1.0f : 0.0f;
  const k::ChunkLayout layout = k::chunk_layout(numels);
  std::vector<double> partial(2 * layout.total);
  std::vector<std::array<void*, 4>> ptrs4;
  std::vector<std::array<void*, 3>> ptrs3;
  for (size_t i = 0; i < numels.size(); ++i) {
    ptrs4.push_back({p.data[i].data(), g.data[i].data(), m.data[i].data(), v.data[i].data()});
    ptrs3.push_back({p.data[i].data(), m.data[i].data(), v.data[i].data()});
  }
  apply_all<4>(ptrs4, numels, {}, layout, [&](const k::ListMeta<4>& meta) {
    k::lamb_moments_kernel<P, G, float>(meta, partial.data(), layout.total, &step, &divisor, &found_inf, h);
  });
  const auto totals = skip ? std::vector<double>(2 * numels.size(), 0.0) : totals_of(partial, layout, 2);
  apply_all<3>(ptrs3, numels, {}, layout, [&](const k::ListMeta<3>& meta) {
    k::lamb_apply_kernel<P, float>(meta, totals.data(), static_cast<int64_t>(numels.size()), &lr, &step,
                                   &found_inf, h);
  });

  bool moments_exact = true, norms_ok = true, params_ok = true;
  const auto s = optim::lamb_scalars<float>(h, step);
  for (size_t i = 0; i < numels.size(); ++i) {
    double psq = 0, usq = 0;
    std::vector<float> mi = m0.data[i], vi = v0.data[i];
    for (int64_t j = 0; j < numels[i]; ++j) {
      const float pj = static_cast<float>(p0.data[i][j]);
      const float u = optim::lamb_moments(static_cast<float>(g.data[i][j]) / divisor, pj, mi[j], vi[j], s);
      psq += double(pj) * pj;
      usq += double(u) * u;
    }
    if (skip) {
      mi = m0.data[i];
      vi = v0.data[i];
    } else {
      norms_ok &= close(totals[i], psq, 1e-5) && close(totals[numels.size() + i], usq, 1e-5);
    }
    const float ratio = optim::lamb_trust_ratio<float>(static_cast<float>(std::sqrt(psq)),
                                                        static_cast<float>(std::sqrt(usq)), 0.0f, 10.0f, false, 0.0f);
    for (int64_t j = 0; j < numels[i]; ++j) {
      moments_exact &= std::memcmp(&mi[j], &m.data[i][j], 4) == 0 && std::memcmp(&vi[j], &v.data[i][j], 4) == 0;
      const float pj = static_cast<float>(p0.data[i][j]);
      const float want = skip ? pj : static_cast<float>(P(pj - lr * optim::lamb_update(pj, mi[j], vi[j], s) * ratio));
      const float got = static_cast<float>(p.data[i][j]);
      // The ratio differs by float rounding (norm order): a few ulps of the update,
      // or one ulp of a 16-bit parameter.
      const float ulp = sizeof(P) == 2 ? std::ldexp(std::fabs(want), -7) : std::ldexp(std::fabs(want), -22);
      params_ok &= std::fabs(got - want) <= 1e-5f * std::fabs(want - pj) + ulp + 1e-30f;
    }
  }
  const std::string what = std::string("lamb ") + name + (skip ? " skipped (found_inf)" : "");
  report(moments_exact, what + ": moments bit for bit");
  report(norms_ok, what + ": norms");
  report(params_ok, what + ": parameters");
}

// One LARS step with momentum (fresh buffers on some tensors), nesterov, trust ratio.
void lars_check() {
  const auto numels = sizes();
  std::mt19937 gen(3);
  Tensors<float> p(numels, gen, 0.5f), g(numels, gen, 0.1f), buf(numels, gen, 0.05f);
  const Tensors<float> p0 = p, buf0 = buf;
  std::vector<uint8_t> fresh(numels.size());
  for (size_t i = 0; i < fresh.size(); ++i) fresh[i] = i % 3 == 0;
  const k::LarsHyper h{0.9, 0.1, 1e-4, 0.001, 1e-8, true, false, true, true};
  const float lr = 0.1f, divisor = 1.0f;
  const k::ChunkLayout layout = k::chunk_layout(numels);
  std::vector<double> partial(2 * layout.total);
  std::vector<std::array<void*, 2>> ptrs2;
  std::vector<std::array<void*, 3>> ptrs3;
  for (size_t i = 0; i < numels.size(); ++i) {
    ptrs2.push_back({p.data[i].data(), g.data[i].data()});
    ptrs3.push_back({p.data[i].data(), g.data[i].data(), buf.data[i].data()});
  }
  apply_all<2>(ptrs2, numels, {}, layout, [&](const k::ListMeta<2>& meta) {
    k::lars_norms_kernel<float, float, float>(meta, partial.data(), layout.total, &divisor, nullptr);
  });
  const auto totals = totals_of(partial, layout, 2);
  apply_all<3>(ptrs3, numels, fresh, layout, [&](const k::ListMeta<3>& meta) {
    k::lars_update_kernel<float, float, float>(meta, totals.data(), static_cast<int64_t>(numels.size()), &lr,
                                               &divisor, nullptr, h);
  });
  bool norms_ok = true, params_ok = true;
  for (size_t i = 0; i < numels.size(); ++i) {
    double psq = 0, gsq = 0;
    for (int64_t j = 0; j < numels[i]; ++j) {
      psq += double(p0.data[i][j]) * p0.data[i][j];
      gsq += double(g.data[i][j]) * g.data[i][j];
    }
    norms_ok &= close(totals[i], psq, 1e-5) && close(totals[numels.size() + i], gsq, 1e-5);
    const float ratio = optim::lars_trust_ratio<float>(static_cast<float>(std::sqrt(psq)),
                                                        static_cast<float>(std::sqrt(gsq)), 0.001f, 1e-4f, 1e-8f,
                                                        false, lr);
    for (int64_t j = 0; j < numels[i]; ++j) {
      const float d = (g.data[i][j] / divisor + 1e-4f * p0.data[i][j]) * ratio;
      const float b = fresh[i] ? d : buf0.data[i][j] * 0.9f + 0.9f * d;
      const float want = p0.data[i][j] - lr * (d + 0.9f * b);
      // b may cancel (old buffer against new direction): tolerance from its terms.
      const float b_scale = fresh[i] ? std::fabs(d) : std::fabs(buf0.data[i][j] * 0.9f) + std::fabs(0.9f * d);
      const bool ok = std::fabs(buf.data[i][j] - b) <= 1e-5f * b_scale + 1e-30f &&
                      std::fabs(p.data[i][j] - want) <= 1e-5f * std::fabs(want - p0.data[i][j]) +
                                                            std::ldexp(std::fabs(want), -22) + 1e-30f;
      if (!ok && params_ok) {
        std::printf("  tensor %zu element %lld: buf %.9g want %.9g, p %.9g want %.9g (was %.9g)\n", i,
                    static_cast<long long>(j), buf.data[i][j], b, p.data[i][j], want, p0.data[i][j]);
      }
      params_ok &= ok;
    }
  }
  report(norms_ok, "lars fp32 momentum nesterov: norms");
  report(params_ok, "lars fp32 momentum nesterov: buffers and parameters");
}

}  // namespace

int main() {
  meta_packing_check();
  sumsq_check();
  lamb_check<float, float>("fp32", false);
  lamb_check<float, float>("fp32", true);
  lamb_check<__nv_bfloat16, __nv_bfloat16>("bf16", false);
  lamb_check<float, __nv_bfloat16>("fp32 params, bf16 grads", false);
  lars_check();
  std::printf("%d failures\n", failures);
  return failures == 0 ? 0 : 1;
}
