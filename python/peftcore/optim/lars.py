"""peftcore.optim.Lars: LARS / LARC with momentum in fused multi-tensor passes."""

from __future__ import annotations

import math

import torch

from ._fused import FusedOptimizer, as_number, check_nonnegative

_ops = torch.ops.peftcore


class Lars(FusedOptimizer):
    r"""LARS (You et al., "Large Batch Training of Convolutional Networks", 2017) with
    SGD momentum, with timm's ``Lars`` defaults and semantics.

    When the group's ``weight_decay != 0`` or ``always_adapt`` (or its ``adapt`` key):
    ``r = trust_coeff ||p|| / (||g|| + wd ||p|| + eps)`` (1 if a norm is zero; with
    ``trust_clip``, LARC's ``min(r / lr, 1)``) and ``d = (g + wd p) r``; otherwise
    ``d = g`` (no weight decay, as in timm). Then ``buf = d`` on the first step,
    ``buf = momentum buf + (1 - dampening) d`` after; ``d = d + momentum buf``
    (Nesterov) or ``buf``; ``p -= lr d``.

    1-D parameters (biases, norms) are excluded from adaptation through parameter
    groups with weight_decay 0 (``peftcore.optim.param_groups``), as in timm.
    Differences from timm: fp32 master weights, GradScaler support, a per-group
    ``adapt`` override. From torch-optimizer (which has no LARS) and apex's LARC
    wrapper: LARC there wraps another optimizer; here it is ``trust_clip=True``.
    """

    _moment_keys = ("momentum_buffer",)

    def __init__(
        self,
        params,
        lr: float = 1.0,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        trust_coeff: float = 0.001,
        eps: float = 1e-8,
        trust_clip: bool = False,
        always_adapt: bool = False,
        master_weights: bool = False,
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, trust_coeff=trust_coeff, eps=eps, trust_clip=trust_clip,
                        always_adapt=always_adapt, adapt=None)
        super().__init__(params, defaults, master_weights)

    @classmethod
    def _check_hparams(cls, group: dict, where: str = "") -> None:
        check_nonnegative(group["lr"], "learning rate", "lr", where)
        check_nonnegative(group["momentum"], "momentum value", "momentum", where)
        dampening = as_number(group["dampening"], "dampening")
        if not -math.inf < dampening < math.inf:
            raise ValueError(f"Invalid dampening value: {group['dampening']}{where} "
                             "(dampening must be a finite number)")
        check_nonnegative(group["weight_decay"], "weight_decay value", "weight_decay", where)
        if group["nesterov"] and (not as_number(group["momentum"], "momentum") > 0 or dampening != 0):
            raise ValueError(f"Nesterov momentum requires a momentum and zero dampening{where} (got momentum="
                             f"{group['momentum']}, dampening={group['dampening']})")
        check_nonnegative(group["trust_coeff"], "trust_coeff", "trust_coeff", where)
        check_nonnegative(group["eps"], "epsilon", "eps", where)

    @torch.no_grad()
    def step(self, closure=None):
        loss = self._run_closure(closure)
        for group in self.param_groups:
            adapt = self._adapts(group)
            state_keys = ("momentum_buffer",) if group["momentum"] != 0 else ()
            for device, params in self._by_device(group, "Lars").items():
                scale, found_inf = self._amp_inputs(device)
                divisor = scale if scale is not None else torch.ones((), device=device)
                lr = self._scalar(group, "lr", device)
                for batch in self._plan(group, device, params, state_keys)["batches"]:
                    buffers = batch["states"].get("momentum_buffer", [])
                    # A buffer the plan just created starts from the gradient (torch SGD).
                    fresh = batch["fresh"] if buffers else []
                    kparams, grads, models = self._launch_lists(batch)
                    _ops.lars_step_(
                        kparams, grads, buffers, models, lr, divisor,
                        found_inf, fresh, group["momentum"], group["dampening"], group["weight_decay"],
                        group["nesterov"], group["trust_coeff"], group["eps"], group["trust_clip"],
                        bool(adapt),
                    )
                    self._write_back(batch, kparams, models)
                    batch["fresh"] = [False] * len(batch["fresh"])
        return loss
