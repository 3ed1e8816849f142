"""Fake kernels of the sparse fine-tuning ops (schemas: csrc/sparse/sparse_schema.cpp;
the API that calls them: peftcore.sparse)."""

from __future__ import annotations

import torch

from . import _common  # noqa: F401  (loads the library that defines the ops)


@torch.library.register_fake("peftcore::sparse_compose_")
def _sparse_compose_fake(params, indices, values, owner, weights):
    ctx = torch.library.get_ctx()
    sizes = [ctx.new_dynamic_size() for _ in params]  # the union of each parameter's indices
    return ([p.new_empty((n,), dtype=torch.int64) for p, n in zip(params, sizes)],
            [p.new_empty((n,)) for p, n in zip(params, sizes)])


@torch.library.register_fake("peftcore::sparse_merge")
def _sparse_merge_fake(params, indices, values, owner, weights):
    ctx = torch.library.get_ctx()
    acc = torch.float64 if any(p.dtype == torch.float64 for p in params) else torch.float32
    sizes = [ctx.new_dynamic_size() for _ in params]
    return ([p.new_empty((n,), dtype=torch.int64) for p, n in zip(params, sizes)],
            [p.new_empty((n,), dtype=acc) for p, n in zip(params, sizes)])


@torch.library.register_fake("peftcore::magnitude_topk")
def _magnitude_topk_fake(theta0, theta, k):
    ctx = torch.library.get_ctx()
    return [t.new_empty((ctx.new_dynamic_size(),), dtype=torch.int64) for t in theta]


@torch.library.register_fake("peftcore::sparse_revert_")
def _sparse_revert_fake(params, indices, originals):
    return None
