"""SparseDelta: per-parameter sorted flat indices and values; selection and files."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Union

import torch
from torch import Tensor

from .select import select_top_k

FORMAT = "peftcore.sparse_delta"
VERSION = "1"


def _alias_key(t: Tensor):
    """What makes two tensors the same memory: storage, offset, shape, strides and
    dtype (the object itself when the storage has no address: meta or empty)."""
    d = t.detach()
    try:
        ptr = d.untyped_storage().data_ptr() if d.numel() and d.device.type != "meta" else 0
    except (RuntimeError, NotImplementedError, TypeError):  # sparse, quantized...: no plain storage
        ptr = 0
    if not ptr:
        return ("object", id(t))
    return (d.device, ptr, d.storage_offset(), tuple(d.shape), tuple(d.stride()), d.dtype)


def _count(k) -> int:
    """`k` of from_diff as an int: a non-negative whole number (int, numpy or 0-dim
    tensor integer, or a float with no fraction), else ValueError."""
    try:
        ok = not isinstance(k, bool) and float(k).is_integer() and float(k) >= 0
    except (TypeError, ValueError, RuntimeError, OverflowError):
        ok = False
    if not ok:
        raise ValueError(f"from_diff: k must be a non-negative integer (the number of entries to "
                         f"keep), got {k!r}")
    return int(k)


def _untied(names: list[str], theta: Mapping[str, Tensor]) -> list[str]:
    """`names` less those whose tensor in `theta` is an earlier name's tensor (tied
    weights, which ``state_dict()`` lists under every name); the first name stays."""
    seen, kept = set(), []
    for n in names:
        key = _alias_key(theta[n])
        if key not in seen:
            seen.add(key)
            kept.append(n)
    return kept


@dataclass
class SparseEntry:
    """One parameter's delta: `values` at the sorted, unique, flat row-major
    `indices` of a parameter of `shape` and `dtype`."""

    indices: Tensor  # int64 [nnz]
    values: Tensor  # [nnz], the parameter's dtype or float32
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def validate(self, name: str) -> None:
        idx, val = self.indices, self.values
        if idx.dtype != torch.int64 or idx.dim() != 1:
            raise ValueError(f"{name}: indices must be a 1-D int64 tensor, got {idx.dtype} {tuple(idx.shape)}")
        if val.dim() != 1 or val.numel() != idx.numel():
            raise ValueError(f"{name}: values must be 1-D with one value per index ({idx.numel()}), "
                             f"got shape {tuple(val.shape)}")
        if not val.is_floating_point():
            raise ValueError(f"{name}: values must be floating point, got {val.dtype}")
        if idx.numel():
            lo, hi = int(idx.min()), int(idx.max())
            if lo < 0 or hi >= self.numel:
                raise ValueError(f"{name}: indices must lie in [0, {self.numel}) for shape "
                                 f"{self.shape}, got values in [{lo}, {hi}]")
            if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
                raise ValueError(f"{name}: indices must be sorted and unique (strictly increasing)")


class SparseDelta:
    """A sparse fine-tuning: for each parameter name, a `SparseEntry`.

    Build one with `SparseDelta.from_diff(theta0, theta, density=0.01)`, save it
    with `save()` (safetensors + a JSON header, written atomically), and add it to
    a model with `peftcore.sparse.apply` / `applied` (exactly revertible).
    """

    def __init__(self, entries: Mapping[str, SparseEntry]):
        self.entries = dict(entries)
        for name, entry in self.entries.items():
            entry.validate(name)

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def __getitem__(self, name: str) -> SparseEntry:
        return self.entries[name]

    @property
    def nnz(self) -> int:
        return sum(e.indices.numel() for e in self.entries.values())

    def to(self, device) -> "SparseDelta":
        return SparseDelta({n: SparseEntry(e.indices.to(device), e.values.to(device), e.shape, e.dtype)
                            for n, e in self.entries.items()})

    def __repr__(self) -> str:
        total = sum(e.numel for e in self.entries.values())
        density = self.nnz / total if total else 0.0
        return f"SparseDelta({len(self)} parameters, nnz={self.nnz}, density={density:.4%})"

    # ------------------------------------------------------------------ selection
    @classmethod
    def from_diff(
        cls,
        theta0: Mapping[str, Tensor],
        theta: Mapping[str, Tensor],
        k: Optional[int] = None,
        density: Optional[float] = None,
        per_parameter: bool = False,
        value_dtype: Optional[torch.dtype] = None,
    ) -> "SparseDelta":
        """LT-SFT mask selection: the `k` entries (or `density` of all entries) with
        the largest ``|theta - theta0|``, globally or per parameter.

        Exactly k entries are kept: all above the k-th largest magnitude, then ties
        at that magnitude in state-dict order and, within a parameter, flat index
        order. Only names present in both state dicts with floating tensors count;
        a name whose tensor in `theta` is an earlier name's tensor (tied weights,
        e.g. an output layer sharing the input embedding: ``state_dict()`` lists
        both) is dropped, keeping the first name, as ``model.named_parameters()``
        does.
        Differences are computed in float64 for float64 parameters (so that
        ``theta0 + delta`` gives back theta and tiny differences rank by their
        true size) and in float32 otherwise. Values are ``theta - theta0`` at the
        kept entries, in `value_dtype` (default: the parameter's dtype).
        `k` must be a non-negative integer, `density` a number in (0, 1].
        Non-finite differences raise ValueError.
        """
        if (k is None) == (density is None):
            raise ValueError("from_diff needs exactly one of k or density")
        if k is not None:
            k = _count(k)
        if density is not None:
            try:
                ok = not isinstance(density, bool) and 0.0 < float(density) <= 1.0
            except (TypeError, ValueError, RuntimeError, OverflowError):
                ok = False
            if not ok:
                raise ValueError(f"from_diff: density must be a number in (0, 1] (the fraction of "
                                 f"entries to keep), got {density!r}")
        names = _untied([n for n in theta0 if n in theta and theta0[n].is_floating_point()], theta)
        for n in names:
            if theta0[n].shape != theta[n].shape:
                raise ValueError(f"{n}: theta0 has shape {tuple(theta0[n].shape)} but theta has "
                                 f"{tuple(theta[n].shape)}")

        def budget(numels: int) -> int:
            return int(round(density * numels)) if density is not None else min(int(k), numels)

        if per_parameter:
            chosen = {}
            for n in names:
                chosen.update(select_top_k({n: (theta0[n], theta[n])}, budget(theta0[n].numel()),
                                           float64=True))
        else:
            pairs = {n: (theta0[n], theta[n]) for n in names}
            chosen = select_top_k(pairs, budget(sum(theta0[n].numel() for n in names)), float64=True)
        entries = {}
        for n, idx in chosen.items():
            t0, t = theta0[n].detach(), theta[n].detach()
            wide = torch.float64 in (t0.dtype, t.dtype)
            compute = torch.float64 if wide else torch.float32
            diff = t.flatten()[idx].to(compute) - t0.flatten()[idx].to(compute)
            entries[n] = SparseEntry(idx, diff.to(value_dtype or t0.dtype), tuple(t0.shape), t0.dtype)
        return cls(entries)

    # ------------------------------------------------------------------ files
    def save(self, path: Union[str, os.PathLike]) -> None:
        """Writes a safetensors file (tensors ``<name>.indices`` / ``<name>.values``)
        whose metadata holds the JSON header; atomically (temp file + rename)."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors, header = {}, {}
        for name, e in self.entries.items():
            tensors[f"{name}.indices"] = e.indices.detach().cpu().contiguous()
            tensors[f"{name}.values"] = e.values.detach().cpu().contiguous()
            header[name] = {"shape": list(e.shape), "dtype": str(e.dtype).replace("torch.", "")}
        metadata = {"format": FORMAT, "version": VERSION, "params": json.dumps(header)}
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=metadata)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: Union[str, os.PathLike], device="cpu") -> "SparseDelta":
        """Reads a file written by `save`, validating everything; raises ValueError
        (naming the file and the problem) for corrupt, truncated or mismatched files."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                metadata = f.metadata() or {}
                tensors = {key: f.get_tensor(key) for key in f.keys()}
        except (OSError, RuntimeError, ValueError, SafetensorError) as exc:
            raise ValueError(f"{path}: not a readable sparse-delta file ({exc})") from exc
        if metadata.get("format") != FORMAT:
            raise ValueError(f"{path}: not a peftcore sparse delta (format={metadata.get('format')!r})")
        if metadata.get("version") != VERSION:
            raise ValueError(f"{path}: unsupported version {metadata.get('version')!r}, expected {VERSION}")
        try:
            header = json.loads(metadata["params"])
        except (KeyError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: corrupt JSON header ({exc})") from exc
        expected = {f"{n}.{part}" for n in header for part in ("indices", "values")}
        if set(tensors) != expected:
            missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
            raise ValueError(f"{path}: tensors do not match the header (missing {missing[:4]}, "
                             f"unexpected {extra[:4]})")
        entries = {}
        for name, info in header.items():
            dtype = getattr(torch, str(info.get("dtype")), None)
            if not isinstance(dtype, torch.dtype):
                raise ValueError(f"{path}: {name} has unknown dtype {info.get('dtype')!r}")
            entries[name] = SparseEntry(tensors[f"{name}.indices"].to(device), tensors[f"{name}.values"].to(device),
                                        tuple(int(s) for s in info["shape"]), dtype)
        try:
            return cls(entries)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
