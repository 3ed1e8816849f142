"""What Lamb and Lars share: per-device tensor lists, master weights, GradScaler hooks."""

from __future__ import annotations

from collections import defaultdict
from typing import Optional

import torch
from torch import Tensor

from .. import ops  # noqa: F401  (registers the fake kernels)

LOW_PRECISION = (torch.float16, torch.bfloat16)


class FusedOptimizer(torch.optim.Optimizer):
    """Base of the fused optimizers.

    GradScaler protocol (as torch's fused Adam): with ``_step_supports_amp_scaling``
    the scaler sets ``self.grad_scale`` (the loss scale, or None once unscaled) and
    ``self.found_inf`` before calling ``step()``; the kernels divide gradients by
    the scale and skip the whole step on device when found_inf is non-zero, so
    ``step()`` never synchronises with the host.
    """

    _step_supports_amp_scaling = True

    def __init__(self, params, defaults: dict, master_weights: bool) -> None:
        super().__init__(params, defaults)
        self.master_weights = master_weights
        self._forget_plans()

    def _forget_plans(self) -> None:
        # Kept off the param groups, so that state_dict() never carries them.
        self._plans: dict = {}  # (group id, device, param ids) -> launch batches
        self._scalars: dict = {}  # (group id, key, device) -> float32 tensor

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        if hasattr(self, "_plans"):
            self._forget_plans()

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's loader casts every state tensor to its parameter's dtype; the
        moments and master weights of 16-bit parameters must stay float32, so they
        are restored from the checkpoint with their own dtype (on the param's device)."""
        saved = state_dict["state"]
        ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        super().load_state_dict(state_dict)
        self._forget_plans()  # new group dicts and new state tensors
        for pid, p in zip(ids, params):
            for key, value in saved.get(pid, {}).items():
                if key != "step" and isinstance(value, Tensor):
                    self.state[p][key] = value.to(device=p.device, copy=True)

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

    def _group_step(self, plan: dict, params: list[Tensor], found_inf: Optional[Tensor]) -> Tensor:
        """The group's step counter (float32, on the params' device; one tensor shared by
        the group's params), advanced unless the step is skipped."""
        step = plan.get("step")
        if step is None:  # first use of this plan: find (or make) the counter and share it
            device = params[0].device
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
            plan["step"] = step
        if found_inf is None:
            step.add_(1)
        else:
            step.add_((found_inf == 0).to(step.dtype))
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
        if "master" not in state:
            state["master"] = p.detach().float()
        return state["master"]

    def _state_tensor(self, p: Tensor, key: str) -> Tensor:
        state = self.state[p]
        if key not in state:
            dtype = torch.float64 if p.dtype == torch.float64 else torch.float32
            state[key] = torch.zeros(p.shape, dtype=dtype, device=p.device)
        return state[key]

    def _plan(self, group: dict, device: torch.device, params: list[Tensor], state_keys: tuple[str, ...]):
        """The launch batches for these params, built once and reused while the set of
        params with gradients stays the same: per batch the kernel params, the params
        whose .grad feeds the kernel, the model params to refresh and the state lists. Master weights go
        in their own batch so that every launch has one dtype layout. Building it
        creates missing state; `fresh` says which momentum state it just created."""
        key = (id(group), device, tuple(map(id, params)))
        plan = self._plans.get(key)
        if plan is not None:
            return plan
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
        plan = self._plans[key] = {"batches": batches}
        return plan

    def _batch(self, kparams, grad_owners, models, keys, state_keys) -> dict:
        fresh = [any(k not in self.state[p] for k in state_keys) for p in keys]
        states = {k: [self._state_tensor(p, k) for p in keys] for k in state_keys}
        return {"params": kparams, "grad_owners": grad_owners, "models": models, "states": states,
                "fresh": fresh}

    @staticmethod
    def _grads(batch: dict) -> list[Tensor]:
        out = []
        for p in batch["grad_owners"]:
            g = p.grad
            out.append(g if g.is_contiguous() else g.contiguous())
        return out
