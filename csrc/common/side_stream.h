// Whether backends may run independent work on a second stream of the same device
// (CUDA: the LoRA backward's dA and dB reductions, memory-bound, beside the large
// compute-bound GEMM G W). Off by default until a GPU run shows it pays
// (bench/diag/skinny_parts.py times the same overlap with plain torch calls, the LoRA
// benchmark the op itself as "peftcore side stream").
#pragma once

namespace peftcore {

bool side_stream_enabled();
void set_side_stream_enabled(bool enabled);

}  // namespace peftcore
