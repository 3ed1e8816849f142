"""Adapter layers that wrap existing modules and call one fused op each."""

from .hydra import HydraLinear
from .lora import LoraLinear

__all__ = ["HydraLinear", "LoraLinear"]
