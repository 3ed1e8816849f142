"""peftcore.optim.Lamb: LAMB in two fused multi-tensor passes per step."""

from __future__ import annotations

import math
from typing import Optional

import torch

from ._fused import FusedOptimizer, as_number, check_nonnegative

_ops = torch.ops.peftcore


class Lamb(FusedOptimizer):
    r"""LAMB (You et al., "Large Batch Optimization for Deep Learning: Training BERT in
    76 minutes", 2019), with timm's ``Lamb`` defaults and semantics.

    Per step, with ``g`` the gradient divided by the global clipping factor
    ``max(||g||_global / max_grad_norm, 1)``:

    .. math::
        m = \beta_1 m + (1-\beta_1) g,\quad v = \beta_2 v + (1-\beta_2) g^2,\quad
        u = \frac{m / (1-\beta_1^t)}{\sqrt{v} / \sqrt{1-\beta_2^t} + \epsilon} + wd\,p,\quad
        p \leftarrow p - lr\, r\, u

    with the trust ratio ``r = phi(||p||) / ||u||`` (``phi`` clamps to
    ``[phi_min, phi_max]``; ``r = 1`` when either norm is zero; ``trust_clip`` caps
    it at 1; ``min_trust`` floors it) applied when the group's ``weight_decay != 0``
    or ``always_adapt`` (or the group's ``adapt`` key says so), else ``r = 1``.

    Differences from timm: ``phi_min``/``phi_max``/``min_trust``, a per-group
    ``adapt`` override, fp32 master weights, GradScaler support without host
    synchronisation; no ``caution``/``decoupled_decay``. From apex FusedLAMB:
    ``max_grad_norm=0`` disables clipping (apex divides by zero), the ratio is
    skipped for wd=0 groups unless ``always_adapt`` (apex's ``use_nvlamb``), and the
    default ``eps`` is 1e-6. From torch-optimizer's Lamb: bias correction is on by
    default, ``u`` includes weight decay before the ratio, and the ratio uses
    ``||p||`` unclamped (torch-optimizer clamps to [0, 10]).

    LoRA: ``lora_B`` starts at zero, so on its first step ``||p|| = 0`` and ``r = 1``
    (a plain Adam step of size ``lr``); afterwards ``r = ||B|| / ||u||`` is small while
    B is small, which slows B's growth. ``min_trust`` (e.g. 1.0 caps nothing but
    floors the ratio), ``phi_min`` or an ``adapt=False`` group (see
    ``peftcore.optim.param_groups(exclude_from_layer_adaptation=...)``) keep it learning.
    """

    _moment_keys = ("exp_avg", "exp_avg_sq")
    _uses_step = True

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        bias_correction: bool = True,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        grad_averaging: bool = True,
        max_grad_norm: Optional[float] = 1.0,
        trust_clip: bool = False,
        always_adapt: bool = False,
        phi_min: float = 0.0,
        phi_max: float = math.inf,
        min_trust: float = 0.0,
        master_weights: bool = False,
    ) -> None:
        defaults = dict(lr=lr, bias_correction=bias_correction, betas=betas, eps=eps,
                        weight_decay=weight_decay, grad_averaging=grad_averaging,
                        max_grad_norm=max_grad_norm, trust_clip=trust_clip,
                        always_adapt=always_adapt, phi_min=phi_min, phi_max=phi_max,
                        min_trust=min_trust, adapt=None)
        super().__init__(params, defaults, master_weights)

    @classmethod
    def _check_hparams(cls, group: dict, where: str = "") -> None:
        check_nonnegative(group["lr"], "learning rate", "lr", where)
        check_nonnegative(group["eps"], "epsilon", "eps", where)
        betas = group["betas"]
        try:
            beta1, beta2 = (as_number(b, "betas") for b in betas)
            valid = 0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0
        except (TypeError, ValueError):
            valid = False
        if not valid:
            raise ValueError(f"Invalid betas: {betas}{where} (betas must be a pair (beta1, beta2) with 0 <= beta < 1)")
        check_nonnegative(group["weight_decay"], "weight_decay", "weight_decay", where)
        max_norm = group["max_grad_norm"]
        if max_norm is not None and not as_number(max_norm, "max_grad_norm") >= 0.0:
            raise ValueError(f"Invalid max_grad_norm: {max_norm}{where} (max_grad_norm must be None or 0 to "
                             "disable clipping, or a positive norm)")
        phi_min, phi_max = group["phi_min"], group["phi_max"]
        if not 0.0 <= phi_min <= phi_max:
            raise ValueError(f"Need 0 <= phi_min <= phi_max, got {phi_min}, {phi_max}{where}")
        check_nonnegative(group["min_trust"], "min_trust", "min_trust", where)

    def _grad_divisors(self, work) -> dict[torch.device, torch.Tensor]:
        """Per device: loss scale x global clipping factor, computed on device (no sync)."""
        max_norm = self.defaults["max_grad_norm"]
        by_device: dict[torch.device, list] = {}
        for _, device, params in work:
            # Contiguous like the step's gradients (_grads): the kernels take dense tensors.
            by_device.setdefault(device, []).extend(
                p.grad if p.grad.is_contiguous() else p.grad.contiguous() for p in params)
        divisors = {}
        sumsq_total = None
        for device, grads in by_device.items():
            scale, _ = self._amp_inputs(device)
            divisors[device] = scale if scale is not None else torch.ones((), device=device)
            if max_norm:  # None or 0 disables clipping
                s = _ops.multi_tensor_sumsq(grads).sum().float()
                s = s.to(next(iter(by_device)))
                sumsq_total = s if sumsq_total is None else sumsq_total + s
        if max_norm and sumsq_total is not None:
            for device in divisors:
                scale = divisors[device]
                norm = sumsq_total.to(device).sqrt() / scale  # the unscaled gradient's norm
                clip = (norm / max_norm).clamp(min=1.0)
                divisors[device] = clip * scale
        return divisors

    @torch.no_grad()
    def step(self, closure=None):
        loss = self._run_closure(closure)
        work = [(group, device, params) for group in self.param_groups
                for device, params in self._by_device(group, "Lamb").items()]
        divisors = self._grad_divisors(work)
        for group, device, params in work:
            beta1, beta2 = group["betas"]
            _, found_inf = self._amp_inputs(device)
            plan = self._plan(group, device, params, ("exp_avg", "exp_avg_sq"))
            step = self._group_step(plan, found_inf)
            lr = self._scalar(group, "lr", device)
            for batch in plan["batches"]:
                kparams, grads, models = self._launch_lists(batch)
                _ops.lamb_step_(
                    kparams, grads, batch["states"]["exp_avg"],
                    batch["states"]["exp_avg_sq"], models, lr, step, divisors[device], found_inf,
                    beta1, beta2, group["eps"], group["weight_decay"],
                    group["bias_correction"], group["grad_averaging"], bool(self._adapts(group)),
                    group["trust_clip"], group["phi_min"], group["phi_max"], group["min_trust"],
                )
                self._write_back(batch, kparams, models)
        return loss
