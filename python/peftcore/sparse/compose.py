"""Adding sparse deltas into a model in place, and taking them out bit for bit."""

from __future__ import annotations

import contextlib
import itertools
import weakref
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.utils.weak import WeakIdKeyDictionary

from .. import ops  # noqa: F401  (loads the library that defines torch.ops.peftcore)
from .delta import SparseDelta

_ops = torch.ops.peftcore

# Per parameter, the handles applied to it and not reverted, in order, for the
# last-in first-out rule of `revert`. Weak on both sides: a parameter that goes
# takes its list along, and a handle nobody keeps can never be reverted, so it no
# longer constrains the order.
_ACTIVE: WeakIdKeyDictionary = WeakIdKeyDictionary()
_SEQUENCE = itertools.count()


@dataclass
class AppliedHandle:
    """What `apply` changed: per parameter, the touched flat indices and the
    original values there (so `revert` restores the exact bits, which
    subtracting the delta would not in 16-bit dtypes).

    It also records what it applied to, so that `revert` can refuse to write the
    saved values anywhere else: the model (weakly), each parameter object (weakly)
    with its dtype, shape and device, its place in each parameter's stack of applied
    deltas, and (``apply(..., verify=True)``) the values `apply` wrote at the touched
    entries. A handle built by hand without these is reverted unchecked."""

    saved: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)
    active: bool = True
    model: Optional[weakref.ref] = field(default=None, repr=False)
    params: dict[str, tuple[weakref.ref, torch.dtype, torch.Size, torch.device, int]] = field(
        default_factory=dict, repr=False)  # (parameter, dtype, shape, device, data_ptr)
    written: dict[str, Tensor] = field(default_factory=dict, repr=False)  # as integers: exact bits
    stacks: dict[str, list] = field(default_factory=dict, repr=False)  # the parameters' _ACTIVE lists
    sequence: int = field(default_factory=lambda: next(_SEQUENCE), repr=False)


def _as_list(deltas) -> list[SparseDelta]:
    if isinstance(deltas, SparseDelta):
        return [deltas]
    try:
        deltas = list(deltas)
    except TypeError:
        raise ValueError(f"deltas must be a SparseDelta or a sequence of them, got "
                         f"{type(deltas).__name__}") from None
    if not deltas:
        raise ValueError("deltas is empty: expected a SparseDelta or a non-empty sequence of them")
    for i, d in enumerate(deltas):
        if not isinstance(d, SparseDelta):
            raise ValueError(f"deltas[{i}] must be a SparseDelta, got {type(d).__name__}")
    return deltas


def _missing_parameter(model: nn.Module, params: dict[str, nn.Parameter], deltas: Sequence[SparseDelta],
                       name: str) -> ValueError:
    i = next(j for j, d in enumerate(deltas) if name in d.entries)
    alias = dict(model.named_parameters(remove_duplicate=False)).get(name)
    if alias is not None:
        first = next(n for n, p in params.items() if p is alias)
        return ValueError(f"delta {i}: {name!r} is tied to {first!r} (one shared parameter, which "
                          f"model.named_parameters() lists as {first!r}): name it once, as {first!r}")
    near = [n for n in params if n.split(".")[-1] == name.split(".")[-1]][:3]
    return ValueError(f"delta {i}: the model has no parameter {name!r}" + (f" (similar: {near})" if near else ""))


@torch.no_grad()
def apply(model: nn.Module, deltas: Union[SparseDelta, Sequence[SparseDelta]],
          weights: Optional[Sequence[float]] = None, verify: bool = False) -> AppliedHandle:
    """Adds ``sum_i weights[i] * deltas[i]`` into `model`'s parameters in place (one
    fused scatter-add per parameter; overlapping indices add) and returns the handle
    that `revert` needs. Everything (names, shapes, index order and range) is
    checked before anything is written, so a bad delta leaves the model as it was.
    Deltas with no entries at all apply nothing (the handle's revert does nothing).
    `verify=True` also keeps what was written at the touched entries (nnz values, one
    gather more), so that `revert` refuses when something else changed them since."""
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
            raise _missing_parameter(model, params, deltas, name)
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
    handle = AppliedHandle(model=weakref.ref(model))
    if not names:  # the op cannot dispatch on empty lists; nothing to apply
        return handle
    # One call for the whole model; it validates every index list before writing.
    unions, originals = _ops.sparse_compose_(targets, indices, values, owner, part_weights)
    handle.saved = {n: (u, o) for n, u, o in zip(names, unions, originals)}
    # What the op wrote at the touched entries, read back (bit for bit what is there).
    for n, target, union in zip(names, targets, unions):
        p = params[n]
        handle.params[n] = (weakref.ref(p), p.dtype, p.shape, p.device, p.data_ptr())
        if union.numel() == 0:
            continue
        if verify:
            handle.written[n] = _bits(target.view(-1).index_select(0, union))
        stack = _ACTIVE.setdefault(p, [])
        stack[:] = [(r, m) for r, m in stack if r() is not None and r().active]  # drop dead entries
        stack.append((weakref.ref(handle), n))
        handle.stacks[n] = stack
    return handle


_INTS = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}


def _bits(t: Tensor) -> Tensor:
    """A fresh 1-D tensor's bytes as the widest integers that divide them (bitwise
    equality, NaN included; wide integers compare fastest on the CPU)."""
    nbytes = t.numel() * t.element_size()
    return t.view(_INTS[next(s for s in _INTS if nbytes % s == 0)])


