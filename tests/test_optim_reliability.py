"""peftcore.optim.Lamb / Lars reliability (issue #16): master weights that keep in-place
changes of 16-bit params, duplicate params, validated loaded state and hyper-parameters,
another optimizer's state_dict, non-contiguous grads and params, launch plans that follow
the state."""

import copy

import pytest
import torch
from torch import nn

from peftcore.optim import Lamb, Lars
from peftcore.optim import _fused

LARS_KW = dict(momentum=0.9, weight_decay=1e-3)


def kwargs_for(cls, **kw):
    return {**(LARS_KW if cls is Lars else {}), **kw}


# -- 8: master weights keep in-place changes of the 16-bit params ------------------------------------


@pytest.mark.parametrize("cls", [Lamb, Lars])
@pytest.mark.parametrize("layout", ["bucketed", "one_by_one", "small_buckets"])
def test_master_weights_take_in_place_param_changes(cls, layout, monkeypatch):
    if layout == "one_by_one":  # every tensor above the bucketing limit
        monkeypatch.setattr(_fused, "_BUCKET_TENSOR", 0, raising=False)
    elif layout == "small_buckets":  # several buckets per dtype
        monkeypatch.setattr(_fused, "_BUCKET_ELEMENTS", 40, raising=False)
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(4, 8).to(dt)) for dt in (torch.bfloat16, torch.float16, torch.bfloat16)]
    opt = cls(params, lr=0.05, master_weights=True, **kwargs_for(cls))
    for p in params:
        p.grad = torch.randn(p.shape).to(p.dtype)
    opt.step()
    masters = [opt.state[p]["master"].clone() for p in params]
    assert any(not torch.equal(m, p.float()) for m, p in zip(masters, params))  # fp32 precision kept
    with torch.no_grad():  # a checkpoint restore / sparse.apply / manual fix between steps
        params[0][1, :3] = 7.0
        params[2].copy_(torch.full((4, 8), -3.0))
    for group in opt.param_groups:
        group["lr"] = 0.0
    opt.step()
    assert torch.equal(params[0][1, :3].float(), torch.full((3,), 7.0))
    assert torch.equal(params[2].float(), torch.full((4, 8), -3.0))
    assert torch.equal(opt.state[params[0]]["master"][1, :3], torch.full((3,), 7.0))
    changed = torch.zeros(4, 8, dtype=torch.bool)
    changed[1, :3] = True
    # Untouched elements keep their float32 master values (not the rounded param).
    assert torch.equal(opt.state[params[0]]["master"][~changed], masters[0][~changed])
    assert torch.equal(opt.state[params[1]]["master"], masters[1])
    for group in opt.param_groups:
        group["lr"] = 0.05
    opt.step()  # steps from the new values
    assert (params[0][1, :3].float() - 7.0).abs().max() < 0.5
    assert (params[2].float() + 3.0).abs().max() < 0.5
    for p in params:
        assert torch.equal(p, opt.state[p]["master"].to(p.dtype))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cls", [Lamb, Lars])
def test_master_refresh_never_syncs_on_cuda(cls):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.Linear(256, 8)).cuda().to(torch.bfloat16)
    opt = cls(model.parameters(), lr=0.01, master_weights=True, **kwargs_for(cls))
    for step in range(3):
        opt.zero_grad()
        model(torch.randn(4, 64, device="cuda", dtype=torch.bfloat16)).float().sum().backward()
        with torch.no_grad():
            model[0].weight[0, 0] = 7.0
        if step:
            torch.cuda.set_sync_debug_mode("error")
        try:
            opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert abs(model[0].weight[0, 0].item() - 7.0) < 0.5


# -- 9: a parameter twice, in one group or in two --------------------------------------------------


@pytest.mark.parametrize("cls", [Lamb, Lars])
def test_duplicate_parameters_are_refused(cls):
    p, q = nn.Parameter(torch.randn(3, 4)), nn.Parameter(torch.randn(5))
    with pytest.raises(ValueError, match=r"position 2 \(shape \(3, 4\)\) of parameter group 0 is the same "
                                         r"tensor as the one at position 0"):
        cls([p, q, p])
    with pytest.raises(ValueError, match=r"'w2' \(position 1, shape \(5,\)\) of parameter group 0 is the same "
                                         r"tensor as the one at position 0"):
        cls([("w", q), ("w2", q)])
    with pytest.raises(ValueError, match=r"position 1 \(shape \(3, 4\)\) of parameter group 1 is already in "
                                         r"parameter group 0 \(position 0\)"):
        cls([{"params": [p]}, {"params": [q, p]}])
    opt = cls([p])
    with pytest.raises(ValueError, match=r"parameter group 1 is already in parameter group 0"):
        opt.add_param_group({"params": (x for x in [q, p])})
    with pytest.raises(ValueError, match=r"is the same tensor"):
        opt.add_param_group({"params": [q, q]})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": q})  # a single tensor, as in torch
    assert opt.param_groups[1]["params"] == [q]


