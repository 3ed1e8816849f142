// Qualifiers for code that compiles both as host C++ and as CUDA device code.
//
// PEFTCORE_HD_FN is for free functions and gives them internal linkage: the CPU
// optimizer loops are compiled once per instruction set (AVX2 and baseline) from
// headers that use these functions, and with external linkage the linker could
// keep the AVX2 copy of an inline function for every caller. PEFTCORE_HD is for
// member functions (which cannot be static); keep those out of per-ISA files.
#pragma once

#if defined(__CUDACC__)
#define PEFTCORE_HD __host__ __device__ __forceinline__
#define PEFTCORE_HD_FN static __host__ __device__ __forceinline__
#else
#define PEFTCORE_HD inline
#define PEFTCORE_HD_FN static inline
#endif
