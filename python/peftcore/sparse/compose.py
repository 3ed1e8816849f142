"""Adding sparse deltas into a model in place, and taking them out bit for bit."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .. import ops  # noqa: F401  (loads the library that defines torch.ops.peftcore)
from .delta import SparseDelta

_ops = torch.ops.peftcore


@dataclass
class AppliedHandle:
    """What `apply` changed: per parameter, the touched flat indices and the
    original values there (so `revert` restores the exact bits, which
    subtracting the delta would not in 16-bit dtypes)."""

    saved: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)
    active: bool = True


def _as_list(deltas) -> list[SparseDelta]:
    return [deltas] if isinstance(deltas, SparseDelta) else list(deltas)


def _missing_parameter(params: dict[str, nn.Parameter], deltas: Sequence[SparseDelta], name: str) -> ValueError:
    i = next(j for j, d in enumerate(deltas) if name in d.entries)
    near = [n for n in params if n.split(".")[-1] == name.split(".")[-1]][:3]
    return ValueError(f"delta {i}: the model has no parameter {name!r}" + (f" (similar: {near})" if near else ""))


@torch.no_grad()
def apply(model: nn.Module, deltas: Union[SparseDelta, Sequence[SparseDelta]],
          weights: Optional[Sequence[float]] = None) -> AppliedHandle:
    """Adds ``sum_i weights[i] * deltas[i]`` into `model`'s parameters in place (one
    fused scatter-add per parameter; overlapping indices add) and returns the handle
    that `revert` needs. Everything (names, shapes, index order and range) is
    checked before anything is written, so a bad delta leaves the model as it was."""
    deltas = _as_list(deltas)
    weights = [1.0] * len(deltas) if weights is None else [float(w) for w in weights]
    if len(weights) != len(deltas):
        raise ValueError(f"got {len(weights)} weights for {len(deltas)} deltas")
    params = dict(model.named_parameters())
    names = sorted({n for d in deltas for n in d.entries})
    # One pass over the parts builds the op's lists and checks names and shapes (the
    # op checks index order and range): per part a few dict lookups, no tensor
    # calls, since a slow host pays for every Python step.
    targets, indices, values, owner, part_weights = [], [], [], [], []
    for i, name in enumerate(names):
        p = params.get(name)
        if p is None:
            raise _missing_parameter(params, deltas, name)
        if not p.is_contiguous():
            raise ValueError(f"{name}: the model's parameter must be contiguous")
        device, shape = p.device, p.shape
        targets.append(p.data)
        for j, (d, w) in enumerate(zip(deltas, weights)):
            e = d.entries.get(name)
            if e is None:
                continue
            if shape != e.shape:
                raise ValueError(f"delta {j}: {name} has shape {tuple(e.shape)} but the model's "
                                 f"parameter has shape {tuple(shape)}")
            indices.append(e.indices if e.indices.device == device else e.indices.to(device))
            values.append(e.values if e.values.device == device else e.values.to(device))
            owner.append(i)
            part_weights.append(w)
    # One call for the whole model; it validates every index list before writing.
    unions, originals = _ops.sparse_compose_(targets, indices, values, owner, part_weights)
    return AppliedHandle(saved={n: (u, o) for n, u, o in zip(names, unions, originals)})


@torch.no_grad()
def revert(model: nn.Module, handle: AppliedHandle) -> None:
    """Restores the original values saved by `apply` (bit-identical)."""
    if not handle.active:
        raise RuntimeError("this sparse delta was already reverted")
    params = dict(model.named_parameters())
    names = list(handle.saved)
    _ops.sparse_revert_([params[n].data for n in names], [handle.saved[n][0] for n in names],
                        [handle.saved[n][1] for n in names])
    handle.active = False


@contextlib.contextmanager
def applied(model: nn.Module, deltas: Union[SparseDelta, Sequence[SparseDelta]],
            weights: Optional[Sequence[float]] = None) -> Iterator[AppliedHandle]:
    """``with peftcore.sparse.applied(model, [lang, task]): ...`` — applied inside, reverted after."""
    handle = apply(model, deltas, weights)
    try:
        yield handle
    finally:
        revert(model, handle)