# -- 10: loaded state with another shape or an unusable dtype ----------------------------------------


def stepped(cls, shape, dtype=torch.float32, **kw):
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(shape, dtype=dtype))
    opt = cls([p], lr=0.01, **kwargs_for(cls, **kw))
    p.grad = torch.randn(shape, dtype=dtype)
    opt.step()
    return p, opt


@pytest.mark.parametrize("cls", [Lamb, Lars])
def test_load_state_dict_validates_state_shapes_and_dtypes(cls):
    key = "exp_avg" if cls is Lamb else "momentum_buffer"
    _, src = stepped(cls, (5, 3))
    state = src.state_dict()
    p = nn.Parameter(torch.randn(3, 5))  # a transposed layer: same element count
    opt = cls([p], lr=0.01, **kwargs_for(cls))
    with pytest.raises(ValueError, match=rf"parameter 0 \(shape \(3, 5\)\) has '{key}' of shape \(5, 3\); "
                                         r"expected shape \(3, 5\)"):
        opt.load_state_dict(state)
    assert len(opt.state) == 0 and opt.param_groups[0]["params"] == [p]  # nothing loaded
    # Set directly instead of loaded: refused at first use.
    opt.state[p][key] = torch.zeros(5, 3)
    p.grad = torch.randn(3, 5)
    with pytest.raises(ValueError, match=rf"parameter 0 \(shape \(3, 5\)\) has '{key}' of shape \(5, 3\)"):
        opt.step()
    # A moment with an integer dtype cannot be used.
    q, src = stepped(cls, (4,))
    bad = copy.deepcopy(src.state_dict())  # state_dict() shares the state's dicts
    bad["state"][0][key] = torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match=rf"parameter 0 \(shape \(4,\)\) has '{key}' of dtype torch.int64; "
                                         r"expected a floating dtype \(used as torch.float32\)"):
        cls([q], **kwargs_for(cls)).load_state_dict(bad)
    # A float64 moment for a float32 parameter is cast (torch casts state to the param's dtype).
    good = src.state_dict()
    as_double = copy.deepcopy(good)
    as_double["state"][0] = {k: v.double() if k != "step" else v for k, v in good["state"][0].items()}
    a, b = nn.Parameter(q.detach().clone()), nn.Parameter(q.detach().clone())
    oa, ob = cls([a], **kwargs_for(cls)), cls([b], **kwargs_for(cls))
    oa.load_state_dict(good)
    ob.load_state_dict(as_double)
    assert ob.state[b][key].dtype == torch.float32
    for x, o in ((a, oa), (b, ob)):
        x.grad = torch.ones(4)
        o.step()
    assert torch.equal(a, b)


@pytest.mark.parametrize("cls", [Lamb, Lars])
def test_load_state_dict_validates_master_weights(cls):
    p, src = stepped(cls, (2, 6), dtype=torch.bfloat16, master_weights=True)
    state = copy.deepcopy(src.state_dict())
    state["state"][0]["master"] = state["state"][0]["master"].reshape(6, 2)
    opt = cls([p], master_weights=True, **kwargs_for(cls))
    with pytest.raises(ValueError, match=r"parameter 0 \(shape \(2, 6\)\) has 'master' of shape \(6, 2\); "
                                         r"expected shape \(2, 6\)"):
        opt.load_state_dict(state)


def test_loaded_step_counter_is_a_shared_copy():
    """The loaded counter is the optimizer's own (not advanced in the caller's dict, nor in
    the optimizer it came from) and stays one counter for the group."""
    torch.manual_seed(0)
    a, b = nn.Parameter(torch.randn(3)), nn.Parameter(torch.randn(2))
    src = Lamb([a, b])
    for _ in range(2):
        a.grad, b.grad = torch.randn(3), torch.randn(2)
        src.step()
    state = src.state_dict()
    a2, b2 = nn.Parameter(a.detach().clone()), nn.Parameter(b.detach().clone())
    opt = Lamb([a2, b2])
    opt.load_state_dict(state)
    assert opt.state[a2]["step"] is opt.state[b2]["step"]
    b2.grad = torch.randn(2)
    opt.step()  # only b has a gradient
    a2.grad = torch.randn(3)
    opt.step()
    assert float(opt.state[a2]["step"]) == 4 and float(opt.state[b2]["step"]) == 4
    assert float(state["state"][0]["step"]) == 2 and float(src.state[a]["step"]) == 2


