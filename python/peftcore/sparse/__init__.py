"""Composable sparse fine-tuning (Ansell et al., LT-SFT): sparse deltas, their
selection from a dense fine-tuning run, and exact apply / revert on a model."""

from .compose import AppliedHandle, applied, apply, revert
from .composable_sft import from_composable_sft
from .delta import SparseDelta, SparseEntry
from .masked import MaskedTraining

__all__ = ["SparseDelta", "SparseEntry", "apply", "revert", "applied", "AppliedHandle",
           "from_composable_sft", "MaskedTraining"]
