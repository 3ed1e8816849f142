"""Fused layer-wise optimizers: LAMB and LARS, one multi-tensor kernel per stage."""

from .groups import param_groups
from .lamb import Lamb
from .lars import Lars

__all__ = ["Lamb", "Lars", "param_groups"]
