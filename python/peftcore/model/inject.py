"""Putting adapters into a model, counting them, merging them out."""

from __future__ import annotations

import contextlib

from torch import nn

from ..layers import BoneLinear, HydraLinear, LoraLinear
from .config import matches

ADAPTER_LAYERS = (LoraLinear, HydraLinear, BoneLinear)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, module)


def is_conv1d(module: nn.Module) -> bool:
    """HF transformers' Conv1D (GPT-2): a linear layer storing its weight as [in, out]."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and module.weight.dim() == 2


def as_linear(module: nn.Module) -> nn.Linear:
    """An nn.Linear view of `module`: itself, or for a Conv1D one whose weight is the
    transposed view of the Conv1D's (shared storage, so merges write through)."""
    if not is_conv1d(module):
        return module
    n_in, n_out = module.weight.shape
    linear = nn.Linear(n_in, n_out, bias=module.bias is not None, device="meta")
    linear.weight = nn.Parameter(module.weight.t(), requires_grad=module.weight.requires_grad)
    if module.bias is not None:
        linear.bias = module.bias
    object.__setattr__(linear, "peftcore_source", module)  # put back by merge_and_unload; not a submodule
    return linear


def target_names(model: nn.Module, config) -> list[str]:
    """The nn.Linear (or HF Conv1D) modules `config` selects (already-adapted layers excluded)."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, ADAPTER_LAYERS) or ".base_layer" in name or name.endswith("base_layer"):
            continue
        if (isinstance(module, nn.Linear) or is_conv1d(module)) and matches(name, config.target_modules) \
                and not matches(name, config.exclude_modules):
            names.append(name)
    return names


def inject(model: nn.Module, config) -> nn.Module:
    """Replaces each matching nn.Linear by the config's adapter layer (LoraLinear,
    HydraLinear or BoneLinear; in place), freezes every other parameter except
    `modules_to_save`, and returns the model."""
    names = target_names(model, config)
    if not names:
        linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise ValueError(f"no nn.Linear matches target_modules={config.target_modules!r}; "
                         f"some Linear modules of this model: {linear[:6]}")
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        base = as_linear(model.get_submodule(name))
        _set_submodule(model, name, config.make_layer(base))
    for name, module in model.named_modules():
        if config.modules_to_save and matches(name, config.modules_to_save):
            module.requires_grad_(True)
    model.peftcore_config = config
    return model


def adapter_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every peftcore adapter layer of the model, by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, ADAPTER_LAYERS)}


def lora_layers(model: nn.Module) -> dict[str, LoraLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLinear)}


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def print_trainable_parameters(model: nn.Module) -> None:
    trainable, total = trainable_parameters(model)
    print(f"trainable params: {trainable:,} || all params: {total:,} || "
          f"trainable%: {100 * trainable / max(total, 1):.4f}")


def merge(model: nn.Module) -> None:
    for layer in adapter_layers(model).values():
        layer.merge()


def unmerge(model: nn.Module) -> None:
    for layer in adapter_layers(model).values():
        layer.unmerge()


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Folds every adapter into its base weight and puts the plain nn.Linear back."""
    for name, layer in adapter_layers(model).items():
        layer.merge()
        _set_submodule(model, name, getattr(layer.base_layer, "peftcore_source", layer.base_layer))
    if hasattr(model, "peftcore_config"):
        del model.peftcore_config
    return model


@contextlib.contextmanager
def disable_adapters(model: nn.Module):
    """``with peftcore.disable_adapters(model): ...`` runs the base model alone (adapters
    stay in place, merged ones are unmerged for the duration and merged back after)."""
    layers = list(adapter_layers(model).values())
    merged = [layer for layer in layers if layer.merged]
    for layer in merged:
        layer.unmerge()
    for layer in layers:
        layer.forward = layer.base_layer.forward  # instance attribute shadows the method
    try:
        yield model
    finally:
        for layer in layers:
            del layer.forward
        for layer in merged:
            layer.merge()


def remove_adapters(model: nn.Module, names) -> None:
    """Puts the base layers back at `names` without merging (used to undo a failed load)."""
    for name in names:
        layer = model.get_submodule(name)
        if isinstance(layer, ADAPTER_LAYERS):
            _set_submodule(model, name, getattr(layer.base_layer, "peftcore_source", layer.base_layer))
