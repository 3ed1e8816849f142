"""peftcore.BoneLinear (MiSS bone / mini) against HF PEFT's MissLinear."""

import copy

import pytest
import torch
from torch import nn

import peftcore
from helpers import (assert_as_accurate_as_torch, assert_compiles_fullgraph, assert_rel_close,
                     assert_runs_under_autocast_with_fp32_weights, assert_same_forward_backward)

from peftcore import reference

peft = pytest.importorskip("peft")


def peft_miss(base, r, variant, mini_r):
    from peft import MissConfig
    from peft.tuners.miss.layer import MissLinear

    init = True if variant == "bone" else "mini"
    cfg = MissConfig(r=r, init_weights=init, mini_r=mini_r)
    return MissLinear(copy.deepcopy(base), "default", config=cfg, r=r)


@pytest.mark.parametrize("variant,n_in,n_out,r,mini_r", [
    ("bone", 64, 48, 16, 1), ("bone", 70, 33, 16, 1), ("bone", 7, 5, 3, 1),
    ("mini", 64, 48, 16, 4), ("mini", 70, 36, 8, 6),
])
def test_matches_peft_miss(device, variant, n_in, n_out, r, mini_r):
    torch.manual_seed(0)
    base = nn.Linear(n_in, n_out, device=device)
    ours = peftcore.BoneLinear(copy.deepcopy(base), r=r, variant=variant, mini_r=mini_r)
    theirs = peft_miss(base, r, variant, mini_r).to(device)
    with torch.no_grad():
        ours.miss_block.normal_(0, 0.1)
        theirs.miss_block["default"].copy_(ours.miss_block)
    x = torch.randn(3, 5, n_in, device=device)
    y1 = assert_same_forward_backward(ours, theirs, x, [(ours.miss_block, theirs.miss_block["default"])])
    ours.merge()
    assert_rel_close(ours(x), y1.detach(), 1e-5, "merged")
    ours.unmerge()
    assert_rel_close(ours.base_layer.weight, base.weight, 1e-6, "unmerged")


def test_bad_arguments():
    with pytest.raises(ValueError, match="variant must be one of"):
        peftcore.BoneLinear(nn.Linear(8, 8), r=4, variant="nope")
    with pytest.raises(ValueError, match="bat form needs in_features"):
        peftcore.BoneLinear(nn.Linear(8, 6), r=4, variant="bat")
    with pytest.raises(ValueError, match=r"r must be an int in \[1, in_features=8\]"):
        peftcore.BoneLinear(nn.Linear(8, 8), r=9)
    with pytest.raises(ValueError, match="mini_r must be a positive divisor"):
        peftcore.BoneLinear(nn.Linear(8, 9), r=4, variant="mini", mini_r=2)


@pytest.mark.parametrize("n_in,n_out,r", [(64, 48, 16), (32, 32, 4), (8, 16, 8)])
def test_bat_matches_peft_miss(device, n_in, n_out, r):
    from peft import MissConfig
    from peft.tuners.miss.layer import MissLinear

    torch.manual_seed(0)
    base = nn.Linear(n_in, n_out, device=device)
    ours = peftcore.BoneLinear(copy.deepcopy(base), r=r, variant="bat")
    theirs = MissLinear(copy.deepcopy(base), "default", config=MissConfig(r=r, init_weights="bat"), r=r).to(device)
    with torch.no_grad():
        ours.miss_block.normal_(0, 0.1)
        theirs.miss_block["default"].copy_(ours.miss_block)
    x = torch.randn(4, 3, n_in, device=device)
    y = assert_same_forward_backward(ours, theirs, x, [(ours.miss_block, theirs.miss_block["default"])])
    ours.merge()
    assert_rel_close(ours(x), y, 1e-5, "merged")
    ours.unmerge()
    assert_rel_close(ours.base_layer.weight, base.weight, 1e-5, "unmerged")


