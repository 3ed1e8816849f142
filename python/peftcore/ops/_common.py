"""What every family's ops module shares: the op namespace, dropout seeds, and the
error that backward ops give when asked for a second derivative.

Each family's schemas live in csrc/<family>/<family>_schema.cpp; its autograd is C++
(csrc/<family>/<family>_autograd.cpp) and calls the backward op, so the whole graph
stays inside registered ops under torch.compile. The family's module here adds what
the compiler needs (a fake kernel per op: output shapes, no data) and a typed wrapper.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _native  # noqa: F401  (loads the library that defines torch.ops.peftcore)

peftcore_ops = torch.ops.peftcore


def dropout_seed(device: torch.device) -> Tensor:
    """Two random int64 words from torch's generator: the key of one dropout mask.

    Drawn with torch.randint so torch.manual_seed reproduces masks and
    torch.compile traces it as an ordinary random op.
    """
    return torch.randint(-(2**63), 2**63 - 1, (2,), dtype=torch.int64, device=device)


def _no_double_backward(op_name: str):
    def backward(ctx, *grads):
        raise RuntimeError(
            f"{op_name} does not support double backward (create_graph=True through a peftcore "
            "adapter); compute higher-order gradients with peftcore.reference instead"
        )

    return backward


def refuse_double_backward(backward_op: str) -> None:
    torch.library.register_autograd(backward_op, _no_double_backward(backward_op),
                                    setup_context=lambda ctx, inputs, output: None)
