"""Several named adapters on one model: add, activate (one or many), delete, merge, save, load."""

import copy

import pytest
import torch
from torch import nn

import peftcore
from peftcore import BoneConfig, HydraConfig, LoraConfig


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).double()


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)


def run_with(base, steps):
    """The model's output computed by hand: `steps` maps a Sequential index to the list of
    functions (x, h) -> delta that its active adapters add to that layer."""
    def forward(x):
        for i, layer in enumerate(base):
            h = layer(x)
            for delta in steps.get(i, []):
                h = h + delta(x, layer(x))
            x = h
        return x
    return forward


def lora_delta(layer):
    A, B, s = layer.lora_A.weight.detach(), layer.lora_B.weight.detach(), layer.scaling
    return lambda x, h: s * (x @ A.t()) @ B.t()


def hydra_delta(layer):
    Ap, Bp, As, Bs = (t.detach() for t in (layer.A_p, layer.B_p, layer.A_s, layer.B_s))
    sp, ss = layer.scale_parallel, layer.scale_sequential
    return lambda x, h: sp * (x @ Ap.t()) @ Bp.t() + ss * (h @ As.t()) @ Bs.t()


def two_adapter_model(second):
    base = mlp()
    model = peftcore.inject(copy.deepcopy(base), LoraConfig(r=3, alpha=6, target_modules=["0", "2"]), "a")
    peftcore.add_adapter(model, second, "b")
    randomize(model, 1)  # only the active adapter "a" is trainable here
    peftcore.set_adapter(model, "b")
    randomize(model, 2)
    return base, model


def test_add_set_adapter_one_or_many_match_the_formula():
    base, model = two_adapter_model(LoraConfig(r=5, alpha=5, target_modules=["2", "4"]))
    assert peftcore.adapter_names(model) == ["a", "b"] and peftcore.active_adapters(model) == ["b"]
    assert isinstance(model[2], peftcore.AdapterSet) and isinstance(model[0], peftcore.LoraLinear)
    a = {0: model[0], 2: model[2].adapters["a"]}
    b = {2: model[2].adapters["b"], 4: model[4]}
    x = torch.randn(7, 12, dtype=torch.float64)

    cases = {"a": {i: [lora_delta(l)] for i, l in a.items()},
             "b": {i: [lora_delta(l)] for i, l in b.items()}}
    cases["ab"] = {0: [lora_delta(a[0])], 2: [lora_delta(a[2]), lora_delta(b[2])], 4: [lora_delta(b[4])]}
    for names, steps in (("a", cases["a"]), ("b", cases["b"]), (["a", "b"], cases["ab"])):
        peftcore.set_adapter(model, names)
        expected = run_with(base, steps)(x)
        torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)
        active = set(names) if isinstance(names, list) else {names}
        for layer in peftcore.model.adapter_layers(model).values():
            assert layer.lora_A.weight.requires_grad == (layer.adapter_name in active)

    # Both active: one fused op per layer, gradients reach both adapters' factors.
    model(x).square().sum().backward()
    assert model[2].adapters["a"].lora_B.weight.grad is not None
    assert model[2].adapters["b"].lora_A.weight.grad is not None
    with peftcore.disable_adapters(model):
        torch.testing.assert_close(model(x), base(x), rtol=0, atol=0)


def test_mixed_kinds_use_the_unfused_sum_and_merge_round_trips():
    base, model = two_adapter_model(HydraConfig(r_parallel=2, r_sequential=3, target_modules=["2"]))
    peftcore.set_adapter(model, ["a", "b"])
    x = torch.randn(5, 12, dtype=torch.float64)
    la, lb = model[2].adapters["a"], model[2].adapters["b"]
    expected = run_with(base, {0: [lora_delta(model[0])], 2: [lora_delta(la), hydra_delta(lb)]})(x)
    torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)

    weights = copy.deepcopy(model[2].base_layer.state_dict())
    peftcore.merge(model)
    # Merged Hydra then LoRA is not the additive form above (Hydra's merge multiplies
    # W); what is guaranteed is that unmerge restores the base weights.
    with pytest.raises(RuntimeError, match="unmerge"):
        peftcore.set_adapter(model, "a")
    peftcore.unmerge(model)
    for k, v in model[2].base_layer.state_dict().items():
        torch.testing.assert_close(v, weights[k], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)


