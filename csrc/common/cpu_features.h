// Which hand-written AVX-512 CPU kernels may run: the CPU has AVX-512F (with the OS
// saving its registers) and they have not been switched off. Tests switch them off
// to run the AVX2 / MKL fallbacks against the same oracles on an AVX-512 machine.
#pragma once

namespace peftcore {

bool avx512_kernels_enabled();
void set_avx512_kernels_enabled(bool enabled);  // refuses true on a CPU without AVX-512F

}  // namespace peftcore
