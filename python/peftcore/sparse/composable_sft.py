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


def from_composable_sft(path: Union[str, os.PathLike]) -> tuple[SparseDelta, dict[str, Tensor]]:
    """Loads a composable-sft diff file: the sparse part as a SparseDelta and the
    dense ``abs`` tensors (which replace whole parameters, e.g. a head) as a dict."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for bad pickles
        raise ValueError(f"{path}: not a readable composable-sft diff file ({exc})") from exc
    if not isinstance(data, dict) or "diffs" not in data:
        raise ValueError(f"{path}: expected a dict with a 'diffs' entry")
    entries = {}
    for name, diff in data["diffs"].items():
        try:
            shape = tuple(int(s) for s in diff["size"])
            steps, values = diff["index_steps"].to(torch.int64), diff["values"]
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{path}: {name} lacks size/index_steps/values ({exc})") from exc
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
        entries[name] = SparseEntry(row_major[order], values.flatten()[order], shape, values.dtype)
    dense = {name: t for name, t in data.get("abs", {}).items()}
    return SparseDelta(entries), dense
