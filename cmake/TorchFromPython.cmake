# Locate the installed torch through the Python interpreter and describe it as
# the imported target peftcore::torch.
#
# Why not find_package(Torch): on a CUDA build of torch, TorchConfig pulls in
# Caffe2's cuda.cmake, which fails without a full CUDA toolkit (no nvrtc / cuBLAS
# libraries here), injects NOTFOUND libraries and its own -gencode list for a
# dozen architectures. Asking torch itself for its paths avoids all three and
# works unchanged for a CPU-only build.
#
# Sets: TORCH_VERSION_FULL, TORCH_CUDA_VERSION ("" for CPU builds),
#       TORCH_NVIDIA_INCLUDE_DIR (pip CUDA headers, may be empty),
#       TORCH_LIBSTDCXX (the libstdc++ torch has loaded, may be empty).

execute_process(
  COMMAND "${Python_EXECUTABLE}" -c [=[
import os, torch
from torch.utils import cpp_extension as ce
lib = os.path.join(os.path.dirname(torch.__file__), "lib")
nv = ""
try:
    import nvidia
    major = (torch.version.cuda or "0").split(".")[0]
    for root in nvidia.__path__:
        cand = os.path.join(root, "cu" + major, "include")
        if os.path.isdir(cand):
            nv = cand
except ImportError:
    pass
print(torch.__version__)
print(torch.version.cuda or "")
print(int(torch._C._GLIBCXX_USE_CXX11_ABI))
print(lib)
print(",".join(ce.include_paths()))
print(nv)
# The C++ runtime torch runs on: peftcore links it by path (see below).
maps = open("/proc/self/maps").read() if os.path.exists("/proc/self/maps") else ""
print(next((ln.split()[-1] for ln in maps.splitlines() if "/libstdc++.so" in ln), ""))
]=]
  OUTPUT_VARIABLE _torch_info
  ERROR_VARIABLE _torch_err
  RESULT_VARIABLE _torch_rc
  OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _torch_rc EQUAL 0)
  message(FATAL_ERROR "peftcore: could not import torch with ${Python_EXECUTABLE}:\n${_torch_err}\n"
                      "Install torch first (pip install -r requirements-dev.txt) and build with --no-build-isolation.")
endif()
string(REPLACE "\n" ";" _torch_lines "${_torch_info}")
list(GET _torch_lines 0 TORCH_VERSION_FULL)
list(GET _torch_lines 1 TORCH_CUDA_VERSION)
list(GET _torch_lines 2 _torch_abi)
list(GET _torch_lines 3 TORCH_LIBRARY_DIR)
list(GET _torch_lines 4 _torch_includes)
list(GET _torch_lines 5 TORCH_NVIDIA_INCLUDE_DIR)
list(LENGTH _torch_lines _torch_nlines)
set(TORCH_LIBSTDCXX "")
if(_torch_nlines GREATER 6)
  list(GET _torch_lines 6 TORCH_LIBSTDCXX)
endif()
string(REPLACE "," ";" _torch_includes "${_torch_includes}")

add_library(peftcore_torch INTERFACE)
add_library(peftcore::torch ALIAS peftcore_torch)
target_include_directories(peftcore_torch SYSTEM INTERFACE ${_torch_includes})
target_compile_definitions(peftcore_torch INTERFACE _GLIBCXX_USE_CXX11_ABI=${_torch_abi})
foreach(_lib c10 torch_cpu torch)
  find_library(_path_${_lib} NAMES ${_lib} PATHS "${TORCH_LIBRARY_DIR}" NO_DEFAULT_PATH REQUIRED)
  target_link_libraries(peftcore_torch INTERFACE "${_path_${_lib}}")
endforeach()
# One C++ runtime per process. A compiler that links libstdc++ statically (a GCC
# configured that way, or -static-libstdc++) would put a second copy of iostream and
# locale into _C; its facet ids then index the locale of the shared copy torch
# loaded, and the first number formatted into an error message reads the wrong
# facet (seen on a GPU machine: every failed TORCH_CHECK crashed the process).
# Naming the shared library torch runs on ahead of the driver's implicit -lstdc++
# resolves every libstdc++ symbol there, so no archive member is pulled in.
if(TORCH_LIBSTDCXX AND CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  target_link_libraries(peftcore_torch INTERFACE "${TORCH_LIBSTDCXX}")
endif()
message(STATUS "peftcore: torch ${TORCH_VERSION_FULL} (CUDA '${TORCH_CUDA_VERSION}') at ${TORCH_LIBRARY_DIR}, C++ runtime ${TORCH_LIBSTDCXX}")

# CUDA half of torch, used only when peftcore compiles its CUDA kernels.
function(peftcore_torch_cuda_target)
  add_library(peftcore_torch_cuda INTERFACE)
  add_library(peftcore::torch_cuda ALIAS peftcore_torch_cuda)
  foreach(_lib c10_cuda torch_cuda)
    find_library(_path_${_lib} NAMES ${_lib} PATHS "${TORCH_LIBRARY_DIR}" NO_DEFAULT_PATH REQUIRED)
    target_link_libraries(peftcore_torch_cuda INTERFACE "${_path_${_lib}}")
  endforeach()
  target_compile_definitions(peftcore_torch_cuda INTERFACE USE_CUDA)
  if(TORCH_NVIDIA_INCLUDE_DIR)
    # cuBLAS / cuSPARSE headers from torch's pip dependencies. Appended after
    # the toolkit's own include directory so that the toolkit headers win.
    target_include_directories(peftcore_torch_cuda SYSTEM AFTER INTERFACE "${TORCH_NVIDIA_INCLUDE_DIR}")
  endif()
endfunction()