def _changed_entries(params: dict[str, nn.Parameter], handle: AppliedHandle, names: list[str]) -> None:
    """Raises ValueError naming the first parameter among `names` whose touched
    entries no longer hold what apply wrote."""
    for n in names:
        now, then = params[n].view(-1).index_select(0, handle.saved[n][0]), handle.written[n]
        if not torch.equal(_bits(now), then):
            size = now.element_size()
            changed = int((now.view(torch.uint8) != then.view(torch.uint8)).view(-1, size).any(1).sum())
            raise ValueError(f"revert: {n}: {changed} of the {now.numel()} entries this delta wrote were "
                             f"changed since (by another apply or revert, a training step, a load...), so "
                             f"the values it saved are stale; revert deltas last-in first-out and before "
                             f"changing the weights")


def _check_revert(model: nn.Module, handle: AppliedHandle, params: dict[str, nn.Parameter]) -> None:
    """Raises ValueError, before anything is written, when reverting `handle` would not
    give back the state before its `apply` (see `revert`)."""
    names = list(handle.saved)
    for n in names:
        if n not in params:
            raise ValueError(f"revert: the model has no parameter {n!r}, which this delta was applied to")
    if handle.model is None:  # a handle built by hand: nothing recorded to check against
        return
    if handle.model() is not model:
        raise ValueError(f"revert: this handle was applied to another model than the given "
                         f"{type(model).__name__} (a handle reverts only the model it was applied to)")
    for n in names:
        ref, dtype, shape, device, data_ptr = handle.params[n]
        p = params[n]
        if ref() is not p:
            raise ValueError(f"revert: {n} is not the parameter this delta was applied to (it was "
                             f"replaced since): refusing to write its saved values into it")
        if (p.dtype, p.shape, p.device) != (dtype, shape, device):
            raise ValueError(f"revert: {n} is {p.dtype} {tuple(p.shape)} on {p.device} but was {dtype} "
                             f"{tuple(shape)} on {device} when this delta was applied")
        if p.data_ptr() != data_ptr:
            raise ValueError(f"revert: {n} holds other memory than when this delta was applied (its data was "
                             f"replaced, or it moved and back): refusing to write its saved values into it")
        if not p.is_contiguous():
            raise ValueError(f"revert: {n}: the model's parameter must be contiguous")
    # Last in, first out: a later delta that is still applied and shares entries.
    for n, stack in handle.stacks.items():
        if len(stack) < 2:
            continue
        union = handle.saved[n][0]
        for ref, other_name in stack:
            other = ref()
            if other is None or other is handle or not other.active or other.sequence < handle.sequence:
                continue
            if bool(torch.isin(union, other.saved[other_name][0]).any()):
                raise ValueError(f"revert: {n}: a delta applied after this one, and not reverted, changed "
                                 f"the same entries; revert it first (deltas sharing entries are "
                                 f"reverted last-in first-out)")
    # The touched entries must still hold what apply wrote: on the CPU one compare per
    # parameter; elsewhere one per device (a single host read).
    by_device: dict[torch.device, list[str]] = {}
    for n in names:
        if n in handle.written:
            by_device.setdefault(handle.params[n][3], []).append(n)
    for device, group in by_device.items():
        if device.type == "cpu":
            _changed_entries(params, handle, group)
            continue
        now = torch.cat([params[n].view(-1).index_select(0, handle.saved[n][0]).view(torch.uint8)
                         for n in group])
        if not torch.equal(now, torch.cat([handle.written[n].view(torch.uint8) for n in group])):
            _changed_entries(params, handle, group)


@torch.no_grad()
def revert(model: nn.Module, handle: AppliedHandle) -> None:
    """Restores the original values saved by `apply` (bit-identical).

    Refuses (ValueError naming the parameter, nothing written) when that would not
    give back the model as it was before `apply`: `model` is not the model the
    handle was applied to, a parameter was replaced (another object, dtype, shape,
    device or memory), a delta applied later and still applied shares entries with this
    one (deltas sharing entries are reverted last-in first-out), or the touched
    entries no longer hold what `apply` wrote (changed by another apply or revert,
    an optimizer step, a load...: checked for handles made by ``apply(...,
    verify=True)``). Entries this delta did not touch may change freely.

    Cost on top of the restoring scatter: a few dict lookups and weak references per
    parameter; the order check costs nothing unless another applied handle touches
    the same parameter (then one isin of the two index lists). With verify, one
    gather of the touched entries compared bitwise with what apply wrote (on a GPU
    one host read per device)."""
    if not handle.active:
        raise RuntimeError("this sparse delta was already reverted")
    params = dict(model.named_parameters())
    _check_revert(model, handle, params)
    names = list(handle.saved)
    if names:
        _ops.sparse_revert_([params[n].data for n in names], [handle.saved[n][0] for n in names],
                            [handle.saved[n][1] for n in names])
    handle.active = False
    for stack in handle.stacks.values():  # (an empty list stays until its parameter goes)
        stack[:] = [(r, m) for r, m in stack if r() is not None and r().active]


@contextlib.contextmanager
def applied(model: nn.Module, deltas: Union[SparseDelta, Sequence[SparseDelta]],
            weights: Optional[Sequence[float]] = None, verify: bool = False) -> Iterator[AppliedHandle]:
    """``with peftcore.sparse.applied(model, [lang, task]): ...`` — applied inside, reverted after."""
    handle = apply(model, deltas, weights, verify)
    try:
        yield handle
    finally:
        revert(model, handle)