# -- 18: another optimizer's state_dict --------------------------------------------------------------


@pytest.mark.parametrize("cls,other,missing", [
    (Lamb, lambda ps: Lars(ps, momentum=0.9), "'bias_correction'"),
    (Lamb, lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), "'bias_correction'"),
    (Lars, lambda ps: Lamb(ps), "'momentum'"),
    (Lars, lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), "'trust_coeff'"),
])
def test_loading_another_optimizers_state_dict_is_refused(cls, other, missing):
    model = nn.Linear(4, 3)
    src = other(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    src.step()
    opt = cls(model.parameters(), lr=0.02, **kwargs_for(cls))
    with pytest.raises(ValueError, match=rf"param_groups\[0\] lacks the {cls.__name__} hyper-parameter\(s\) "
                                         rf".*{missing}.*another optimizer's state_dict"):
        opt.load_state_dict(src.state_dict())
    assert opt.param_groups[0]["lr"] == 0.02 and len(opt.state) == 0  # unchanged
    opt.step()  # and still usable


@pytest.mark.parametrize("cls", [Lamb, Lars])
def test_loaded_hyperparameters_are_validated(cls):
    p, src = stepped(cls, (3,))
    state = copy.deepcopy(src.state_dict())
    state["param_groups"][0]["lr"] = float("nan")
    with pytest.raises(ValueError, match=r"Invalid learning rate: nan in the loaded param_groups\[0\]"):
        cls([p], **kwargs_for(cls)).load_state_dict(state)


# -- 20: non-contiguous grads and params, hyper-parameters, cached launch plans -------------------------


def test_clipping_accepts_non_contiguous_grads():
    torch.manual_seed(0)
    base, g = torch.randn(3, 4), torch.randn(4, 3)
    a, b = nn.Parameter(base.clone()), nn.Parameter(base.clone())
    oa, ob = Lamb([a], lr=0.1, max_grad_norm=0.05), Lamb([b], lr=0.1, max_grad_norm=0.05)
    a.grad = g.t()  # non-contiguous
    b.grad = g.t().contiguous()
    oa.step()
    ob.step()
    assert torch.equal(a, b)
    assert not a.grad.is_contiguous()


@pytest.mark.parametrize("cls", [Lamb, Lars])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_transposed_view_param_steps_like_its_contiguous_twin(cls, dtype):
    torch.manual_seed(0)
    base = torch.randn(6, 4).to(dtype)
    twin = nn.Parameter(base.t().contiguous())  # (4, 6), contiguous
    view = nn.Parameter(base.clone().t())  # (4, 6), a transposed view
    other_a = nn.Parameter(torch.randn(5).to(dtype))  # a contiguous neighbour in the same launch
    other_b = nn.Parameter(other_a.detach().clone())
    assert not view.is_contiguous()
    ptr, strides = view.data_ptr(), view.stride()
    kw = kwargs_for(cls, lr=0.05, weight_decay=0.01, master_weights=dtype != torch.float32)
    ot, ov = cls([twin, other_a], **kw), cls([view, other_b], **kw)
    for _ in range(4):
        g, h = torch.randn(4, 6).to(dtype), torch.randn(5).to(dtype)
        twin.grad, other_a.grad = g.clone(), h.clone()
        view.grad, other_b.grad = torch.empty_like(view).copy_(g), h.clone()  # the param's strides
        ot.step()
        ov.step()
        assert torch.equal(twin, view) and torch.equal(other_a, other_b)
    assert view.data_ptr() == ptr and view.stride() == strides  # updated in place
    for key, value in ot.state[twin].items():
        assert torch.equal(ov.state[view][key], value), key


@pytest.mark.parametrize("cls,kwargs,match", [
    (Lars, dict(lr=float("nan")), r"Invalid learning rate: nan \(lr must be a number >= 0\)"),
    (Lars, dict(eps=-1e-8), r"Invalid epsilon: -1e-08 \(eps must be a number >= 0\)"),
    (Lars, dict(momentum=float("nan")), r"Invalid momentum value: nan"),
    (Lars, dict(trust_coeff=-0.001), r"Invalid trust_coeff: -0.001"),
    (Lars, dict(dampening=float("nan")), r"Invalid dampening value: nan \(dampening must be a finite number\)"),
    (Lars, dict(weight_decay=float("nan")), r"Invalid weight_decay value: nan"),
    (Lamb, dict(max_grad_norm=-1), r"Invalid max_grad_norm: -1 \(max_grad_norm must be None or 0 to disable"),
    (Lamb, dict(max_grad_norm=float("nan")), r"Invalid max_grad_norm: nan"),
    (Lamb, dict(min_trust=float("nan")), r"Invalid min_trust: nan"),
    (Lamb, dict(betas=(0.9,)), r"Invalid betas: \(0.9,\) \(betas must be a pair"),
])
def test_invalid_hyperparameters_are_refused(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls([nn.Parameter(torch.randn(3))], **kwargs)


@pytest.mark.parametrize("cls", [Lamb, Lars])
def test_invalid_group_hyperparameters_are_refused(cls):
    p, q = nn.Parameter(torch.randn(3)), nn.Parameter(torch.randn(3))
    with pytest.raises(ValueError, match=r"Invalid learning rate: -1.0 in parameter group 1"):
        cls([{"params": [p]}, {"params": [q], "lr": -1.0}])
    opt = cls([p])
    with pytest.raises(ValueError, match=r"Invalid epsilon: nan in parameter group 1"):
        opt.add_param_group({"params": [q], "eps": float("nan")})
    assert len(opt.param_groups) == 1


def grads_for(model, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=g) for p in model.parameters()]


def step_with(model, opt, grads):
    for p, g in zip(model.parameters(), grads):
        p.grad = g.clone()
    opt.step()


@pytest.mark.parametrize("cls", [Lamb, Lars])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_clear_then_step_matches_a_fresh_optimizer(cls, dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2)).to(dtype)
    kw = kwargs_for(cls, lr=0.05, weight_decay=0.01, master_weights=dtype != torch.float32)
    opt = cls(model.parameters(), **kw)
    for seed in range(3):
        step_with(model, opt, [g.to(dtype) for g in grads_for(model, seed)])
    opt.state.clear()
    fresh_model = copy.deepcopy(model)
    fresh = cls(fresh_model.parameters(), **kw)
    for seed in (10, 11):
        grads = [g.to(dtype) for g in grads_for(model, seed)]
        step_with(model, opt, grads)
        step_with(fresh_model, fresh, grads)
        for p, q in zip(model.parameters(), fresh_model.parameters()):
            assert torch.equal(p, q)
    # The optimizer's state is the state it steps with.
    for p, q in zip(model.parameters(), fresh_model.parameters()):
        assert opt.state[p].keys() == fresh.state[q].keys()
        for key in opt.state[p]:
            assert torch.equal(opt.state[p][key], fresh.state[q][key]), key


