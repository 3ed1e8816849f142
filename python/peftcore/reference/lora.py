"""Plain-PyTorch lora_linear: the oracle of torch.ops.peftcore.lora_linear."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .dropout import dropout_keep_mask


def lora_linear(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    lora_A: Tensor,
    lora_B: Tensor,
    scaling: float,
    dropout_p: float = 0.0,
    dropout_seed: Optional[Tensor] = None,
) -> Tensor:
    """y = x W^T + b + scaling * (dropout(x) A^T) B^T (HF PEFT's LoRA forward)."""
    y = torch.nn.functional.linear(x, weight, bias)
    xd = x
    if dropout_p > 0.0:
        rows = x.numel() // x.shape[-1]
        keep = dropout_keep_mask(dropout_seed, dropout_p, rows, x.shape[-1]).to(x.device)
        xd = x * keep.reshape(x.shape).to(x.dtype) / (1.0 - dropout_p)
    return y + scaling * ((xd @ lora_A.t()) @ lora_B.t())
