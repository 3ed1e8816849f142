"""peftcore.LoraLinear: HF PEFT parity, initialisation, merge/unmerge, training behaviour."""

import math

import pytest
import torch
from torch import nn

import peftcore
from peftcore._peers import peft_lora_linear
from helpers import (assert_compiles_fullgraph, assert_rel_close, assert_runs_under_autocast_with_fp32_weights,
                     assert_same_forward_backward)

# in/out of 1, 7, 127, 4096 and r of 1, 8, 64 (acceptance of the foundation issue).
PEFT_CASES = [
    (1, 1, 1), (7, 1, 8), (1, 7, 1), (7, 7, 8), (127, 7, 64), (7, 127, 8),
    (127, 127, 1), (127, 127, 64), (4096, 7, 8), (7, 4096, 1), (4096, 127, 64), (4096, 4096, 8),
]


def paired_layers(n_in, n_out, r, alpha, device, dtype=torch.float32, use_rslora=False, bias=True):
    base = nn.Linear(n_in, n_out, bias=bias, device=device, dtype=dtype)
    ours = peftcore.LoraLinear(base, r=r, alpha=alpha, use_rslora=use_rslora)
    peft = peft_lora_linear(base, r=r, alpha=alpha, use_rslora=use_rslora)
    with torch.no_grad():
        ours.lora_B.weight.normal_(0, 0.1)  # B = 0 would hide any error in the LoRA path
        peft.lora_A["default"].weight.copy_(ours.lora_A.weight)
        peft.lora_B["default"].weight.copy_(ours.lora_B.weight)
    peft.base_layer.requires_grad_(False)
    return ours, peft


@pytest.mark.parametrize("n_in,n_out,r", PEFT_CASES)
@pytest.mark.parametrize("use_rslora", [False, True])
def test_matches_hf_peft_fp32(device, n_in, n_out, r, use_rslora):
    ours, peft = paired_layers(n_in, n_out, r, alpha=2 * r + 1, device=device, use_rslora=use_rslora)
    assert ours.scaling == pytest.approx(peft.scaling["default"])
    x = torch.randn(3, 5, n_in, device=device)
    assert_same_forward_backward(ours, peft, x, [(ours.lora_A.weight, peft.lora_A["default"].weight),
                                                 (ours.lora_B.weight, peft.lora_B["default"].weight)])
    assert ours.base_layer.weight.grad is None


def test_parameter_names_shapes_and_init_like_peft():
    base = nn.Linear(20, 12)
    ours = peftcore.LoraLinear(base, r=4, alpha=8)
    peft = peft_lora_linear(base, r=4, alpha=8)
    ours_names = {n: p.shape for n, p in ours.named_parameters()}
    peft_names = {n.replace(".default", ""): p.shape for n, p in peft.named_parameters()}
    assert ours_names == peft_names
    assert ours.base_layer is base and ours.base_layer.weight is base.weight  # shared
    assert not base.weight.requires_grad and not base.bias.requires_grad
    assert torch.count_nonzero(ours.lora_B.weight) == 0
    bound = 1 / math.sqrt(20)  # kaiming_uniform(a=sqrt(5)) bound for fan_in=20
    a = ours.lora_A.weight
    assert a.abs().max() <= bound and a.std() > bound / 4
    x = torch.randn(6, 20)
    assert torch.allclose(ours(x), base(x), atol=1e-6)  # fresh adapter: output unchanged


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_unmerge_round_trip(device, dtype):
    base = nn.Linear(64, 48, device=device, dtype=dtype)
    layer = peftcore.LoraLinear(base, r=8, alpha=16)
    with torch.no_grad():
        layer.lora_B.weight.normal_(0, 0.2)
    w0 = base.weight.detach().clone()
    x = torch.randn(10, 64, device=device, dtype=dtype)
    y_unmerged = layer(x)
    layer.merge()
    assert layer.merged
    y_merged = layer(x)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    assert_rel_close(y_merged, y_unmerged, tol, "merged output")
    layer.merge()  # idempotent
    layer.unmerge()
    assert not layer.merged
    ulp = torch.finfo(dtype).eps * w0.abs().max().item()
    assert (base.weight - w0).abs().max().item() <= 2 * ulp


def test_dropout_only_in_training_and_eval_matches_merged():
    base = nn.Linear(32, 16)
    layer = peftcore.LoraLinear(base, r=4, alpha=8, dropout=0.5)
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    x = torch.randn(8, 32)
    layer.train()
    assert not torch.equal(layer(x), layer(x))
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    y_eval = layer(x)
    layer.merge()
    assert_rel_close(layer(x), y_eval, 1e-5, "eval vs merged")


def test_adapters_in_fp32_on_a_bf16_base():
    base = nn.Linear(16, 8, dtype=torch.bfloat16)
    layer = peftcore.LoraLinear(base, r=2)
    layer.lora_A.float()
    layer.lora_B.float()
    x = torch.randn(4, 16, dtype=torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert layer.lora_A.weight.grad.dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs,pattern",
    [({"r": 0}, "positive int"), ({"r": -2}, "positive int"), ({"r": 2.5}, "positive int"),
     ({"dropout": -0.1}, r"dropout must be in \[0, 1\)"), ({"dropout": 1.0}, r"\[0, 1\)")],
)
def test_bad_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        peftcore.LoraLinear(nn.Linear(4, 4), **kwargs)
    with pytest.raises(TypeError, match="wraps an nn.Linear"):
        peftcore.LoraLinear(nn.Conv1d(4, 4, 1))


def test_training_reduces_loss_and_only_adapters_change():
    torch.manual_seed(0)
    base = nn.Linear(16, 16)
    layer = peftcore.LoraLinear(base, r=4, alpha=8)
    w0 = base.weight.detach().clone()
    target = nn.Linear(16, 16)
    opt = torch.optim.SGD([p for p in layer.parameters() if p.requires_grad], lr=0.1)
    losses = []
    for _ in range(50):
        x = torch.randn(32, 16)
        loss = (layer(x) - target(x).detach()).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    assert torch.equal(base.weight, w0)


def test_lora_runs_under_autocast_with_fp32_weights():
    assert_runs_under_autocast_with_fp32_weights(peftcore.LoraLinear(nn.Linear(64, 48), r=4))


def test_lora_layer_compiles_fullgraph():
    assert_compiles_fullgraph(peftcore.LoraLinear(nn.Linear(32, 48), r=4, dropout=0.1))
