"""Builders for the peer implementations peftcore is compared with (tests and benchmarks).

Imported lazily: peft is an optional dependency (extras `test` and `bench`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def peft_lora_linear(base: nn.Linear, r: int, alpha: float, dropout: float = 0.0,
                     use_rslora: bool = False) -> nn.Module:
    """HF PEFT's own LoRA layer around a copy of `base` (adapter name "default")."""
    from peft import LoraConfig
    from peft.tuners.lora import Linear

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, use_rslora=use_rslora)
    return Linear(copy.deepcopy(base), "default", config=config, r=r, lora_alpha=alpha,
                  lora_dropout=dropout, use_rslora=use_rslora)


class EagerLora(nn.Module):
    """The plain-PyTorch LoRA a user would write: base(x) + s * B(A(dropout(x)))."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.base = copy.deepcopy(base).requires_grad_(False)
        self.lora_A = nn.Linear(base.in_features, r, bias=False, dtype=base.weight.dtype,
                                device=base.weight.device)
        self.lora_B = nn.Linear(r, base.out_features, bias=False, dtype=base.weight.dtype,
                                device=base.weight.device)
        self.dropout = nn.Dropout(dropout)
        self.scaling = alpha / r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.lora_B(self.lora_A(self.dropout(x))) * self.scaling
