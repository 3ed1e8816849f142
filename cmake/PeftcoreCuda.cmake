# Decide whether the CUDA kernels are compiled: PEFTCORE_ENABLE_CUDA = AUTO | ON | OFF.
# AUTO compiles them when torch is a CUDA build and an nvcc of the same major
# version is found; ON makes either missing piece a configure error.
# Sets PEFTCORE_WITH_CUDA.

set(PEFTCORE_WITH_CUDA OFF)
string(TOUPPER "${PEFTCORE_ENABLE_CUDA}" _mode)
if(NOT _mode MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "PEFTCORE_ENABLE_CUDA must be AUTO, ON or OFF, got '${PEFTCORE_ENABLE_CUDA}'")
endif()

function(_peftcore_cuda_unavailable reason)
  if(_mode STREQUAL "ON")
    message(FATAL_ERROR "peftcore: PEFTCORE_ENABLE_CUDA=ON but ${reason}")
  endif()
  message(STATUS "peftcore: building without CUDA (${reason})")
endfunction()

if(_mode STREQUAL "OFF")
  message(STATUS "peftcore: building without CUDA (PEFTCORE_ENABLE_CUDA=OFF)")
  return()
endif()
if(NOT TORCH_CUDA_VERSION)
  _peftcore_cuda_unavailable("torch ${TORCH_VERSION_FULL} is not a CUDA build")
  return()
endif()

# Look where CUDA usually lives when nvcc is not on PATH.
if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX})
  foreach(_root "$ENV{CUDA_HOME}" "$ENV{CUDA_PATH}" "/usr/local/cuda")
    if(_root AND EXISTS "${_root}/bin/nvcc")
      set(CMAKE_CUDA_COMPILER "${_root}/bin/nvcc" CACHE FILEPATH "nvcc")
      break()
    endif()
  endforeach()
endif()
include(CheckLanguage)
check_language(CUDA)
if(NOT CMAKE_CUDA_COMPILER)
  _peftcore_cuda_unavailable("no nvcc was found (set CUDA_HOME or CMAKE_CUDA_COMPILER)")
  return()
endif()

# Architectures are ours to choose, never torch's list: keep compile time sane.
set(CMAKE_CUDA_ARCHITECTURES "${PEFTCORE_CUDA_ARCHITECTURES}")
enable_language(CUDA)
string(REGEX MATCH "^[0-9]+" _nvcc_major "${CMAKE_CUDA_COMPILER_VERSION}")
string(REGEX MATCH "^[0-9]+" _torch_cuda_major "${TORCH_CUDA_VERSION}")
if(NOT _nvcc_major STREQUAL _torch_cuda_major)
  _peftcore_cuda_unavailable("nvcc ${CMAKE_CUDA_COMPILER_VERSION} does not match torch's CUDA ${TORCH_CUDA_VERSION}")
  return()
endif()
find_package(CUDAToolkit REQUIRED)
set(PEFTCORE_WITH_CUDA ON)
message(STATUS "peftcore: CUDA ${CMAKE_CUDA_COMPILER_VERSION}, architectures ${PEFTCORE_CUDA_ARCHITECTURES}")
