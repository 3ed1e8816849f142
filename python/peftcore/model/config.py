"""Adapter configurations (dataclasses), with HF PEFT's matching rules.

Every config names the modules it adapts (`target_modules`, `exclude_modules`),
the modules trained in full (`modules_to_save`), and knows how to build its layer
around an nn.Linear and the shapes of that layer's parameters."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Optional, Union

from torch import nn

from ..layers import BoneLinear, HydraLinear, LoraLinear

Targets = Union[list[str], str, None]
_FLOAT32_MAX = 3.4028234663852886e38


def _int(cls: str, name: str, value, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{cls}.{name} must be an int >= {minimum}, got {value!r}")


def _float(cls: str, name: str, value) -> None:
    """A finite number that stays finite in float32 (a scaling of 1e308 makes every output inf)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
            or abs(value) > _FLOAT32_MAX:
        raise ValueError(f"{cls}.{name} must be a finite number, got {value!r}")


def _probability(cls: str, name: str, value) -> None:
    _float(cls, name, value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{cls}.{name} must be in [0, 1), got {value!r}")


def _names(cls: str, name: str, value, allow_regex: bool = True) -> None:
    ok = value is None or (allow_regex and isinstance(value, str)) or \
        (isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value))
    if not ok:
        raise ValueError(f"{cls}.{name} must be a list of module names" + (" or a regular expression" if allow_regex
                                                                             else "") + f", got {value!r}")


def matches(name: str, targets: Targets) -> bool:
    """PEFT's rule: a list matches a module name equal to an entry or ending in
    "." + entry; a string is a regular expression that must match the whole name."""
    if targets is None:
        return False
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def in_layers(name: str, config) -> bool:
    """PEFT's `layers_to_transform` / `layers_pattern` rule: with a list of target
    modules, a name not listed verbatim must sit in one of the chosen layers: the index
    after `<pattern>.` (any pattern when none is given; the first index in the name)."""
    wanted, patterns = config.layers_to_transform, config.layers_pattern
    if wanted is None or wanted == [] or isinstance(config.target_modules, str) or name in config.target_modules:
        return True
    if not patterns:
        found = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", name)
    else:
        for pattern in [patterns] if isinstance(patterns, str) else patterns:
            found = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", name)
            if found:
                break
    if not found:
        return False
    index = int(found.group("idx"))
    return index == wanted if isinstance(wanted, int) else index in wanted


@dataclass
class _AdapterConfig:
    target_modules: Targets = field(default_factory=lambda: ["q_proj", "v_proj"])
    exclude_modules: Targets = None
    modules_to_save: Optional[list[str]] = None
    # PEFT's layer filter: only the layers with these indices (see in_layers).
    layers_to_transform: Union[int, list[int], None] = None
    layers_pattern: Union[str, list[str], None] = None

    def to_dict(self) -> dict:
        return {**asdict(self), "kind": self.kind}

    def __post_init__(self) -> None:
        """Every value checked when the config is made (by hand or from a file): a bad
        one is refused here, naming the field, not deep inside a layer or as inf logits."""
        cls = type(self).__name__
        _names(cls, "target_modules", self.target_modules)
        _names(cls, "exclude_modules", self.exclude_modules)
        _names(cls, "modules_to_save", self.modules_to_save, allow_regex=False)
        layers = self.layers_to_transform
        if layers is not None and not isinstance(layers, int) and not (
                isinstance(layers, (list, tuple)) and all(isinstance(i, int) and not isinstance(i, bool) for i in layers)):
            raise ValueError(f"{cls}.layers_to_transform must be an int or a list of ints, got {layers!r}")
        _names(cls, "layers_pattern", self.layers_pattern)
        self._check()

    def _check(self) -> None:
        pass


