// The CUDA sparse compose / revert kernels (csrc/sparse/sparse_kernels.cuh) run on
// the host through cuda_host_emulation.h, with the launcher's own table layout, on
// parameters of all four dtypes (one of them without entries): compose must add
// every summed delta at its index in the accumulation type and save the old value,
// revert must restore every parameter bit for bit, and the check pass must flag an
// index outside its parameter without writing anything. Built and run by
// tests/test_cuda_kernels_emulated.py with AddressSanitizer.
// Prints one line per check ("ok ..." or "FAIL ..."); exit status 1 on any failure.
#include "cuda_host_emulation.h"
// clang-format off
#include "sparse/sparse_kernels.cuh"
// clang-format on

#include <cstdio>
#include <numeric>
#include <random>
#include <string>

namespace {

namespace sk = peftcore::sparse_kernels;

int failures = 0;

void report(bool ok, const std::string& what) {
  if (!ok) ++failures;
  std::printf("%s %s\n", ok ? "ok" : "FAIL", what.c_str());
}

// One parameter: its bytes, element type code, and the sorted local indices touched.
struct Param {
  int64_t code, numel, elem;
  std::vector<uint64_t> bytes;  // 8-byte aligned storage
  std::vector<int64_t> local;
  std::vector<uint64_t> orig;

  Param(int64_t c, int64_t n, int64_t touched, std::mt19937& gen) : code(c), numel(n) {
    elem = c == sk::kF64 ? 8 : (c == sk::kF32 ? 4 : 2);
    bytes.resize((n * elem + 7) / 8);
    std::normal_distribution<float> normal;
    for (int64_t i = 0; i < n; ++i) set(i, normal(gen));
    std::vector<int64_t> all(n);
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), gen);
    local.assign(all.begin(), all.begin() + touched);
    std::sort(local.begin(), local.end());
    orig.resize((touched * elem + 7) / 8 + 1);
  }
  void* data() { return bytes.data(); }
  double get(int64_t i) const {
    const void* p = bytes.data();
    switch (code) {
      case sk::kF32: return static_cast<const float*>(p)[i];
      case sk::kF64: return static_cast<const double*>(p)[i];
      case sk::kF16: return static_cast<float>(static_cast<const __half*>(p)[i]);
      default: return static_cast<float>(static_cast<const __nv_bfloat16*>(p)[i]);
    }
  }
  void set(int64_t i, double v) {
    void* p = bytes.data();
    switch (code) {
      case sk::kF32: static_cast<float*>(p)[i] = static_cast<float>(v); break;
      case sk::kF64: static_cast<double*>(p)[i] = v; break;
      case sk::kF16: static_cast<__half*>(p)[i] = __half(static_cast<float>(v)); break;
      default: static_cast<__nv_bfloat16*>(p)[i] = __nv_bfloat16(static_cast<float>(v)); break;
    }
  }
  // What compose writes: old + d in Acc, rounded to the parameter's type.
  template <typename Acc>
  double composed(double old, Acc d) const {
    Param probe = *this;
    probe.set(0, static_cast<double>(static_cast<Acc>(old) + d));
    return probe.get(0);
  }
};

template <typename Acc>
void compose_revert_case(const char* acc_name) {
  std::mt19937 gen(11);
  std::vector<Param> params;
  params.emplace_back(sk::kF32, 1000, 137, gen);
  params.emplace_back(sk::kBF16, 77, 77, gen);  // every element
  params.emplace_back(sk::kF16, 300, 0, gen);   // no entries: an empty segment
  params.emplace_back(sk::kF64, 50, 9, gen);
  params.emplace_back(sk::kBF16, 513, 300, gen);
  const int n = static_cast<int>(params.size());
  const std::vector<Param> before = params;

  // The union's keys: parameter i's local indices shifted by its key offset.
  std::vector<int64_t> seg{0}, key_offset{0}, keys, param_ptr, orig_ptr, code, index_ptr, numel, size;
  std::vector<Acc> sums;
  std::normal_distribution<float> normal;
  for (auto& p : params) {
    for (int64_t l : p.local) {
      keys.push_back(key_offset.back() + l);
      sums.push_back(static_cast<Acc>(normal(gen)));
    }
    seg.push_back(static_cast<int64_t>(keys.size()));
    key_offset.push_back(key_offset.back() + p.numel);
    param_ptr.push_back(reinterpret_cast<int64_t>(p.data()));
    orig_ptr.push_back(reinterpret_cast<int64_t>(p.orig.data()));
    code.push_back(p.code);
    index_ptr.push_back(reinterpret_cast<int64_t>(p.local.data()));
    numel.push_back(p.numel);
    size.push_back(p.elem);
  }
  const int64_t total = static_cast<int64_t>(keys.size());
  std::vector<int64_t> local_out(total, -1);
  const std::vector<int64_t> ctable = sk::compose_table(seg, key_offset, param_ptr, orig_ptr, code);
  // One block of 64 threads for ~500 entries: the grid-stride loop wraps.
  emu::launch(dim3(1), dim3(64), [&] {
    sk::compose_all_kernel<Acc, __half, __nv_bfloat16>(ctable.data(), n, keys.data(), sums.data(), local_out.data(),
                                                       total);
  });
  bool composed_ok = true, locals_ok = true;
  int64_t t = 0;
  for (int i = 0; i < n; ++i) {
    std::vector<bool> touched(params[i].numel);
    for (int64_t l : params[i].local) {
      locals_ok &= local_out[t] == l;
      composed_ok &= params[i].get(l) == before[i].composed<Acc>(before[i].get(l), sums[t]);
      touched[l] = true;
      ++t;
    }
    for (int64_t e = 0; e < params[i].numel; ++e) composed_ok &= touched[e] || params[i].get(e) == before[i].get(e);
  }
  const std::string what = std::string("sparse compose (") + acc_name + " sums)";
  report(locals_ok, what + ": local indices");
  report(composed_ok, what + ": every delta added at its index, nothing else written");

  const std::vector<int64_t> rtable = sk::revert_table(seg, param_ptr, index_ptr, orig_ptr, numel, size);
  int bad = 0;
  emu::launch(dim3(sk::grid_for(total)), dim3(256),
              [&] { sk::revert_all_kernel<true>(rtable.data(), n, total, &bad); });
  report(bad == 0, what + ": revert check passes good indices");
  params[3].local.back() = params[3].numel;  // one past the end
  const std::vector<Param> composed = params;
  emu::launch(dim3(sk::grid_for(total)), dim3(256),
              [&] { sk::revert_all_kernel<true>(rtable.data(), n, total, &bad); });
  bool untouched = true;
  for (int i = 0; i < n; ++i) untouched &= params[i].bytes == composed[i].bytes;
  report(bad == 1 && untouched, what + ": revert check flags an index past the end, writes nothing");
  params[3].local.back() = before[3].local.back();
  emu::launch(dim3(sk::grid_for(total)), dim3(256),
              [&] { sk::revert_all_kernel<false>(rtable.data(), n, total, nullptr); });
  bool restored = true;
  for (int i = 0; i < n; ++i) restored &= params[i].bytes == before[i].bytes;
  report(restored, what + ": revert restores every parameter bit for bit");
}

}  // namespace

int main() {
  compose_revert_case<float>("float");
  compose_revert_case<double>("double");
  std::printf("%d failures\n", failures);
  return failures == 0 ? 0 : 1;
}
