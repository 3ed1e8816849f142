// Which hand-written vector CPU kernels may run: the CPU has the instruction set (with
// the OS saving its registers) and the kernels have not been switched off. Tests switch
// them off to run the MKL / scalar fallbacks against the same oracles.
#pragma once

namespace peftcore {

bool cpu_has_avx512();
bool cpu_vector_kernels_enabled();  // the switch (on by default)
void set_cpu_vector_kernels_enabled(bool enabled);

bool avx512_kernels_enabled();  // switch on and AVX-512F (skinny products, fp32 masks, Philox)
bool avx2_kernels_enabled();    // switch on and AVX2 (16-bit dropout masks)

}  // namespace peftcore
