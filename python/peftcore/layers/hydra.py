"""HydraLinear: a parallel and a sequential low-rank branch around a frozen nn.Linear."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .. import ops
from .low_rank import as_compute, low_rank_delta


class HydraLinear(nn.Module):
    """Hydra (multi-head low-rank adaptation) on an existing ``nn.Linear``:

    ``h = base(x)``; ``y = h + s_p B_p A_p drop(x) + s_s B_s A_s drop(h)`` with
    ``A_p [r_p, in]``, ``B_p [out, r_p]``, ``A_s [r_s, out]``, ``B_s [out, r_s]``,
    ``s = alpha / r`` per branch; r = 0 turns a branch off. A's are kaiming-uniform,
    B's zero, so a fresh layer equals its base. One fused op computes it all.

    Backward needs ``T_s^T h`` for the sequential branch. Without dropout the op
    rewrites it as ``(T_s^T x) W^T + colsum(T_s) b^T`` and saves no h at all (and the
    output reuses h's buffer); in float32/float64 with many rows both branches fold into
    the weight (``W + s_p B_p A_p + s_s B_s A_s W``, the merge), so forward and the
    input gradient are single GEMMs. With dropout the mask sits on h, so h is saved: cheaper
    than recomputing it, which would add one N x in x out GEMM, a third more work than
    the base layer's forward + backward.
    """

    def __init__(self, base: nn.Linear, r_parallel: int = 8, r_sequential: int = 8,
                 alpha_parallel: float = 8.0, alpha_sequential: float = 8.0, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"HydraLinear wraps an nn.Linear, got {type(base).__name__}")
        for name, r in (("r_parallel", r_parallel), ("r_sequential", r_sequential)):
            if not isinstance(r, int) or isinstance(r, bool) or r < 0:
                raise ValueError(f"{name} must be a non-negative int, got {r!r}")
        if r_parallel == 0 and r_sequential == 0:
            raise ValueError("at least one of r_parallel and r_sequential must be positive")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.base_layer = base.requires_grad_(False)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r_parallel, self.r_sequential = r_parallel, r_sequential
        self.scale_parallel = alpha_parallel / r_parallel if r_parallel else 0.0
        self.scale_sequential = alpha_sequential / r_sequential if r_sequential else 0.0
        self.dropout_p = float(dropout)
        f = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.A_p = nn.Parameter(torch.empty(r_parallel, self.in_features, **f)) if r_parallel else None
        self.B_p = nn.Parameter(torch.zeros(self.out_features, r_parallel, **f)) if r_parallel else None
        self.A_s = nn.Parameter(torch.empty(r_sequential, self.out_features, **f)) if r_sequential else None
        self.B_s = nn.Parameter(torch.zeros(self.out_features, r_sequential, **f)) if r_sequential else None
        for a in (self.A_p, self.A_s):
            if a is not None:
                nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.merged = False
        self.active = True  # False: the layer runs its base alone (peftcore.set_adapter)

    def low_rank(self):
        """(A_p, s_p B_p, p) when there is no sequential branch (then Hydra is LoRA on x);
        None otherwise: the sequential branch reads the base output."""
        if self.A_s is not None:
            return None
        return self.A_p, self.B_p * self.scale_parallel, self.dropout_p

    def adapter_delta(self, x: Tensor, base_out: Tensor) -> Tensor:
        """What the adapter adds to ``h = base(x)`` (plain torch ops)."""
        out = 0
        if self.A_p is not None:
            out = low_rank_delta(x, self.A_p, self.B_p * self.scale_parallel, self.dropout_p, self.training)
        if self.A_s is not None:
            out = out + low_rank_delta(base_out, self.A_s, self.B_s * self.scale_sequential, self.dropout_p,
                                       self.training)
        return out

    def forward(self, x: Tensor) -> Tensor:
        if self.merged or not self.active:
            return self.base_layer(x)
        w = self.base_layer.weight
        return ops.hydra_linear(x, w, self.base_layer.bias, as_compute(self.A_p, w), as_compute(self.B_p, w),
                                as_compute(self.A_s, w), as_compute(self.B_s, w), self.scale_parallel, self.scale_sequential, self.dropout_p,
                                self.training)

    @torch.no_grad()
    def merge(self) -> None:
        """W' = W + s_p B_p A_p + s_s B_s A_s W and b' = b + s_s B_s A_s b, in float64."""
        if self.merged:
            return
        self._check_invertible()
        w, b = self.base_layer.weight, self.base_layer.bias
        S = self._sequential_map()
        new_w = w.double() + (S @ w.double() if S is not None else 0)
        if self.A_p is not None:
            new_w = new_w + self.scale_parallel * (self.B_p.double() @ self.A_p.double())
        w.copy_(new_w)
        if b is not None and S is not None:
            b.copy_(b.double() + S @ b.double())
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Inverts merge: W = (I + S)^-1 (W' - s_p B_p A_p), with S = s_s B_s A_s and
        (I + S)^-1 = I - s_s B_s (I_r + s_s A_s B_s)^-1 A_s (Woodbury: an r_s x r_s
        solve), all in float64; exact to the base dtype's rounding for well-conditioned
        I + S."""
        if not self.merged:
            return
        w, b = self.base_layer.weight, self.base_layer.bias
        new_w = w.double()
        if self.A_p is not None:
            new_w = new_w - self.scale_parallel * (self.B_p.double() @ self.A_p.double())
        if self.A_s is not None:
            new_w = self._apply_inverse(new_w)
            if b is not None:
                b.copy_(self._apply_inverse(b.double().unsqueeze(1)).squeeze(1))
        w.copy_(new_w)
        self.merged = False

    def _check_invertible(self) -> None:
        """Refuses a merge that unmerge could not undo: I + s_s B_s A_s singular (or
        nearly: its r_s x r_s Woodbury core I + s_s A_s B_s would lose every digit)."""
        if self.A_s is None:
            return
        cond = torch.linalg.cond(self._woodbury_core()).item()
        if not cond < 1e12:
            raise ValueError(f"cannot merge this Hydra layer: its sequential map I + s_s B_s A_s is singular "
                             f"(condition number of I + s_s A_s B_s: {cond:.3g}), so unmerge could not restore W; "
                             "run it unmerged")

    def _sequential_map(self):
        if self.A_s is None:
            return None
        return self.scale_sequential * (self.B_s.double() @ self.A_s.double())

    def _woodbury_core(self) -> Tensor:
        """I_r + s_s A_s B_s (float64, r_s x r_s): what unmerge solves with, and what
        merge checks first."""
        A, B = self.A_s.double(), self.B_s.double()
        return torch.eye(self.r_sequential, dtype=torch.float64, device=A.device) + self.scale_sequential * (A @ B)

    def _apply_inverse(self, m: Tensor) -> Tensor:
        s, A, B = self.scale_sequential, self.A_s.double(), self.B_s.double()
        return m - s * (B @ torch.linalg.solve(self._woodbury_core(), A @ m))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, r_parallel={self.r_parallel}, "
                f"r_sequential={self.r_sequential}, dropout={self.dropout_p}, merged={self.merged}")
