"""Adapter layers that wrap existing modules and call one fused op each."""

from .adapter_set import AdapterSet
from .bone import BoneLinear
from .hydra import HydraLinear
from .lora import LoraLinear

__all__ = ["AdapterSet", "BoneLinear", "HydraLinear", "LoraLinear"]
