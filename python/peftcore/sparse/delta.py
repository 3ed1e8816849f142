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
        order. Only names present in both state dicts with floating tensors count.
        Values are ``theta - theta0`` at the kept entries, in `value_dtype` (default:
        the parameter's dtype). Non-finite differences raise ValueError.
        """
        if (k is None) == (density is None):
            raise ValueError("from_diff needs exactly one of k or density")
        names = [n for n in theta0 if n in theta and theta0[n].is_floating_point()]
        for n in names:
            if theta0[n].shape != theta[n].shape:
                raise ValueError(f"{n}: theta0 has shape {tuple(theta0[n].shape)} but theta has "
                                 f"{tuple(theta[n].shape)}")
        if density is not None and not 0.0 <= density <= 1.0:
            raise ValueError(f"density must be in [0, 1], got {density}")

        def budget(numels: int) -> int:
            return int(round(density * numels)) if density is not None else min(int(k), numels)

        if per_parameter:
            chosen = {}
            for n in names:
                chosen.update(select_top_k({n: (theta0[n], theta[n])}, budget(theta0[n].numel())))
        else:
            pairs = {n: (theta0[n], theta[n]) for n in names}
            chosen = select_top_k(pairs, budget(sum(theta0[n].numel() for n in names)))
        entries = {}
        for n, idx in chosen.items():
            diff = theta[n].detach().flatten()[idx].to(torch.float32) - theta0[n].detach().flatten()[idx].to(torch.float32)
            entries[n] = SparseEntry(idx, diff.to(value_dtype or theta0[n].dtype), tuple(theta0[n].shape),
                                     theta0[n].dtype)
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
