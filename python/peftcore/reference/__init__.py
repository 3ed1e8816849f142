"""Plain-PyTorch versions of every peftcore op: the test oracle and the readable math.

Nothing here is fast. Each function states the exact semantics the fused kernels
implement, including how dropout masks derive from their seed, so tests can compare
bit patterns of masks and values against the compiled ops. One module per op family
(lora, hydra, bone, optim, sparse), plus the dropout masks they share.
"""

from .bone import bat_unmerge, bat_weight, bone_linear
from .dropout import dropout_keep_mask, philox4x32_10
from .hydra import hydra_linear, hydra_merged_weight
from .lora import lora_linear
from .optim import lamb_step_, lamb_trust_ratio, lars_step_, multi_tensor_sumsq
from .sparse import magnitude_top_k, sparse_compose

__all__ = [
    "bat_unmerge", "bat_weight", "bone_linear", "dropout_keep_mask", "hydra_linear", "hydra_merged_weight",
    "lamb_step_", "lamb_trust_ratio", "lars_step_", "lora_linear", "magnitude_top_k", "multi_tensor_sumsq",
    "philox4x32_10", "sparse_compose",
]