def test_bat_op_reference_gradcheck_opcheck(device):
    from peftcore import reference

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 8, generator=gen, dtype=torch.float64).to(device).requires_grad_(True)
    w = torch.randn(12, 8, generator=gen, dtype=torch.float64).to(device).requires_grad_(True)
    b = torch.randn(12, generator=gen, dtype=torch.float64).to(device).requires_grad_(True)
    blk = (torch.randn(3, 4, 4, generator=gen, dtype=torch.float64) * 0.1).to(device).requires_grad_(True)
    op = torch.ops.peftcore.bone_bat_linear
    ref = torch.nn.functional.linear(x, reference.bat_weight(w, blk), b)
    out = op(x, w, b, blk)
    assert (out - ref).abs().max() < 1e-12
    for a, c in zip(torch.autograd.grad(out.sum(), [x, w, b, blk]), torch.autograd.grad(ref.sum(), [x, w, b, blk])):
        assert (a - c).abs().max() < 1e-12
    assert torch.autograd.gradcheck(op, (x, w, b, blk))
    torch.library.opcheck(op, (x.float().detach().requires_grad_(True), w.float().detach(), b.float().detach(),
                               blk.float().detach().requires_grad_(True)))
    with pytest.raises(RuntimeError, match="divisible by the block size r=4"):
        op(torch.randn(2, 10, device=device), torch.randn(12, 10, device=device), None, torch.zeros(3, 4, 4, device=device))


