"""Reading composable-sft's `pytorch_diff.bin` (Ansell et al.'s reference code).

That file is a torch pickle ``{'diffs': {name: {'size', 'index_steps', 'values'}},
'abs': {name: tensor}}``. Indices there are flat **column-major** positions (the
first dimension varies fastest), sorted, and delta-encoded: ``index_steps[0]`` is
absolute and each later entry is the step from the previous index. peftcore
stores flat **row-major** positions (the last dimension fastest, like
``tensor.flatten()``), so each index is unravelled in column-major order,
re-ravelled in row-major order, and the entries are re-sorted with their values.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Union

import torch
from torch import Tensor

from .delta import SparseDelta, SparseEntry


def column_major_to_row_major(indices: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Flat column-major positions in a tensor of `shape` -> flat row-major positions."""
    rest = indices.clone()
    coords = []
    for size in shape:  # first dimension fastest
        coords.append(rest % size)
        rest = rest // size
    flat = torch.zeros_like(indices)
    for size, c in zip(shape, coords):  # last dimension fastest
        flat = flat * size + c
    return flat


def _diff_entry(path, name: str, diff) -> SparseEntry:
    """One ``diffs`` item as a SparseEntry; ValueError naming the file, the parameter
    and what is wrong for anything malformed."""
    where = f"{path}: diffs[{name!r}]"
    if not isinstance(diff, Mapping):
        raise ValueError(f"{where} must be a dict with 'size', 'index_steps' and 'values', got "
                         f"{type(diff).__name__}")
    missing = [key for key in ("size", "index_steps", "values") if key not in diff]
    if missing:
        raise ValueError(f"{where} lacks {missing} (expected 'size', 'index_steps' and 'values')")
    try:
        shape = tuple(int(s) for s in diff["size"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}['size'] must be a sequence of integers, got {diff['size']!r}") from exc
    if any(s < 0 for s in shape):
        raise ValueError(f"{where}['size'] must hold non-negative sizes, got {shape}")
    steps, values = diff["index_steps"], diff["values"]
    try:  # composable-sft writes a list of ints; a tensor of whole numbers is fine too
        steps = torch.as_tensor(steps)
        whole = not steps.is_complex() and steps.dtype != torch.bool and (
            not steps.is_floating_point() or bool((torch.isfinite(steps) & (steps == steps.round())).all()))
    except (TypeError, ValueError, RuntimeError):
        whole = False
    if not whole or steps.dim() != 1:
        raise ValueError(f"{where}['index_steps'] must be a 1-D list or tensor of integers, got "
                         f"{_describe(diff['index_steps'])}")
    if not isinstance(values, Tensor) or not values.is_floating_point():
        raise ValueError(f"{where}['values'] must be a floating-point tensor, got {_describe(values)}")
    if values.numel() != steps.numel():
        raise ValueError(f"{where} has {steps.numel()} index steps but {values.numel()} values "
                         f"(expected one value per index)")
    steps = steps.to(torch.int64)
    if (steps[1:] <= 0).any() or (steps.numel() and steps[0] < 0):
        raise ValueError(f"{path}: {name} has non-increasing column-major indices")
    col_major = torch.cumsum(steps, 0)
    numel = 1
    for s in shape:
        numel *= s
    if col_major.numel() and int(col_major[-1]) >= numel:
        raise ValueError(f"{path}: {name} has indices beyond its size {shape}")
    row_major = column_major_to_row_major(col_major, shape)
    order = torch.argsort(row_major)
    return SparseEntry(row_major[order], values.flatten()[order], shape, values.dtype)


def _describe(x) -> str:
    if isinstance(x, Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    text = repr(x)
    return f"{type(x).__name__} {text[:60] + '...' if len(text) > 60 else text}"


def from_composable_sft(path: Union[str, os.PathLike]) -> tuple[SparseDelta, dict[str, Tensor]]:
    """Loads a composable-sft diff file: the sparse part as a SparseDelta and the
    dense ``abs`` tensors (which replace whole parameters, e.g. a head) as a dict.
    A malformed file raises ValueError naming the file and what is wrong."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for bad pickles
        raise ValueError(f"{path}: not a readable composable-sft diff file ({exc})") from exc
    if not isinstance(data, dict) or "diffs" not in data:
        raise ValueError(f"{path}: expected a dict with a 'diffs' entry")
    if not isinstance(data["diffs"], Mapping):
        raise ValueError(f"{path}: 'diffs' must be a dict {{name: diff}}, got {type(data['diffs']).__name__}")
    entries = {name: _diff_entry(path, name, diff) for name, diff in data["diffs"].items()}
    dense_in = data.get("abs", {})
    if not isinstance(dense_in, Mapping):
        raise ValueError(f"{path}: 'abs' must be a dict {{name: tensor}}, got {type(dense_in).__name__}")
    bad = [name for name, t in dense_in.items() if not isinstance(t, Tensor)]
    if bad:
        raise ValueError(f"{path}: 'abs' must hold tensors, but {bad[:4]} are not")
    dense = {name: t for name, t in dense_in.items()}
    try:
        return SparseDelta(entries), dense
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