@pytest.mark.parametrize("cls", [Lamb, Lars])
def test_replaced_state_tensor_is_the_one_stepped(cls):
    key = "exp_avg" if cls is Lamb else "momentum_buffer"
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    twin = copy.deepcopy(model)
    opt, ref = cls(model.parameters(), lr=0.05, **kwargs_for(cls)), cls(twin.parameters(), lr=0.05, **kwargs_for(cls))
    for o, m in ((opt, model), (ref, twin)):
        step_with(m, o, grads_for(model, 0))
    for p, q in zip(model.parameters(), twin.parameters()):
        opt.state[p][key] = torch.zeros_like(p)  # a new tensor ...
        ref.state[q][key].zero_()  # ... and the same values in place
    for o, m in ((opt, model), (ref, twin)):
        step_with(m, o, grads_for(model, 1))
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)
        assert torch.equal(opt.state[p][key], ref.state[q][key])


def test_lars_momentum_switched_on_later_gets_a_buffer():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = Lars(model.parameters(), lr=0.05, momentum=0.0, weight_decay=1e-3)
    for seed in range(2):
        step_with(model, opt, grads_for(model, seed))
    opt.param_groups[0]["momentum"] = 0.9
    twin = copy.deepcopy(model)
    ref = Lars(twin.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    for seed in (5, 6, 7):
        step_with(model, opt, grads_for(model, seed))
        step_with(twin, ref, grads_for(model, seed))
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)
        assert torch.equal(opt.state[p]["momentum_buffer"], ref.state[q]["momentum_buffer"])