def test_merge_of_two_low_rank_adapters_equals_their_sum():
    base, model = two_adapter_model(BoneConfig(r=4, target_modules=["2"]))
    peftcore.set_adapter(model, ["a", "b"])
    x = torch.randn(5, 12, dtype=torch.float64)
    before = model(x)
    peftcore.merge(model)
    torch.testing.assert_close(model(x), before, rtol=1e-10, atol=1e-10)
    plain = peftcore.merge_and_unload(model)
    assert all(type(m) in (nn.Linear, nn.ReLU) for m in plain)
    torch.testing.assert_close(plain(x), before, rtol=1e-10, atol=1e-10)
    assert peftcore.adapter_names(plain) == []


def test_delete_adapter_puts_plain_layers_back():
    base, model = two_adapter_model(LoraConfig(r=5, alpha=5, target_modules=["2", "4"]))
    x = torch.randn(3, 12, dtype=torch.float64)
    peftcore.set_adapter(model, "a")
    only_a = model(x)
    peftcore.delete_adapter(model, "b")
    assert isinstance(model[2], peftcore.LoraLinear) and isinstance(model[4], nn.Linear)
    assert peftcore.adapter_names(model) == ["a"]
    torch.testing.assert_close(model(x), only_a, rtol=0, atol=0)
    peftcore.delete_adapter(model, "a")
    assert all(type(m) in (nn.Linear, nn.ReLU) for m in model)
    assert not hasattr(model, "peftcore_config")
    torch.testing.assert_close(model(x), base(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="no adapter named 'a'"):
        peftcore.set_adapter(model, "a")


def test_errors_name_the_problem():
    base, model = two_adapter_model(LoraConfig(r=5, alpha=5, target_modules=["2"]))
    with pytest.raises(ValueError, match="already has an adapter named 'b'"):
        peftcore.add_adapter(model, LoraConfig(r=2, target_modules=["0"]), "b")
    with pytest.raises(ValueError, match="no nn.Linear matches"):
        peftcore.add_adapter(model, LoraConfig(r=2, target_modules=["nothing"]), "c")
    with pytest.raises(ValueError, match="no adapters yet"):
        peftcore.add_adapter(mlp(), LoraConfig(r=2, target_modules=["0"]), "c")
    with pytest.raises(ValueError, match="no adapter named 'zz'"):
        peftcore.delete_adapter(model, "zz")


def test_save_and_load_named_adapters(tmp_path):
    base, model = two_adapter_model(LoraConfig(r=5, alpha=5, target_modules=["2", "4"]))
    x = torch.randn(4, 12, dtype=torch.float64)
    peftcore.save_adapter(model, tmp_path / "b", adapter_name="b")
    peftcore.set_adapter(model, "b")
    only_b = model(x)

    fresh = copy.deepcopy(base)
    peftcore.load_adapter(fresh, tmp_path / "b")  # saved under the name "b"
    assert peftcore.adapter_names(fresh) == ["b"]
    torch.testing.assert_close(fresh(x), only_b, rtol=0, atol=0)

    # Beside another adapter: added inactive, then activated.
    other = peftcore.inject(copy.deepcopy(base), LoraConfig(r=2, target_modules=["0", "2"]), "a")
    peftcore.load_adapter(other, tmp_path / "b")
    assert peftcore.active_adapters(other) == ["a"]
    peftcore.set_adapter(other, "b")
    torch.testing.assert_close(other(x), only_b, rtol=0, atol=0)

    # A bad file for an existing name changes nothing.
    peftcore.save_adapter(model, tmp_path / "a", adapter_name="a")
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError):
        peftcore.load_adapter(other, tmp_path / "a", adapter_name="b")
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())


def test_two_active_adapters_compile_fullgraph():
    base, model = two_adapter_model(BoneConfig(r=4, target_modules=["2"]))
    peftcore.set_adapter(model, ["a", "b"])
    x = torch.randn(5, 12, dtype=torch.float64)
    ref = model(x)
    out = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    out.sum().backward()
    assert model[2].adapters["b"].miss_block.grad is not None
