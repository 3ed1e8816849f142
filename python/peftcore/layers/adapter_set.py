"""AdapterSet: several named adapters on one base layer (peftcore.add_adapter).

Each adapter is an ordinary adapter layer (LoraLinear, HydraLinear or BoneLinear)
sharing the set's base layer. Forward applies the active ones (each layer's
``active`` flag, in the order they were added):

* one active adapter: its own fused op, as if it were alone;
* several, all low-rank in x (LoRA, bone, mini, Hydra without a sequential branch)
  with the same dropout: ONE fused ``lora_linear`` call over their factors
  concatenated along the rank, with each adapter's scaling folded into its B. The
  dropout mask is then shared by those adapters (HF PEFT draws one per adapter;
  identical in eval mode);
* otherwise: the base output once, plus each adapter's term in plain torch ops.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import ops
from .low_rank import as_compute


class AdapterSet(nn.Module):
    def __init__(self, base: nn.Module, adapters: dict[str, nn.Module]) -> None:
        super().__init__()
        self.base_layer = base
        self.adapters = nn.ModuleDict(adapters)
        self.in_features, self.out_features = base.in_features, base.out_features

    def active_layers(self) -> list[nn.Module]:
        return [layer for layer in self.adapters.values() if layer.active and not layer.merged]

    def forward(self, x: Tensor) -> Tensor:
        layers = self.active_layers()
        if not layers:
            return self.base_layer(x)  # merged adapters are already in the base weight
        if len(layers) == 1:
            return layers[0](x)
        factors = [layer.low_rank() for layer in layers]
        if all(f is not None for f in factors) and len({f[2] for f in factors}) == 1:
            w = self.base_layer.weight
            A = torch.cat([as_compute(f[0], w) for f in factors], 0)
            B = torch.cat([as_compute(f[1], w) for f in factors], 1)
            return ops.lora_linear(x, w, self.base_layer.bias, A, B, 1.0, factors[0][2], self.training)
        h = self.base_layer(x)
        out = h
        for layer in layers:  # Hydra's sequential branch reads the base output h
            out = out + layer.adapter_delta(x, h)
        return out

    def extra_repr(self) -> str:
        active = [n for n, layer in self.adapters.items() if layer.active]
        return f"adapters={list(self.adapters)}, active={active}"
