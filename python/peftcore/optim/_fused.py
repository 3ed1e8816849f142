"""What Lamb and Lars share: per-device tensor lists, master weights, GradScaler hooks,
and the checks on hyper-parameters, parameter groups and loaded state."""

from __future__ import annotations

import operator
from collections import defaultdict
from typing import Optional

import torch
from torch import Tensor
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from .. import ops  # noqa: F401  (registers the fake kernels)

LOW_PRECISION = (torch.float16, torch.bfloat16)

# Master refresh (see _refresh_masters): 16-bit params up to _BUCKET_TENSOR elements are
# compared in buckets of up to _BUCKET_ELEMENTS elements (a handful of launches per
# bucket, temporaries of about 9 bytes per element); larger ones one by one (three
# launches each, no copy of the whole tensor).
_BUCKET_TENSOR = 1 << 20
_BUCKET_ELEMENTS = 1 << 22


def as_number(value, arg: str):
    """Hyper-parameter `arg` as a Python number (a one-element tensor is read once, at
    construction or load; never inside step())."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"Invalid {arg}: expected a number or a one-element tensor, got a tensor of "
                             f"shape {tuple(value.shape)}")
        return value.item()
    return value


def check_nonnegative(value, name: str, arg: str, where: str) -> None:
    """torch.optim's "Invalid <name>: <value>" for a value that is not >= 0 (NaN included)."""
    if not as_number(value, arg) >= 0.0:
        raise ValueError(f"Invalid {name}: {value}{where} ({arg} must be a number >= 0)")


