"""peftcore: fused C++/CUDA kernels for parameter-efficient fine-tuning in PyTorch."""

from ._native import build_info
from . import ops, reference
from . import optim, sparse
from .layers import AdapterSet, BoneLinear, HydraLinear, LoraLinear
from .model import (
    BoneConfig,
    HydraConfig,
    LoraConfig,
    active_adapters,
    add_adapter,
    adapter_names,
    delete_adapter,
    disable_adapters,
    set_adapter,
    from_peft,
    inject,
    load_adapter,
    merge,
    merge_and_unload,
    print_trainable_parameters,
    save_adapter,
    to_peft,
    trainable_parameters,
    unmerge,
)

__version__ = build_info()["version"]

__all__ = [
    "build_info", "ops", "optim", "reference", "sparse", "LoraLinear", "HydraLinear", "BoneLinear",
    "LoraConfig", "HydraConfig", "BoneConfig", "inject", "disable_adapters", "merge", "unmerge",
    "merge_and_unload", "trainable_parameters", "print_trainable_parameters", "save_adapter",
    "load_adapter", "to_peft", "from_peft", "add_adapter", "set_adapter", "delete_adapter",
    "active_adapters", "adapter_names", "AdapterSet", "__version__",
]
