"""Typed wrappers over torch.ops.peftcore and the fake kernels torch.compile needs, one
module per op family (lora, hydra, bone, optim, sparse); importing this package
registers them all."""

from . import optim, sparse  # noqa: F401  (fake kernels of the optimizer and sparse ops)
from ._common import dropout_seed
from .bone import bone_bat_linear, bone_bat_weight, bone_linear
from .hydra import hydra_linear
from .lora import lora_linear

__all__ = ["bone_bat_linear", "bone_bat_weight", "bone_linear", "dropout_seed", "hydra_linear", "lora_linear"]
