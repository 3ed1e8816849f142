"""Inputs the adapter ops must refuse on every path: a `meta` tensor beside CPU ones
(the dispatcher then runs the fake as the Meta kernel), wrong adapter shapes seen
only by the fake (torch.compile's tracing), non-floating adapter tensors in a layer,
a backward gradient of another dtype. Also: the layers run on the `meta` device."""

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

import peftcore

ops = torch.ops.peftcore


def lora_args(device="cpu", r=4, n_in=8, n_out=6, meta=None):
    t = {"x": torch.randn(3, n_in), "weight": torch.randn(n_out, n_in), "bias": torch.randn(n_out),
         "lora_A": torch.randn(r, n_in), "lora_B": torch.randn(n_out, r)}
    if meta:
        t[meta] = t[meta].to("meta")
    return t


@pytest.mark.parametrize("meta", ["weight", "bias", "lora_A", "lora_B"])
def test_lora_refuses_a_meta_tensor_beside_cpu_ones(meta):
    t = lora_args(meta=meta)
    with pytest.raises(RuntimeError, match=f"lora_linear: {meta} is on meta but x is on cpu"):
        ops.lora_linear(t["x"], t["weight"], t["bias"], t["lora_A"], t["lora_B"], 1.0, 0.0, None)


def test_hydra_and_bone_refuse_a_meta_tensor_beside_cpu_ones():
    x, w = torch.randn(3, 8), torch.randn(8, 8)
    with pytest.raises(RuntimeError, match="hydra_linear: A_p is on meta"):
        ops.hydra_linear(x, w, None, torch.randn(2, 8, device="meta"), torch.randn(8, 2), None, None, 1.0, 1.0, 0.0,
                         None)
    with pytest.raises(RuntimeError, match="bone_linear: up is on meta"):
        ops.bone_linear(x, w, None, torch.randn(8, 4, device="meta"), 4)
    with pytest.raises(RuntimeError, match="bone_bat_linear: weight is on meta"):
        ops.bone_bat_linear(x, w.to("meta"), None, torch.randn(2, 4, 4))


@pytest.mark.parametrize("bad,pattern", [
    ({"lora_A": (4, 7)}, r"lora_A must be \[r, in_features\]"),
    ({"lora_B": (5, 4)}, r"lora_B must be \[out_features, r\]"),
    ({"bias": (5,)}, r"bias must be \[out_features\]"),
    ({"weight": (6, 7)}, r"x must have shape \[\.\.\., in_features=7\]"),
])
def test_the_lora_fake_checks_shapes(bad, pattern):
    shapes = {"x": (3, 8), "weight": (6, 8), "bias": (6,), "lora_A": (4, 8), "lora_B": (6, 4), **bad}
    with FakeTensorMode():
        t = {k: torch.empty(v) for k, v in shapes.items()}
        with pytest.raises(RuntimeError, match=pattern):
            ops.lora_linear(t["x"], t["weight"], t["bias"], t["lora_A"], t["lora_B"], 1.0, 0.0, None)


def test_the_hydra_and_bone_fakes_check_shapes():
    with FakeTensorMode():
        x, w = torch.empty(3, 8), torch.empty(8, 8)
        with pytest.raises(RuntimeError, match=r"A_s must be \[r_s, out_features\]"):
            ops.hydra_linear(x, w, None, None, None, torch.empty(2, 7), torch.empty(8, 2), 1.0, 1.0, 0.0, None)
        with pytest.raises(RuntimeError, match=r"up must be \[out_features, r\]"):
            ops.bone_linear(x, w, None, torch.empty(8, 3), 4)
        with pytest.raises(RuntimeError, match=r"block must be \[out_features / r, r, r\]"):
            ops.bone_bat_linear(x, w, None, torch.empty(3, 4, 4))


def test_compile_reports_a_bad_adapter_shape_at_trace_time():
    def f(x, w, a, b):
        return peftcore.ops.lora_linear(x, w, None, a, b, 1.0)

    with pytest.raises(Exception, match=r"lora_B must be \[out_features, r\]"):
        torch.compile(f, fullgraph=True, backend="eager")(torch.randn(3, 8), torch.randn(6, 8), torch.randn(4, 8),
                                                          torch.randn(5, 4))


@pytest.mark.parametrize("make", [lambda: peftcore.LoraLinear(nn.Linear(8, 6), r=2),
                                  lambda: peftcore.HydraLinear(nn.Linear(8, 6), 2, 2),
                                  lambda: peftcore.BoneLinear(nn.Linear(8, 6), r=4)], ids=["lora", "hydra", "bone"])
def test_layers_run_on_the_meta_device(make):
    layer = make().to("meta")
    y = layer(torch.empty(5, 8, device="meta"))
    assert y.device.type == "meta" and tuple(y.shape) == (5, 6)


def test_a_non_floating_adapter_tensor_is_an_error_not_a_cast():
    layer = peftcore.LoraLinear(nn.Linear(8, 6), r=2)
    layer.lora_A.weight = nn.Parameter(torch.ones(2, 8, dtype=torch.int8), requires_grad=False)
    with pytest.raises(TypeError, match="adapter tensors must be floating point, got torch.int8"):
        layer(torch.randn(3, 8))


@pytest.mark.parametrize("op", ["bone_linear_backward", "bone_bat_linear_backward"])
def test_bone_backward_ops_check_the_gradient_dtype(op):
    x, w = torch.randn(3, 8), torch.randn(8, 8)
    g = torch.randn(3, 8, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=f"{op}: grad_out has dtype Double but x has dtype Float"):
        if op == "bone_linear_backward":
            ops.bone_linear_backward(g, x, w, torch.randn(8, 4), torch.randn(3, 4), 4, [True] * 4)
        else:
            ops.bone_bat_linear_backward(g, x, w, torch.randn(2, 4, 4), [True] * 4)


@pytest.mark.parametrize("kwargs,pattern", [
    ({"alpha": float("nan")}, "LoraConfig.alpha must be a finite number"),
    ({"alpha": 1e308}, "LoraConfig.alpha must be a finite number"),
    ({"use_rslora": "yes"}, "LoraConfig.use_rslora must be True or False"),
    ({"r": "4"}, "LoraConfig.r must be an int >= 1"),
    ({"dropout": 1.0}, r"LoraConfig.dropout must be in \[0, 1\)"),
    ({"target_modules": [1]}, "LoraConfig.target_modules must be a list of module names"),
    ({"rank_pattern": {"q": 0}}, r"LoraConfig.rank_pattern\['q'\] must be an int >= 1"),
])
def test_lora_config_values_are_checked(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        peftcore.LoraConfig(**kwargs)


def test_hydra_and_bone_config_values_are_checked():
    with pytest.raises(ValueError, match="at least one of r_parallel and r_sequential"):
        peftcore.HydraConfig(r_parallel=0, r_sequential=0)
    with pytest.raises(ValueError, match="HydraConfig.alpha_sequential must be a finite number"):
        peftcore.HydraConfig(alpha_sequential=float("inf"))
    with pytest.raises(ValueError, match="BoneConfig.variant must be"):
        peftcore.BoneConfig(variant="tile")
    with pytest.raises(ValueError, match="BoneConfig.mini_r must be an int >= 1"):
        peftcore.BoneConfig(mini_r=0)