@pytest.mark.parametrize("band_elements", [1, 64 * 16 * 5, 1 << 24])
def test_bat_backward_bands_are_exact(band_elements):
    # One block per band, bands of five blocks (the last one short), one band for all.
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(7, 64, generator=gen, dtype=torch.float64)
    w = torch.randn(1024, 64, generator=gen, dtype=torch.float64)
    blk = torch.randn(1024 // 16, 16, 16, generator=gen, dtype=torch.float64) * 0.1
    g = torch.randn(7, 1024, generator=gen, dtype=torch.float64)
    ours = torch.ops.peftcore.bone_bat_linear_backward(g, x, w, blk, [False, False, False, True], band_elements)[3]
    leaf = blk.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(torch.nn.functional.linear(x, reference.bat_weight(w, leaf)), [leaf], g)
    assert (ours - ref).abs().max() < 1e-10


def test_bat_backward_rejects_an_empty_band():
    x, w, blk, g = torch.randn(2, 8), torch.randn(8, 8), torch.zeros(2, 4, 4), torch.randn(2, 8)
    with pytest.raises(RuntimeError, match="band_elements must be positive"):
        torch.ops.peftcore.bone_bat_linear_backward(g, x, w, blk, [False, False, False, True], 0)


def test_bone_saves_no_copy_of_x():
    layer = peftcore.BoneLinear(nn.Linear(256, 128), r=16)
    x = torch.randn(64, 256, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = layer(x)
    params = {p.data_ptr() for p in layer.parameters()} | {layer.block_sum.data_ptr()}
    stored = sum(t.untyped_storage().nbytes() for t in saved if t.data_ptr() not in params)
    assert stored <= 64 * 16 * 4 + 64, stored  # the N x r hidden (+ the zero-size stand-in)
    y.sum().backward()
    assert x.grad is not None and layer.miss_block.grad is not None


# ----------------------------------------------------------------------------- bone_linear op
bone_op = torch.ops.peftcore.bone_linear


@pytest.mark.parametrize("lead,n_in,n_out,r", [((5,), 64, 48, 16), ((2, 3), 70, 33, 16), ((4,), 7, 5, 3),
                                               ((1,), 9, 4, 9),
                                               # many rows: the merged-weight path (W + up S)
                                               ((300,), 20, 12, 8), ((8, 40), 16, 16, 4)])
def test_bone_op_float64_gradcheck_opcheck(device, lead, n_in, n_out, r):
    gen = torch.Generator().manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64).to(device).requires_grad_(True)  # noqa: E731
    x, w, b, up = mk(*lead, n_in), mk(n_out, n_in), mk(n_out), mk(n_out, r)
    out, hidden = bone_op(x, w, b, up, r)
    ref = reference.bone_linear(x, w, b, up, r)
    assert (out - ref).abs().max() < 1e-12 and hidden.shape == (x.numel() // n_in, r)
    for a, c in zip(torch.autograd.grad(out.sum(), [x, w, b, up]), torch.autograd.grad(ref.sum(), [x, w, b, up])):
        assert (a - c).abs().max() < 1e-12
    assert torch.autograd.gradcheck(lambda *a: bone_op(*a, r)[0], (x, w, b, up))
    x_nc = mk(n_in, *lead).transpose(0, -1)  # non-contiguous input
    torch.testing.assert_close(bone_op(x_nc, w, b, up, r)[0], reference.bone_linear(x_nc, w, b, up, r))
    torch.library.opcheck(bone_op, (x.float().detach().requires_grad_(True), w.float().detach(), None,
                                    up.float().detach().requires_grad_(True), r))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_bone_op_low_precision_as_accurate_as_torch(device, dtype):
    gen = torch.Generator().manual_seed(1)
    hi = [torch.randn(*s, generator=gen, dtype=torch.float64).to(device) for s in ((40, 96), (64, 96), (64,), (64, 16))]
    low = [t.to(dtype).requires_grad_(True) for t in hi]
    hi = [t.requires_grad_(True) for t in hi]
    out = bone_op(*low[:3], low[3], 16)[0]
    torch_low = reference.bone_linear(*low[:3], low[3], 16)
    ref = reference.bone_linear(*hi[:3], hi[3], 16)
    assert_as_accurate_as_torch(out, torch_low, ref, f"out {dtype}")
    g = torch.randn(ref.shape, dtype=torch.float64, device=device)
    for a, b, c in zip(torch.autograd.grad(out, low, g.to(dtype)), torch.autograd.grad(torch_low, low, g.to(dtype)),
                       torch.autograd.grad(ref, hi, g)):
        assert_as_accurate_as_torch(a, b, c, f"grad {dtype}")


def test_bone_op_errors_name_the_argument():
    x, w = torch.randn(2, 8), torch.randn(4, 8)
    with pytest.raises(RuntimeError, match=r"bone_linear: up must be \[out_features, r\]"):
        bone_op(x, w, None, torch.randn(4, 3), 2)
    with pytest.raises(RuntimeError, match=r"bone_linear: r must be in \[1, in_features=8\]"):
        bone_op(x, w, None, torch.randn(4, 9), 9)
    with pytest.raises(RuntimeError, match=r"bone_linear: bias"):
        bone_op(x, w, torch.randn(5), torch.randn(4, 2), 2)


@pytest.mark.parametrize("variant", ["bone", "bat"])
def test_bone_runs_under_autocast_with_fp32_weights(variant):
    assert_runs_under_autocast_with_fp32_weights(peftcore.BoneLinear(nn.Linear(64, 48), r=16, variant=variant))


@pytest.mark.parametrize("make", [
    lambda: peftcore.BoneLinear(nn.Linear(32, 48), r=16, variant="bat"),
    lambda: peftcore.BoneLinear(nn.Linear(30, 48), r=8),
    lambda: peftcore.BoneLinear(nn.Linear(32, 48), r=8, variant="mini", mini_r=6),
    lambda: peftcore.BoneLinear(nn.Linear(32, 48), r=8, dropout=0.1),
], ids=["bat", "bone", "mini", "bone-dropout"])
def test_bone_layers_compile_fullgraph(make):
    assert_compiles_fullgraph(make())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bat_merge_unmerge_cycles_restore_w_exactly(dtype):
    layer = peftcore.BoneLinear(nn.Linear(64, 48), r=16, variant="bat").to(dtype)
    with torch.no_grad():
        layer.miss_block.normal_(0, 0.3)
    weight = layer.base_layer.weight.detach().clone()
    for _ in range(100):
        layer.merge()
        layer.unmerge()
    assert torch.equal(layer.base_layer.weight, weight)


def test_bat_unmerge_of_a_changed_merged_weight_solves():
    layer = peftcore.BoneLinear(nn.Linear(64, 48), r=16, variant="bat").double()
    with torch.no_grad():
        layer.miss_block.normal_(0, 0.3)
    layer.merge()
    with torch.no_grad():  # W' edited while merged: unmerge must invert the edited W', not restore the old W
        layer.base_layer.weight.add_(1.0)
    edited = layer.base_layer.weight.detach().clone()
    layer.unmerge()
    torch.testing.assert_close(reference.bat_weight(layer.base_layer.weight, layer.miss_block), edited)
