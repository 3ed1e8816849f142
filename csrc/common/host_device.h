// PEFTCORE_HD marks functions that compile both as host C++ and as CUDA device code.
#pragma once

#if defined(__CUDACC__)
#define PEFTCORE_HD __host__ __device__ __forceinline__
#else
#define PEFTCORE_HD inline
#endif
