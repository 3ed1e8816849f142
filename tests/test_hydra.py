"""torch.ops.peftcore.hydra_linear and peftcore.HydraLinear against peftcore.reference.hydra."""

import pytest
import torch
from torch import nn

import peftcore
from peftcore import reference
from helpers import (LOW_PRECISION, assert_as_accurate_as_torch, assert_compiles_fullgraph, assert_rel_close,
                     assert_runs_under_autocast_with_fp32_weights, max_abs)

hydra_op = torch.ops.peftcore.hydra_linear
hydra_bwd = torch.ops.peftcore.hydra_linear_backward

# (leading shape, in, out, r_p, r_s): odd sizes, one branch off, many CPU row blocks.
SHAPES = [((5,), 7, 3, 2, 1), ((2, 3), 1, 1, 1, 1), ((33,), 127, 65, 8, 0), ((17,), 40, 33, 0, 5),
          ((1200,), 300, 20, 3, 4), ((3, 401), 50, 30, 2, 3)]  # last: CPU row slabs with a remainder


def make(lead, n_in, n_out, rp, rs, dtype, device, bias=True):
    g = torch.Generator().manual_seed(hash((lead, n_in, n_out, rp, rs)) % 2**31)

    def rnd(*shape, s=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * s).to(dtype).to(device).requires_grad_(True)

    return [rnd(*lead, n_in), rnd(n_out, n_in, s=n_in ** -0.5), rnd(n_out) if bias else None,
            rnd(rp, n_in, s=n_in ** -0.5) if rp else None, rnd(n_out, rp) if rp else None,
            rnd(rs, n_out, s=n_out ** -0.5) if rs else None, rnd(n_out, rs) if rs else None]


def seed_for(device):
    return torch.tensor([987654321, 12], dtype=torch.int64, device=device)


@pytest.mark.parametrize("lead,n_in,n_out,rp,rs", SHAPES)
@pytest.mark.parametrize("p", [0.0, 0.3])
def test_float64_matches_reference(device, lead, n_in, n_out, rp, rs, p):
    t = make(lead, n_in, n_out, rp, rs, torch.float64, device)
    seed = seed_for(device)
    out = hydra_op(*t, 0.7, 1.3, p, seed if p > 0 else None)[0]
    ref = reference.hydra_linear(*t, 0.7, 1.3, p, seed)
    assert max_abs(out, ref) <= 1e-10
    grad = torch.randn_like(ref)
    params = [x for x in t if x is not None]
    for name, a, b in zip(range(7), torch.autograd.grad(out, params, grad), torch.autograd.grad(ref, params, grad)):
        assert max_abs(a, b) <= 1e-10, name


@pytest.mark.parametrize("dtype", [torch.float32, *LOW_PRECISION])
@pytest.mark.parametrize("rows", [40, 400])  # fp32 at 400 rows: the merged-weight path
def test_low_precision_as_accurate_as_torch(device, dtype, rows):
    low = [x.detach().requires_grad_(True) if x is not None else None
           for x in make((rows,), 96, 64, 8, 4, dtype, device)]
    hi = [x.detach().double().requires_grad_(True) if x is not None else None for x in low]
    out = hydra_op(*low, 2.0, 2.0, 0.0, None)[0]
    torch_low = reference.hydra_linear(*low, 2.0, 2.0)
    ref = reference.hydra_linear(*hi, 2.0, 2.0)
    assert_as_accurate_as_torch(out, torch_low, ref, f"out {dtype}")
    g = torch.randn(ref.shape, dtype=torch.float64, device=device)
    params = [x for x in low if x is not None]
    for a, b, c in zip(torch.autograd.grad(out, params, g.to(dtype)),
                       torch.autograd.grad(torch_low, params, g.to(dtype)),
                       torch.autograd.grad(ref, [x for x in hi if x is not None], g)):
        assert_as_accurate_as_torch(a, b, c, f"grad {dtype}")


