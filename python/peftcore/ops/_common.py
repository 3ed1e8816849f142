"""What every family's ops module shares: the op namespace, dropout seeds, and the
error that backward ops give when asked for a second derivative.

Each family's schemas live in csrc/<family>/<family>_schema.cpp; its autograd is C++
(csrc/<family>/<family>_autograd.cpp) and calls the backward op, so the whole graph
stays inside registered ops under torch.compile. The family's module here adds what
the compiler needs (a fake kernel per op: output shapes, no data) and a typed wrapper.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _native  # noqa: F401  (loads the library that defines torch.ops.peftcore)

peftcore_ops = torch.ops.peftcore


def dropout_seed(device: torch.device) -> Tensor:
    """Two random int64 words from torch's generator: the key of one dropout mask.

    Drawn with torch.randint so torch.manual_seed reproduces masks and
    torch.compile traces it as an ordinary random op.
    """
    return torch.randint(-(2**63), 2**63 - 1, (2,), dtype=torch.int64, device=device)


def _no_double_backward(op_name: str):
    def backward(ctx, *grads):
        raise RuntimeError(
            f"{op_name} does not support double backward (create_graph=True through a peftcore "
            "adapter); compute higher-order gradients with peftcore.reference instead"
        )

    return backward


def refuse_double_backward(backward_op: str) -> None:
    torch.library.register_autograd(backward_op, _no_double_backward(backward_op),
                                    setup_context=lambda ctx, inputs, output: None)


# What the fake kernels check. A fake runs under torch.compile (shapes only) and as the
# Meta kernel, which the dispatcher also picks when one input is on "meta" and the
# others are not: without these checks such a call returned uninitialised memory on
# x's device. Shape checks use torch._check, so symbolic shapes stay symbolic.


def check_devices_dtypes(op: str, x: Tensor, **tensors) -> None:
    """Every given tensor (None skipped) has x's device and dtype, as the kernels require."""
    for name, t in tensors.items():
        if t is None:
            continue
        if t.device != x.device:
            raise RuntimeError(f"{op}: {name} is on {t.device} but x is on {x.device}; all inputs must be on one device")
        if t.dtype != x.dtype:
            raise RuntimeError(f"{op}: {name} has dtype {t.dtype} but x has dtype {x.dtype}; "
                               "all floating inputs must share one dtype")


def check_shape(op: str, name: str, t: Tensor, expected, desc: str) -> None:
    """t's shape is `expected` (ints or symbolic sizes); `desc` spells it, e.g. "[r, in_features]"."""
    message = lambda: f"{op}: {name} must be {desc}={list(expected)}, got {list(t.shape)}"  # noqa: E731
    torch._check(t.dim() == len(expected), message)
    for got, want in zip(t.shape, expected):
        torch._check(got == want, message)


def check_linear_input(op: str, x: Tensor, weight: Tensor, bias) -> None:
    """x [..., in], weight [out, in], bias [out] or None."""
    torch._check(x.dim() >= 1, lambda: f"{op}: x must have shape [..., in_features], got {list(x.shape)}")
    torch._check(weight.dim() == 2, lambda: f"{op}: weight must have 2 dimensions, got {list(weight.shape)}")
    torch._check(x.shape[-1] == weight.shape[1], lambda: f"{op}: x must have shape [..., in_features="
                 f"{weight.shape[1]}] to match weight {list(weight.shape)}, got {list(x.shape)}")
    if bias is not None:
        check_shape(op, "bias", bias, (weight.shape[0],), "[out_features]")
