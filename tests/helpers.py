"""Shared test helpers: tolerance rules measured against a float64 oracle."""

from __future__ import annotations

import torch

LOW_PRECISION = (torch.float16, torch.bfloat16)


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.numel() == 0:
        return 0.0
    return (a.double() - b.double()).abs().max().item()


def assert_as_accurate_as_torch(ours, torch_same_dtype, ref64, what: str, slack: float = 2.0):
    """Our error vs the float64 oracle is at most `slack` x the error of PyTorch's own
    math in the same dtype (plus a tiny floor for exact cases)."""
    err_ours = max_abs(ours, ref64)
    err_torch = max_abs(torch_same_dtype, ref64)
    scale = ref64.abs().max().item() if ref64.numel() else 0.0
    floor = 1e-6 * max(scale, 1.0) if ours.dtype == torch.float32 else 4e-3 * max(scale, 1.0)
    assert err_ours <= slack * err_torch + floor, (
        f"{what}: error {err_ours:.3e} vs torch's {err_torch:.3e} in {ours.dtype} (scale {scale:.3e})"
    )


def assert_rel_close(a: torch.Tensor, b: torch.Tensor, rtol: float, what: str):
    """max|a - b| <= rtol * max|b| (a relative error over the whole tensor)."""
    scale = b.double().abs().max().item() if b.numel() else 0.0
    err = max_abs(a, b)
    assert err <= rtol * max(scale, 1e-30) or err == 0.0, f"{what}: {err:.3e} > {rtol} x {scale:.3e}"


def assert_same_forward_backward(ours, theirs, x, param_pairs, rtol: float = 1e-5):
    """Same output, same grad of x and of each (ours, theirs) parameter pair."""
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y1, y2 = ours(x1), theirs(x2)
    assert_rel_close(y1, y2, rtol, "output")
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    assert_rel_close(x1.grad, x2.grad, rtol, "grad x")
    for i, (a, b) in enumerate(param_pairs):
        assert_rel_close(a.grad, b.grad, rtol, f"grad of parameter pair {i}")
    return y1.detach()
