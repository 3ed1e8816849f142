"""The hand-written AVX-512 CPU kernels behind the adapters' float32 paths (the
skinny products of the low-rank engine, csrc/lowrank/skinny_cpu.h, and its Philox
dropout masks) and their
MKL / AVX2 fallbacks, against the float64 oracle through the ops that use them:
ranks that take every rank chunk and tile, column tails, row tails, row blocks
split across threads, dropout masks."""

import pytest
import torch

from peftcore import _C, reference
from helpers import assert_as_accurate_as_torch

lora_op = torch.ops.peftcore.lora_linear


@pytest.fixture(params=["avx512", "fallback"])
def kernels(request):
    if request.param == "avx512" and not _C._cpu_has_avx512():
        pytest.skip("this CPU has no AVX-512F")
    before = _C._vector_kernels()
    _C._set_vector_kernels(request.param == "avx512")
    yield request.param
    _C._set_vector_kernels(before)


# Ranks: every chunk of the outer product (16/8/4/2/1 rows of acc) and of the NT
# kernel (1-4 vectors of lanes, masked last vector, more than 64 lanes).
RANKS = [1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 33, 48, 63, 65]


def _inputs(n, n_in, n_out, r, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n_in, generator=g, dtype=torch.float64)
    w = torch.randn(n_out, n_in, generator=g, dtype=torch.float64) / n_in**0.5
    b = torch.randn(n_out, generator=g, dtype=torch.float64)
    a = torch.randn(r, n_in, generator=g, dtype=torch.float64) / n_in**0.5
    bb = torch.randn(n_out, r, generator=g, dtype=torch.float64)
    return [x, w, b, a, bb]


def _check(n, n_in, n_out, r, p=0.0, x_row_stride=None, dtype=torch.float32):
    """lora_linear forward + backward in `dtype` as accurate as torch in that dtype."""
    ref_in = _inputs(n, n_in, n_out, r, seed=n * 1000 + r)
    low = [t.to(dtype).requires_grad_(True) for t in ref_in]
    ref_in = [t.detach().double().requires_grad_(True) for t in low]
    seed = torch.tensor([7, 11], dtype=torch.int64)
    ours_in = list(low)
    if x_row_stride is not None:  # x a column slice of a wider leaf: rows not adjacent
        wide = torch.zeros(n, x_row_stride, dtype=dtype)
        wide[:, 3 : 3 + n_in] = low[0].detach()
        wide.requires_grad_(True)
        ours_in[0] = wide[:, 3 : 3 + n_in]
        assert not ours_in[0].is_contiguous()
    out, _ = lora_op(*ours_in, 0.5, p, seed if p > 0 else None)
    torch_low = reference.lora_linear(*low, 0.5, p, seed)
    ref = reference.lora_linear(*ref_in, 0.5, p, seed)
    assert_as_accurate_as_torch(out, torch_low, ref, "out")
    grad = torch.randn(ref.shape, dtype=torch.float64)
    g_ours = torch.autograd.grad(out, ours_in, grad.to(dtype))
    g_low = torch.autograd.grad(torch_low, low, grad.to(dtype))
    g_ref = torch.autograd.grad(ref, ref_in, grad)
    for name, go, gl, gr in zip(["x", "weight", "bias", "A", "B"], g_ours, g_low, g_ref):
        assert_as_accurate_as_torch(go, gl, gr, f"grad {name} (r={r})")


@pytest.mark.parametrize("r", RANKS)
def test_unmerged_path_every_rank(kernels, r):
    # Few rows against in x out: h and T from skinny_nt_, dA and dB from tn_product.
    _check(n=75, n_in=129, n_out=47, r=r)


@pytest.mark.parametrize("r", [1, 4, 16, 33])
def test_merged_path_row_blocks(kernels, r):
    # Many rows against in x out (merged weight): row_block_grads over several row
    # blocks per thread, 32-row passes with a tail, columns with a tail.
    _check(n=2085, n_in=31, n_out=1000, r=r)
    _check(n=2085, n_in=130, n_out=999, r=r)  # merged weight: 4-row groups with a tail, 64-column tiles


@pytest.mark.parametrize("cols", [1, 15, 16, 17, 130])
def test_column_tails(kernels, cols):
    _check(n=70, n_in=cols, n_out=cols + 3, r=6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dropout_blocks(kernels, dtype):
    # Masks applied 16 elements at a time (a tail of 12 per row), in each dtype.
    _check(n=600, n_in=300, n_out=20, r=16, p=0.25, dtype=dtype)


@pytest.mark.parametrize("n", [90, 2000])  # unmerged and merged paths
def test_strided_rows(kernels, n):
    # The kernels read x's rows in place when they are not adjacent in memory.
    _check(n=n, n_in=150, n_out=40, r=16, x_row_stride=200)


def test_switch_is_on_by_default():
    assert _C._vector_kernels()
