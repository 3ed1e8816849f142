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


def assert_runs_under_autocast_with_fp32_weights(layer) -> None:
    """A fresh adapter layer (zero delta) under CPU bf16 autocast: bf16 output equal to
    the base layer's, and gradients for every trainable parameter."""
    x = torch.randn(3, layer.in_features)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
        ref = torch.nn.functional.linear(x, layer.base_layer.weight, layer.base_layer.bias)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref.float(), rtol=2e-2, atol=2e-2)
    y.float().sum().backward()
    assert all(p.grad is not None for p in layer.parameters() if p.requires_grad)


def assert_compiles_fullgraph(layer) -> None:
    """torch.compile(fullgraph=True) of an adapter layer in eval (no dropout) gives the
    eager output, and backward reaches x and every trainable parameter."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in layer.parameters():
            if p.requires_grad:
                p.normal_(0, 0.1)
    layer.eval()
    x = torch.randn(5, layer.in_features, requires_grad=True)
    ref = layer(x)
    out = torch.compile(layer, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in layer.parameters() if p.requires_grad)
