"""peftcore: fused C++/CUDA kernels for parameter-efficient fine-tuning in PyTorch."""

from ._native import build_info
from . import ops, reference
from . import optim, sparse
from .layers import LoraLinear

__version__ = build_info()["version"]

__all__ = ["build_info", "ops", "optim", "reference", "sparse", "LoraLinear", "__version__"]