def pattern_key(patterns: dict, name: str) -> Optional[str]:
    """PEFT's rule for rank_pattern / alpha_pattern: the first key that, as a regular
    expression, matches the end of the module name after a "." (or all of it)."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", name):
            return key
    return None


@dataclass
class LoraConfig(_AdapterConfig):
    """LoRA (`peftcore.LoraLinear`): r, alpha, dropout, use_rslora; `rank_pattern` and
    `alpha_pattern` ({module-name pattern: value}) override r and alpha per module, as
    in HF PEFT."""

    kind = "lora"
    r: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    use_rslora: bool = False
    rank_pattern: dict = field(default_factory=dict)
    alpha_pattern: dict = field(default_factory=dict)

    def _check(self) -> None:
        _int("LoraConfig", "r", self.r, 1)
        _float("LoraConfig", "alpha", self.alpha)
        _probability("LoraConfig", "dropout", self.dropout)
        if not isinstance(self.use_rslora, bool):
            raise ValueError(f"LoraConfig.use_rslora must be True or False, got {self.use_rslora!r}")
        for name, pattern, check in (("rank_pattern", self.rank_pattern, lambda k, v: _int("LoraConfig", k, v, 1)),
                                     ("alpha_pattern", self.alpha_pattern, lambda k, v: _float("LoraConfig", k, v))):
            if not isinstance(pattern, dict):
                raise ValueError(f"LoraConfig.{name} must be a dict {{module pattern: value}}, got {pattern!r}")
            for key, value in pattern.items():
                check(f"{name}[{key!r}]", value)

    def rank_alpha(self, name: str = "") -> tuple[int, float]:
        """(r, alpha) of the module called `name`."""
        r_key, a_key = pattern_key(self.rank_pattern, name), pattern_key(self.alpha_pattern, name)
        return (int(self.rank_pattern[r_key]) if r_key is not None else self.r,
                float(self.alpha_pattern[a_key]) if a_key is not None else self.alpha)

    def make_layer(self, base: nn.Linear, name: str = "") -> nn.Module:
        r, alpha = self.rank_alpha(name)
        return LoraLinear(base, r=r, alpha=alpha, dropout=self.dropout, use_rslora=self.use_rslora)

    def param_shapes(self, n_in: int, n_out: int, name: str = "") -> dict[str, tuple[int, ...]]:
        r = self.rank_alpha(name)[0]
        return {"lora_A.weight": (r, n_in), "lora_B.weight": (n_out, r)}


@dataclass
class HydraConfig(_AdapterConfig):
    """Hydra (`peftcore.HydraLinear`): a parallel and a sequential low-rank branch."""

    kind = "hydra"
    r_parallel: int = 8
    r_sequential: int = 8
    alpha_parallel: float = 8.0
    alpha_sequential: float = 8.0
    dropout: float = 0.0

    def _check(self) -> None:
        _int("HydraConfig", "r_parallel", self.r_parallel, 0)
        _int("HydraConfig", "r_sequential", self.r_sequential, 0)
        if self.r_parallel == 0 and self.r_sequential == 0:
            raise ValueError("HydraConfig: at least one of r_parallel and r_sequential must be positive")
        _float("HydraConfig", "alpha_parallel", self.alpha_parallel)
        _float("HydraConfig", "alpha_sequential", self.alpha_sequential)
        _probability("HydraConfig", "dropout", self.dropout)

    def make_layer(self, base: nn.Linear, name: str = "") -> nn.Module:
        return HydraLinear(base, self.r_parallel, self.r_sequential, self.alpha_parallel,
                           self.alpha_sequential, self.dropout)

    def param_shapes(self, n_in: int, n_out: int, name: str = "") -> dict[str, tuple[int, ...]]:
        shapes = {}
        if self.r_parallel:
            shapes.update({"A_p": (self.r_parallel, n_in), "B_p": (n_out, self.r_parallel)})
        if self.r_sequential:
            shapes.update({"A_s": (self.r_sequential, n_out), "B_s": (n_out, self.r_sequential)})
        return shapes


@dataclass
class BoneConfig(_AdapterConfig):
    """MiSS (`peftcore.BoneLinear`; "bone" is its name in peftcore's code): block size r,
    variant "bone", "mini" or "bat"."""

    kind = "bone"
    r: int = 64
    variant: str = "bone"
    mini_r: int = 1
    dropout: float = 0.0

    def _check(self) -> None:
        _int("BoneConfig", "r", self.r, 1)
        if self.variant not in ("bone", "mini", "bat"):
            raise ValueError(f"BoneConfig.variant must be 'bone', 'mini' or 'bat', got {self.variant!r}")
        _int("BoneConfig", "mini_r", self.mini_r, 1)
        _probability("BoneConfig", "dropout", self.dropout)

    def make_layer(self, base: nn.Linear, name: str = "") -> nn.Module:
        return BoneLinear(base, r=self.r, variant=self.variant, mini_r=self.mini_r, dropout=self.dropout)

    def param_shapes(self, n_in: int, n_out: int, name: str = "") -> dict[str, tuple[int, ...]]:
        shapes = {"bone": (self.r, n_out), "mini": (self.r, self.mini_r), "bat": (n_out // self.r, self.r, self.r)}
        return {"miss_block": shapes[self.variant]}


CONFIGS = {c.kind: c for c in (LoraConfig, HydraConfig, BoneConfig)}


def config_from_dict(data: dict):
    """Rebuilds a config saved with `to_dict`; unknown kinds or fields raise ValueError."""
    data = dict(data)
    kind = data.pop("kind", "lora")
    if kind not in CONFIGS:
        raise ValueError(f"unknown adapter kind {kind!r}; this build knows {sorted(CONFIGS)}")
    cls = CONFIGS[kind]
    unknown = sorted(set(data) - set(cls.__dataclass_fields__))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}")
    return cls(**data)
