"""The model-level API: inject adapters into a model, merge, save, load, and
exchange adapters with HF PEFT."""

from .config import BoneConfig, HydraConfig, LoraConfig
from .inject import (
    active_adapters,
    add_adapter,
    adapter_layers,
    adapter_names,
    delete_adapter,
    set_adapter,
    disable_adapters,
    inject,
    lora_layers,
    merge,
    merge_and_unload,
    print_trainable_parameters,
    trainable_parameters,
    unmerge,
)
from .io import from_peft, load_adapter, save_adapter, to_peft

__all__ = [
    "LoraConfig", "HydraConfig", "BoneConfig", "adapter_layers", "disable_adapters", "inject",
    "lora_layers", "merge", "unmerge", "merge_and_unload", "trainable_parameters",
    "print_trainable_parameters", "save_adapter", "load_adapter", "to_peft", "from_peft",
    "add_adapter", "set_adapter", "delete_adapter", "active_adapters", "adapter_names",
]
