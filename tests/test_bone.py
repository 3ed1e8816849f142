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
        peftcore.BoneLinear(nn.Linear(8, 8), r=4, variant="bat")
    with pytest.raises(ValueError, match=r"r must be an int in \[1, in_features=8\]"):
        peftcore.BoneLinear(nn.Linear(8, 8), r=9)
    with pytest.raises(ValueError, match="mini_r must be a positive divisor"):
        peftcore.BoneLinear(nn.Linear(8, 9), r=4, variant="mini", mini_r=2)
