"""Adapter configurations (dataclasses), with HF PEFT's matching rules."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Optional, Union

Targets = Union[list[str], str, None]


def matches(name: str, targets: Targets) -> bool:
    """PEFT's rule: a list matches a module name equal to an entry or ending in
    "." + entry; a string is a regular expression that must match the whole name."""
    if targets is None:
        return False
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


@dataclass
class LoraConfig:
    """LoRA on every nn.Linear whose name matches `target_modules`.

    r, alpha, dropout, use_rslora: as `peftcore.LoraLinear`. target_modules:
    suffixes ("q_proj") or a regex over full names; exclude_modules: same form,
    applied after. modules_to_save: suffixes of modules kept trainable in full
    (e.g. a classification head).
    """

    r: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    target_modules: Targets = field(default_factory=lambda: ["q_proj", "v_proj"])
    exclude_modules: Targets = None
    use_rslora: bool = False
    modules_to_save: Optional[list[str]] = None
    kind: str = "lora"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LoraConfig":
        if data.get("kind", "lora") != "lora":
            raise ValueError(f"unknown adapter kind {data.get('kind')!r}; this build knows 'lora'")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown LoraConfig fields {unknown}")
        return cls(**data)
