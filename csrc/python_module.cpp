// The _C Python module: build information and the CPU vector-kernel switch. Tensor
// ops are reached through torch.ops.peftcore: each family registers its schemas
// (csrc/<family>/<family>_schema.cpp) when this library loads.
#include <pybind11/pybind11.h>

#include "common/cpu_features.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "peftcore native extension";
  m.def("build_info", [] {
    py::dict info;
    info["version"] = PEFTCORE_VERSION;
    info["torch_version"] = PEFTCORE_TORCH_VERSION;
    info["cuda_compiled"] = static_cast<bool>(PEFTCORE_WITH_CUDA);
    info["cuda_version"] = PEFTCORE_CUDA_VERSION;
    info["cuda_architectures"] = PEFTCORE_CUDA_ARCHS;
    return info;
  }, "What this binary was compiled with and against.");
  // Tests run the CPU paths with and without the hand-written vector kernels.
  m.def("_cpu_has_avx512", &peftcore::cpu_has_avx512);
  m.def("_vector_kernels", &peftcore::cpu_vector_kernels_enabled);
  m.def("_set_vector_kernels", &peftcore::set_cpu_vector_kernels_enabled, py::arg("enabled"));
}