class FusedOptimizer(torch.optim.Optimizer):
    """Base of the fused optimizers.

    GradScaler protocol (as torch's fused Adam): with ``_step_supports_amp_scaling``
    the scaler sets ``self.grad_scale`` (the loss scale, or None once unscaled) and
    ``self.found_inf`` before calling ``step()``; the kernels divide gradients by
    the scale and skip the whole step on device when found_inf is non-zero, so
    ``step()`` never synchronises with the host.

    Master weights: before each step the float32 master of a 16-bit parameter takes the
    parameter's value wherever the two disagree (``p != master.to(p.dtype)``), so an
    in-place change of the parameter between steps (a checkpoint restore, a sparse
    delta, a manual fix) is kept rather than overwritten. The comparison runs on the
    device, without a host synchronisation (and is captured by a CUDA graph): about six
    operations per bucket of small tensors, three per large tensor (_refresh_masters).

    Non-contiguous parameters are stepped through a contiguous copy that is written
    back after the kernel (two extra copies per such parameter and step).

    Launch plans (the kernels' tensor lists) are cached per set of params with
    gradients and rebuilt when the optimizer's state for them changes
    (``opt.state.clear()``, a replaced state tensor): an identity check on the host per
    step, no device work.
    """

    _step_supports_amp_scaling = True
    _moment_keys: tuple[str, ...] = ()  # the per-parameter state tensors the kernels use
    _uses_step = False  # whether the kernels take a step counter (state key "step")

    def __init__(self, params, defaults: dict, master_weights: bool) -> None:
        self._check_hparams(defaults)
        # The hyper-parameters a loaded group must carry (torch adds keys of its own to defaults).
        self._hparam_keys = tuple(defaults)
        super().__init__(params, defaults)
        self.master_weights = master_weights
        self._forget_plans()

    @classmethod
    def _check_hparams(cls, group: dict, where: str = "") -> None:
        """Raises ValueError for an invalid hyper-parameter of `group` (a full group dict)."""
        raise NotImplementedError

    def _forget_plans(self) -> None:
        # Kept off the param groups, so that state_dict() never carries them.
        self._plans: dict = {}  # (group id, device, state keys, param ids) -> launch batches
        self._scalars: dict = {}  # (group id, key, device) -> float32 tensor

    # -- parameter groups ------------------------------------------------------------------
    def add_param_group(self, param_group: dict) -> None:
        """torch's add_param_group, refusing a parameter listed twice (in this group or
        in another: the fused kernels would update it twice per step, from two threads)
        and invalid hyper-parameters."""
        if isinstance(param_group, dict) and "params" in param_group:
            params = param_group["params"]
            if isinstance(params, Tensor):
                params = param_group["params"] = [params]
            elif not isinstance(params, set):  # torch refuses sets with a TypeError
                params = param_group["params"] = list(params)
                self._check_no_duplicates(params)
                self._check_hparams({**self.defaults, **param_group},
                                    f" in parameter group {len(self.param_groups)}")
        super().add_param_group(param_group)
        if hasattr(self, "_plans"):
            self._forget_plans()

    def _check_no_duplicates(self, params: list) -> None:
        name = type(self).__name__
        group_index = len(self.param_groups)

        def describe(entry, pos: int) -> str:
            if isinstance(entry, tuple) and len(entry) == 2:
                return f"'{entry[0]}' (position {pos}, shape {tuple(entry[1].shape)})"
            shape = tuple(entry.shape) if isinstance(entry, Tensor) else type(entry).__name__
            return f"at position {pos} (shape {shape})"

        tensor = lambda e: e[1] if isinstance(e, tuple) and len(e) == 2 else e  # noqa: E731
        seen: dict[int, int] = {}
        for pos, entry in enumerate(params):
            first = seen.setdefault(id(tensor(entry)), pos)
            if first != pos:
                raise ValueError(
                    f"{name}: parameter {describe(entry, pos)} of parameter group {group_index} is the "
                    f"same tensor as the one at position {first} of that group; list each parameter "
                    "once (the optimizer would update it twice per step)")
        for g, group in enumerate(self.param_groups):
            for pos, p in enumerate(group["params"]):
                if id(p) in seen:
                    new_pos = seen[id(p)]
                    raise ValueError(
                        f"{name}: parameter {describe(params[new_pos], new_pos)} of parameter group "
                        f"{group_index} is already in parameter group {g} (position {pos}); a parameter "
                        "may belong to one group only")

    # -- state_dict ------------------------------------------------------------------------
    def load_state_dict(self, state_dict: dict) -> None:
        """torch's loader, then checks: every loaded group must carry this optimizer's
        hyper-parameters (another optimizer's state_dict is refused with a ValueError
        naming what is missing) with valid values, and every state tensor the kernels use
        must have its parameter's shape and a floating dtype. On an error nothing changes.

        torch's loader casts every state tensor to its parameter's dtype; the moments and
        master weights of 16-bit parameters must stay float32, so they are restored from
        the checkpoint with their own dtype (on the param's device), then cast to the
        dtype the kernels need (float32, or float64 for float64 parameters). The optimizer
        owns copies of the loaded tensors, the step counter included."""
        saved = state_dict["state"]
        ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        old_state, old_groups = self.state, self.param_groups
        super().load_state_dict(state_dict)
        self._forget_plans()  # new group dicts and new state tensors
        try:
            name = type(self).__name__
            for g, group in enumerate(self.param_groups):
                missing = [k for k in self._hparam_keys if k not in group]
                if missing:
                    raise ValueError(
                        f"{name}.load_state_dict: the loaded param_groups[{g}] lacks the {name} "
                        f"hyper-parameter(s) {', '.join(map(repr, missing))}; is this another optimizer's "
                        f"state_dict? Expected the keys {sorted(self._hparam_keys)}")
                self._check_hparams(group, f" in the loaded param_groups[{g}]")
            steps: dict[int, Tensor] = {}
            for pid, p in zip(ids, params):
                for key, value in saved.get(pid, {}).items():
                    if not isinstance(value, Tensor):
                        continue
                    if key != "step":
                        self.state[p][key] = value.to(device=p.device, copy=True)
                    else:  # a copy too (torch keeps the loaded tensor, which the step would then
                        # advance in the caller's dict), shared where the loaded counters are
                        if id(value) not in steps:
                            steps[id(value)] = value.to(device=p.device, copy=True)
                        self.state[p][key] = steps[id(value)]
            for index, p in enumerate(params):
                if p in self.state:
                    self._check_state(p, index)
        except Exception:
            self.state, self.param_groups = old_state, old_groups
            self._forget_plans()
            raise

    def _state_keys_used(self, p: Tensor) -> tuple[str, ...]:
        keys = self._moment_keys
        if self.master_weights and p.dtype in LOW_PRECISION:
            keys = keys + ("master",)
        return keys + (("step",) if self._uses_step else ())

    def _check_state(self, p: Tensor, index: int) -> None:
        """Validates (and normalises in place) the state of `p` that the kernels will use:
        moments and master weights must have p's shape and a floating dtype (cast to the
        kernels' dtype, moved to p's device, made contiguous); a step counter must have one
        element. A None moment counts as absent (torch's SGD stores momentum_buffer=None)."""
        state = self.state[p]
        name = type(self).__name__
        for key in self._state_keys_used(p):
            if key not in state:
                continue
            value = state[key]
            what = f"{name}: the state of parameter {index} (shape {tuple(p.shape)}) has '{key}'"
            if key == "step":
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    state[key] = torch.tensor(float(value), dtype=torch.float32, device=p.device)
                elif not isinstance(value, Tensor) or value.numel() != 1:
                    found = f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
                    raise ValueError(f"{what} of {found}; expected a step count (a number or a one-element tensor)")
                continue
            if value is None:
                del state[key]
                continue
            if not isinstance(value, Tensor):
                raise ValueError(f"{what} of type {type(value).__name__}; expected a tensor of shape {tuple(p.shape)}")
            if value.shape != p.shape:
                raise ValueError(f"{what} of shape {tuple(value.shape)}; expected shape {tuple(p.shape)} "
                                 "(the parameter's shape)")
            want = torch.float32 if key == "master" or p.dtype != torch.float64 else torch.float64
            if not value.dtype.is_floating_point:
                raise ValueError(f"{what} of dtype {value.dtype}; expected a floating dtype (used as {want})")
            if value.dtype != want or value.device != p.device or not value.is_contiguous():
                state[key] = value.to(device=p.device, dtype=want).contiguous()

    # -- per-step inputs ---------------------------------------------------------------
    @staticmethod
    def _run_closure(closure):
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()

    @staticmethod
    def _adapts(group: dict) -> bool:
        """A group's layer-wise adaptation: its `adapt` key, else (as timm) when
        weight_decay != 0 or always_adapt."""
        if group["adapt"] is not None:
            return bool(group["adapt"])
        return group["weight_decay"] != 0 or group["always_adapt"]

    def _amp_inputs(self, device: torch.device) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """(loss scale or None, found_inf or None) on `device`, from a GradScaler if present."""
        scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        if scale is not None:
            scale = scale.to(device=device, dtype=torch.float32, non_blocking=True)
        if found_inf is not None:
            found_inf = found_inf.to(device=device, dtype=torch.float32, non_blocking=True)
        return scale, found_inf

    def _scalar(self, group: dict, key: str, device: torch.device) -> Tensor:
        """group[key] as a float32 tensor on `device`, cached per group and refreshed in place."""
        value = group[key]
        if isinstance(value, Tensor):
            return value.to(device=device, dtype=torch.float32)
        t = self._scalars.get((id(group), key, device))
        if t is None:
            t = self._scalars[(id(group), key, device)] = torch.empty((), dtype=torch.float32, device=device)
        t.fill_(value)
        return t

    @staticmethod
    def _group_step(plan: dict, found_inf: Optional[Tensor]) -> Tensor:
        """The plan's step counter (float32, on the params' device; one tensor shared by
        the group's params), advanced unless the step is skipped."""
        step = plan["step"]
        if found_inf is None:
            step.add_(1)
        else:
            step.add_((found_inf == 0).to(step.dtype))
        return step

    def _find_step(self, params: list[Tensor]) -> Tensor:
        """The group's step counter: the first one a param has (or a new one), shared by all."""
        device = params[0].device
        step = None
        for p in params:
            step = self.state[p].get("step")
            if step is not None:
                break
        if step is None:
            step = torch.zeros((), dtype=torch.float32, device=device)
        elif step.device != device or step.dtype != torch.float32:
            step = step.to(device=device, dtype=torch.float32)
        for p in params:
            self.state[p]["step"] = step
        return step

    def _by_device(self, group: dict, name: str) -> dict[torch.device, list[Tensor]]:
        """The group's params that have gradients, by device, with validated gradients."""
        out: dict[torch.device, list[Tensor]] = defaultdict(list)
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(f"{name} does not support sparse gradients (parameter of shape "
                                   f"{tuple(p.shape)}); use a dense gradient")
            out[p.device].append(p)
        return out

    def _master(self, p: Tensor) -> Optional[Tensor]:
        """The float32 master copy of a 16-bit parameter, when master weights are on."""
        if not (self.master_weights and p.dtype in LOW_PRECISION):
            return None
        state = self.state[p]
        if state.get("master") is None:
            state["master"] = torch.empty(p.shape, dtype=torch.float32, device=p.device).copy_(p.detach())
        return state["master"]

    def _state_tensor(self, p: Tensor, key: str) -> Tensor:
        state = self.state[p]
        if key not in state:
            dtype = torch.float64 if p.dtype == torch.float64 else torch.float32
            state[key] = torch.zeros(p.shape, dtype=dtype, device=p.device)
        return state[key]

    def _plan_current(self, plan: dict) -> bool:
        """Whether the state the plan holds is still the optimizer's: a cleared or replaced
        state (``opt.state.clear()``, a new dict for a param, a new tensor under a key)
        makes a new plan. Identity checks on the host, about half a microsecond per param."""
        params, entries, key_entries, keys, tensors = plan["refs"]
        return (all(map(operator.is_, map(self.state.get, params), entries))
                and all(map(operator.is_, map(dict.get, key_entries, keys), tensors)))

    def _plan(self, group: dict, device: torch.device, params: list[Tensor], state_keys: tuple[str, ...]):
        """The launch batches for these params, built once and reused while the set of
        params with gradients and their state tensors stay the same: per batch the kernel
        params, the params whose .grad feeds the kernel, the model params to refresh and
        the state lists. Master weights go in their own batch so that every launch has one
        dtype layout. Building it checks existing state (shape, dtype) and creates missing
        state; `fresh` says which momentum state it just created."""
        key = (id(group), device, state_keys, tuple(map(id, params)))
        plan = self._plans.get(key)
        if plan is not None and self._plan_current(plan):
            return plan
        index = {id(q): i for i, q in enumerate(q for g in self.param_groups for q in g["params"])}
        for p in params:
            if torch._debug_has_internal_overlap(p) == 1:
                raise ValueError(f"{type(self).__name__}: parameter {index[id(p)]} (shape {tuple(p.shape)}) has "
                                 "elements that share memory (an expanded view); the optimizer cannot update it")
            if p in self.state:
                self._check_state(p, index[id(p)])
        plain, masters = [], []
        for p in params:
            master = self._master(p)
            if master is None:
                plain.append(p)
            else:
                masters.append((master, p))
        batches = []
        if plain:
            batches.append(self._batch(plain, plain, [], plain, state_keys))
        if masters:
            models = [p for _, p in masters]
            batches.append(self._batch([m for m, _ in masters], models, models, models, state_keys))
            batches[-1]["refresh"] = self._refresh_groups(masters)
        plan = self._plans[key] = {"batches": batches}
        if self._uses_step:
            plan["step"] = self._find_step(params)
        used = state_keys + ("master", "step")
        entries = [self.state.get(p) for p in params]  # .get: Lars without momentum keeps no state
        held = [(entry, k, entry[k]) for entry in entries if entry is not None for k in used if k in entry]
        plan["refs"] = (params, entries, *(list(column) for column in zip(*held))) if held else \
            (params, entries, [], [], [])
        return plan

    def _batch(self, kparams, grad_owners, models, keys, state_keys) -> dict:
        fresh = [any(k not in self.state[p] for k in state_keys) for p in keys]
        states = {k: [self._state_tensor(p, k) for p in keys] for k in state_keys}
        # Non-contiguous model params: the kernels take a contiguous copy (see _launch_lists).
        strided = [(i, p) for i, p in enumerate(keys) if not p.is_contiguous()]
        return {"params": kparams, "grad_owners": grad_owners, "models": models, "states": states,
                "fresh": fresh, "strided": strided, "refresh": []}

    @staticmethod
    def _refresh_groups(masters: list[tuple[Tensor, Tensor]]) -> list[tuple]:
        """The master/param pairs in the units _refresh_masters compares them: a large
        tensor alone, small ones in buckets of one dtype."""
        units, buckets = [], {}
        for master, p in masters:
            n = p.numel()
            if n > _BUCKET_TENSOR:
                units.append(("one", master, p))
                continue
            bucket = buckets.get(p.dtype)
            if bucket is None or bucket[3] + n > _BUCKET_ELEMENTS:
                bucket = buckets[p.dtype] = ["bucket", [], [], 0]  # kind, masters, params, elements
                units.append(bucket)
            bucket[1].append(master)
            bucket[2].append(p)
            bucket[3] += n
        return units

    @staticmethod
    def _refresh_masters(batch: dict) -> None:
        """master = p wherever p != master rounded to p's dtype: the model param was changed
        in place since the last step wrote it (which left p == round(master)). On the
        device, no host synchronisation: per bucket of small tensors two concatenations, a
        rounding, a comparison, a select and one multi-tensor copy back; per large tensor a
        rounding, a comparison and a select into the master."""
        for unit in batch["refresh"]:
            if unit[0] == "one":
                _, master, p = unit
                torch.where(p != master.to(p.dtype), p, master, out=master)
                continue
            _, masters, models, _ = unit
            flat_p = _flatten_dense_tensors(models)
            flat_m = _flatten_dense_tensors(masters)
            torch.where(flat_p != flat_m.to(flat_p.dtype), flat_p, flat_m, out=flat_m)
            torch._foreach_copy_(masters, _unflatten_dense_tensors(flat_m, masters))

    def _launch_lists(self, batch: dict) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """(params, grads, model params) for one launch: masters first refreshed from
        params changed in place, non-contiguous params replaced by contiguous copies
        (written back by _write_back)."""
        self._refresh_masters(batch)
        params, models = batch["params"], batch["models"]
        if batch["strided"]:
            params, models = list(params), list(models)
            target = models if models else params
            for i, p in batch["strided"]:
                target[i] = p.contiguous()
        return params, self._grads(batch), models

    @staticmethod
    def _write_back(batch: dict, params: list[Tensor], models: list[Tensor]) -> None:
        source = models if models else params
        for i, p in batch["strided"]:
            p.copy_(source[i])

    @staticmethod
    def _grads(batch: dict) -> list[Tensor]:
        out = []
        for p in batch["grad_owners"]:
            g = p.grad
            out.append(g if g.is_contiguous() else g.contiguous())
        return out
