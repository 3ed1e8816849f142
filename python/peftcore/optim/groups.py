"""Parameter groups that exclude biases and norm weights from decay and adaptation."""

from __future__ import annotations

import fnmatch
from typing import Callable, Iterable, Union

from torch import nn

NamePredicate = Union[Callable[[str, nn.Parameter], bool], Iterable[str]]


def _matcher(rule: NamePredicate | None) -> Callable[[str, nn.Parameter], bool]:
    if rule is None:
        return lambda name, p: False
    if callable(rule):
        return rule
    patterns = list(rule)
    return lambda name, p: any(fnmatch.fnmatch(name, pat) or name.endswith(pat) for pat in patterns)


def param_groups(
    model: nn.Module,
    weight_decay: float = 0.01,
    no_decay: NamePredicate | None = None,
    exclude_from_layer_adaptation: NamePredicate | None = None,
) -> list[dict]:
    """Splits `model`'s trainable parameters the way timm's `param_groups_weight_decay` does.

    Parameters with one dimension (biases, norm weights), names ending in ".bias",
    and names matched by `no_decay` (glob patterns / suffixes, or a callable
    `(name, param) -> bool`) get weight_decay 0 and, like in timm, no layer-wise
    adaptation (their group has ``adapt=None``: adapt only if weight_decay != 0 or
    the optimizer's ``always_adapt``). Names matched by
    `exclude_from_layer_adaptation` go to a group with ``adapt=False`` whatever
    the decay: the way to keep a zero-initialised LoRA B out of the trust ratio.
    """
    skip_decay, skip_adapt = _matcher(no_decay), _matcher(exclude_from_layer_adaptation)
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decays = not (p.ndim <= 1 or name.endswith(".bias") or skip_decay(name, p))
        adapts = not skip_adapt(name, p)
        groups.setdefault((decays, adapts), []).append(p)
    out = []
    for (decays, adapts), params in groups.items():
        group = {"params": params, "weight_decay": weight_decay if decays else 0.0}
        if not adapts:
            group["adapt"] = False
        out.append(group)
    return out
