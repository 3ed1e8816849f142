"""Adapter layers that wrap existing modules and call one fused op each."""

from .lora import LoraLinear

__all__ = ["LoraLinear"]
