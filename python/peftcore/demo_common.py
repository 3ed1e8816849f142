"""What the demos share: the adapter config of each kind and the optimizers."""

from __future__ import annotations

import torch

import peftcore


def adapter_config(kind: str, rank: int, targets, exclude=None, modules_to_save=None):
    common = dict(target_modules=targets, exclude_modules=exclude, modules_to_save=modules_to_save)
    if kind == "lora":
        return peftcore.LoraConfig(r=rank, alpha=2 * rank, **common)
    if kind == "hydra":
        return peftcore.HydraConfig(r_parallel=rank, r_sequential=rank, alpha_parallel=2 * rank,
                                    alpha_sequential=2 * rank, **common)
    if kind == "bone":
        return peftcore.BoneConfig(r=rank, **common)
    raise ValueError(f"unknown adapter kind {kind!r}: lora, hydra or bone")


def make_optimizer(name: str, params, lr: float, weight_decay: float = 0.0):
    if name == "lamb":
        return peftcore.optim.Lamb(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}: adamw or lamb")
