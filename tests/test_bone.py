"""peftcore.BoneLinear (MiSS bone / mini) against HF PEFT's MissLinear."""

import copy

import pytest
import torch
from torch import nn

import peftcore
from helpers import assert_rel_close, assert_same_forward_backward

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


def test_bat_backward_band_covers_many_blocks():
    # More output rows than one band (512): the banded contraction must still be exact.
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(7, 64, generator=gen, dtype=torch.float64)
    w = torch.randn(1024, 64, generator=gen, dtype=torch.float64)
    blk = (torch.randn(1024 // 16, 16, 16, generator=gen, dtype=torch.float64) * 0.1).requires_grad_(True)
    from peftcore import reference
    g = torch.randn(7, 1024, generator=gen, dtype=torch.float64)
    (ours,) = torch.autograd.grad(torch.ops.peftcore.bone_bat_linear(x, w, None, blk), [blk], g)
    (ref,) = torch.autograd.grad(torch.nn.functional.linear(x, reference.bat_weight(w, blk)), [blk], g)
    assert (ours - ref).abs().max() < 1e-10


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