@pytest.mark.parametrize("lead,n_in,n_out", [((4, 5), 5, 4), ((3,), 9, 8)])  # N large / small: merged or not
def test_gradcheck_and_opcheck(device, lead, n_in, n_out):
    for p in (0.0, 0.4):
        t = make(lead, n_in, n_out, 2, 3, torch.float64, device)
        seed = seed_for(device) if p > 0 else None
        assert torch.autograd.gradcheck(lambda *a: hydra_op(*a, 0.5, 1.5, p, seed)[0], tuple(t))
        t32 = [x.detach().float().requires_grad_(True) if x is not None else None for x in t]
        torch.library.opcheck(hydra_op, (*t32, 0.5, 1.5, p, seed))
        out, h, hp, hs = hydra_op(*t32, 0.5, 1.5, p, seed)
        assert h.numel() == (out.numel() if p > 0 else 0), "h exists only for dropout's mask on it"
        args = [x.detach() if isinstance(x, torch.Tensor) else x
                for x in (torch.randn_like(out), t32[0], t32[1], t32[2], h, *t32[3:], hp, hs)]
        torch.library.opcheck(hydra_bwd, (*args, 0.5, 1.5, p, seed, [True] * 7))


@pytest.mark.parametrize(
    "change,pattern",
    [(lambda t: t.__setitem__(4, None), "A_p and B_p must both be given"),
     (lambda t: t.__setitem__(5, t[5][:, :-1]), r"A_s must be \[r_s, out_features\]"),
     (lambda t: t.__setitem__(3, t[3].double()), "A_p has dtype Double but x has dtype Float")],
)
def test_bad_inputs(change, pattern):
    t = [x.detach() if x is not None else None for x in make((4,), 6, 5, 2, 2, torch.float32, "cpu")]
    change(t)
    with pytest.raises(RuntimeError, match=pattern):
        hydra_op(*t, 1.0, 1.0, 0.0, None)


def test_layer_merge_unmerge_round_trip_and_eval_equivalence():
    torch.manual_seed(0)
    base = nn.Linear(48, 40)
    layer = peftcore.HydraLinear(base, r_parallel=4, r_sequential=3, alpha_parallel=8, alpha_sequential=6)
    with torch.no_grad():
        layer.B_p.normal_(0, 0.1)
        layer.B_s.normal_(0, 0.1)
    w0, b0 = base.weight.detach().clone(), base.bias.detach().clone()
    x = torch.randn(10, 48)
    y = layer(x)
    w_ref, b_ref = reference.hydra_merged_weight(w0.double(), b0.double(), layer.A_p.double(), layer.B_p.double(),
                                                 layer.A_s.double(), layer.B_s.double(), 2.0, 2.0)
    layer.merge()
    assert_rel_close(base.weight, w_ref, 1e-6, "merged weight")
    assert_rel_close(layer(x), y, 1e-5, "merged output")
    layer.unmerge()
    assert_rel_close(base.weight, w0, 1e-5, "unmerged weight")
    assert_rel_close(base.bias, b0, 1e-5, "unmerged bias")


def test_layer_fresh_equals_base_and_trains():
    torch.manual_seed(0)
    base = nn.Linear(16, 16)
    layer = peftcore.HydraLinear(base, 4, 4, dropout=0.1)
    x = torch.randn(8, 16)
    layer.eval()
    torch.testing.assert_close(layer(x), base(x))
    layer.train()
    target = nn.Linear(16, 16)
    opt = torch.optim.Adam([p for p in layer.parameters() if p.requires_grad], lr=1e-2)
    first = None
    for _ in range(60):
        x = torch.randn(32, 16)
        loss = (layer(x) - target(x).detach()).square().mean()
        first = first or loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.8 * first
    with pytest.raises(ValueError, match="at least one"):
        peftcore.HydraLinear(nn.Linear(4, 4), 0, 0)


def test_hydra_runs_under_autocast_with_fp32_weights():
    assert_runs_under_autocast_with_fp32_weights(peftcore.HydraLinear(nn.Linear(64, 48), 4, 4))


def test_hydra_layer_compiles_fullgraph():
    assert_compiles_fullgraph(peftcore.HydraLinear(nn.Linear(32, 48), 4, 3, dropout=0.1))
