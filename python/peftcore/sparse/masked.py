"""Masked (sparse) training: only the entries of a SparseDelta's mask are trainable.

The model's masked parameters are re-parametrised as ``theta0 + scatter(values)``:
the trainable tensor is the value vector itself (nnz entries), so gradients and
optimizer state exist only for the masked entries (the memory-light form), any
optimizer works on it (peftcore's Lamb included), and no other entry can change,
whatever weight decay does: entries outside the mask are not parameters at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Union

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .delta import SparseDelta, SparseEntry


class _SparseReparam(nn.Module):
    """weight = base + scatter(indices, values); `values` is the trainable original."""

    def __init__(self, base: Tensor, indices: Tensor) -> None:
        super().__init__()
        self.register_buffer("base", base.detach().clone(), persistent=False)
        self.register_buffer("indices", indices.to(base.device), persistent=False)

    def forward(self, values: Tensor) -> Tensor:
        flat = self.base.reshape(-1).index_add(0, self.indices, values.to(self.base.dtype))
        return flat.view(self.base.shape)

    def right_inverse(self, weight: Tensor) -> list[Tensor]:
        # The starting values, theta - theta0 at the mask, in float32 whatever the
        # weight's dtype (a bf16 model trains fp32 values). As a one-element list:
        # torch refuses a single returned tensor whose dtype differs from the weight's.
        return [(weight.detach().reshape(-1)[self.indices] - self.base.reshape(-1)[self.indices]).float()]


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_name, _, attr = name.rpartition(".")
    return (model.get_submodule(module_name) if module_name else model), attr


class _ModuleSnapshot:
    """What registering parametrizations changes in a module (its class, the class's
    attributes when it is already a parametrized class, its parameter, buffer and
    submodule tables, an existing ``parametrizations`` table), to put it back as the
    same objects in the same order."""

    def __init__(self, module: nn.Module) -> None:
        self.module, self.cls = module, type(module)
        self.cls_attrs = set(vars(self.cls))
        self.tables = [(t, dict(t)) for t in (module._parameters, module._buffers, module._modules)]
        existing = module._modules.get("parametrizations")
        if existing is not None:
            self.tables.append((existing._modules, dict(existing._modules)))

    def restore(self) -> None:
        self.module.__class__ = self.cls
        for attr in set(vars(self.cls)) - self.cls_attrs:  # properties added to a parametrized class
            delattr(self.cls, attr)
        for table, saved in self.tables:
            table.clear()
            table.update(saved)


class MaskedTraining:
    """Makes only the masked entries of `model` trainable, starting from the model's
    current weights (theta0).

    ``mask``: a SparseDelta (its indices are the mask; its values are ignored) or a
    dict ``{name: sorted flat indices}``. Every other parameter is frozen. Train
    `parameters()` with any optimizer; `l1_penalty()` gives the optional L1 pull
    toward theta0 to add to the loss; `delta()` returns the trained SparseDelta;
    `merge()` writes theta0 + delta into the ordinary parameters and ends masking.
    """

    def __init__(self, model: nn.Module, mask: Union[SparseDelta, Mapping], l1: float = 0.0) -> None:
        if isinstance(mask, SparseDelta):
            mask = {n: e.indices for n, e in mask.entries.items()}
        if not isinstance(mask, Mapping):
            raise ValueError(f"mask must be a SparseDelta or a dict {{name: sorted flat indices}}, got "
                             f"{type(mask).__name__}")
        params = dict(model.named_parameters())
        unknown = [n for n in mask if n not in params]
        if unknown:
            raise ValueError(f"mask names parameters the model does not have: {unknown[:4]}")
        # Every mask is checked before the model is touched ...
        checked: dict[str, Tensor] = {}
        for name, idx in mask.items():
            p = params[name]
            try:
                idx = torch.as_tensor(idx, dtype=torch.int64)
            except (TypeError, ValueError, RuntimeError) as exc:
                raise ValueError(f"mask[{name!r}] must be flat indices (int64), got {type(idx).__name__} "
                                 f"({exc})") from exc
            SparseEntry(idx, torch.zeros(idx.numel()), tuple(p.shape), p.dtype).validate(f"mask[{name!r}]")
            checked[name] = idx
        self.model, self.l1 = model, float(l1)
        self.entries: dict[str, tuple[nn.Module, str]] = {}
        # ... and any failure while changing it is undone, leaving it as it was.
        requires_grad = [(p, p.requires_grad) for p in model.parameters()]
        snapshots = {id(m): _ModuleSnapshot(m) for m in (_owner(model, n)[0] for n in checked)}
        try:
            for p in model.parameters():
                p.requires_grad_(False)
            for name, idx in checked.items():
                p = params[name]
                module, attr = _owner(model, name)
                parametrize.register_parametrization(module, attr, _SparseReparam(p, idx), unsafe=True)
                self.entries[name] = (module, attr)
                getattr(module.parametrizations, attr).original0.requires_grad_(True)
        except BaseException:
            for snapshot in snapshots.values():
                snapshot.restore()
            for p, flag in requires_grad:
                p.requires_grad_(flag)
            self.entries = {}
            raise

    def _reparam(self, name: str) -> tuple[_SparseReparam, nn.Parameter]:
        module, attr = self.entries[name]
        plist = getattr(module.parametrizations, attr)
        return plist[0], plist.original0

    def parameters(self) -> list[nn.Parameter]:
        """The trainable value vectors, one per masked parameter."""
        return [self._reparam(n)[1] for n in self.entries]

    def l1_penalty(self) -> Tensor:
        """l1 * sum |theta - theta0| over the masked entries (0 when l1 is 0)."""
        values = self.parameters()
        if not values or self.l1 == 0.0:
            return torch.zeros((), device=values[0].device if values else "cpu")
        return self.l1 * sum(v.abs().sum() for v in values)

    def delta(self) -> SparseDelta:
        """The trained sparse fine-tuning theta - theta0 on the mask (float32 values)."""
        entries = {}
        for name in self.entries:
            reparam, values = self._reparam(name)
            entries[name] = SparseEntry(reparam.indices.clone(), values.detach().clone(),
                                        tuple(reparam.base.shape), reparam.base.dtype)
        return SparseDelta(entries)

    @torch.no_grad()
    def merge(self) -> None:
        """Turns the masked parameters back into ordinary ones holding theta0 + delta."""
        for name, (module, attr) in self.entries.items():
            parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
            # torch leaves a weight computed from several originals as a buffer when it
            # does not require grad (always, under no_grad): make it a parameter again,
            # frozen like every other parameter of the masked model.
            weight = module._buffers.pop(attr, None)
            if weight is not None:
                module.register_parameter(attr, nn.Parameter(weight, requires_grad=False))
        self.entries = {}
