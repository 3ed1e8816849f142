// GPU paths that stay off until a GPU run shows they pay; the lora_paths benchmark
// family times each against the default layer ("peftcore side stream", "peftcore tc
// skinny", "peftcore tc+side"), bench/diag/profile_gpu.py shows their kernels.
//  - side stream: the LoRA backward's dB and dA (memory-bound reductions over N) on a
//    second stream beside T and the large compute-bound GEMM G W.
//  - tensor-core skinny kernels (lora/skinny_tc_kernels.cuh): the rank-r products in
//    16-bit as hand-written WMMA kernels with the dropout mask applied on the fly,
//    instead of cuBLAS GEMMs over a masked copy of x; dx's term T A by a WMMA kernel
//    too, masked in the same pass (cuBLAS needs a zeroing pass after it).
// Measured on an H200 (bench/results/NVIDIA-H200/README.md): at N = 8192, 4096^2,
// r = 16, bf16 the side stream is within noise of the default (0.99x) and the WMMA
// kernels are slower than cuBLAS (1.22x the step: 30-80 us per pass against cuBLAS's
// 22-25 us), so both stay off; they pass every CUDA test and compute-sanitizer there.
#pragma once

namespace peftcore {

bool side_stream_enabled();
void set_side_stream_enabled(bool enabled);

bool tc_skinny_enabled();
void set_tc_skinny_enabled(bool enabled);

}  // namespace peftcore
