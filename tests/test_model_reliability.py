"""The model API under misuse and faults: saves are all or nothing, loads write only what
their config names and leave the model as it was when they fail, new layers take the
training mode of what they replace, names and files are checked before anything changes."""

import os

import pytest
import torch
from torch import nn

import peftcore
from peftcore import BoneConfig, LoraConfig
from peftcore.model import io

pytest.importorskip("safetensors")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(16, 16)
        self.v_proj = nn.Linear(16, 24)
        self.head = nn.Linear(24, 3)

    def forward(self, x):
        return self.head(self.v_proj(torch.relu(self.q_proj(x))))


def adapted(seed=0, dropout=0.0, alpha=8.0, **kw):
    torch.manual_seed(seed)
    model = peftcore.inject(Net(), LoraConfig(r=4, alpha=alpha, dropout=dropout, **kw))
    with torch.no_grad():
        for layer in peftcore.model.lora_layers(model).values():
            layer.lora_B.weight.normal_(0, 0.5)
    return model


def adapter_state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n or n.startswith("head.")}


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


class FailingReplace:
    """os.replace that raises on its n-th call (a crash between a save's renames)."""

    def __init__(self, n):
        self.n, self.calls, self.real = n, 0, os.replace

    def __call__(self, src, dst):
        self.calls += 1
        if self.calls == self.n:
            raise OSError("simulated crash")
        return self.real(src, dst)


@pytest.mark.parametrize("save,load", [(peftcore.save_adapter, peftcore.load_adapter),
                                       (peftcore.to_peft, peftcore.from_peft)], ids=["own", "peft"])
@pytest.mark.parametrize("crash_at", [1, 2])
def test_an_interrupted_save_leaves_the_previous_or_the_new_adapter(tmp_path, monkeypatch, save, load, crash_at):
    first, second = adapted(seed=0), adapted(seed=1, alpha=16.0)  # another config too
    save(first, tmp_path)
    monkeypatch.setattr(io.os, "replace", FailingReplace(crash_at))
    with pytest.raises(OSError, match="simulated crash"):
        save(second, tmp_path)
    monkeypatch.undo()
    if crash_at == 2:  # the new weights beside the previous config
        with pytest.warns(UserWarning, match="interrupted save"):
            loaded = load(peftcore.model.merge_and_unload(adapted(seed=2)), tmp_path)
    else:
        loaded = load(peftcore.model.merge_and_unload(adapted(seed=2)), tmp_path)
    expected = first if crash_at == 1 else second  # 1: weights not replaced; 2: weights (the commit) replaced
    got, want = adapter_state(loaded), adapter_state(expected)
    assert_same_state({k: v for k, v in got.items() if "lora_" in k}, {k: v for k, v in want.items() if "lora_" in k})
    assert loaded.q_proj.scaling == expected.q_proj.scaling


def test_loading_into_a_merged_adapter_keeps_the_base_weight(tmp_path):
    model = adapted(seed=0)
    base_weight = model.q_proj.base_layer.weight.detach().clone()
    peftcore.save_adapter(adapted(seed=1), tmp_path)
    peftcore.merge(model)
    peftcore.load_adapter(model, tmp_path)
    assert model.q_proj.merged  # stays merged, now with the loaded factors
    x = torch.randn(5, 16)
    merged_out = model(x)
    peftcore.unmerge(model)
    torch.testing.assert_close(model.q_proj.base_layer.weight, base_weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(model(x), merged_out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("how", ["inject", "add_adapter", "load_adapter", "from_peft"])
def test_new_layers_take_the_training_mode_of_what_they_replace(tmp_path, how):
    model = Net().eval()
    source = adapted(seed=1, dropout=0.5)
    if how == "inject":
        peftcore.inject(model, LoraConfig(r=4, dropout=0.5))
    elif how == "add_adapter":
        peftcore.inject(model, LoraConfig(r=4, target_modules=["q_proj"]))
        peftcore.model.add_adapter(model, LoraConfig(r=4, dropout=0.5), "other")
        peftcore.model.set_adapter(model, "other")
    elif how == "load_adapter":
        peftcore.save_adapter(source, tmp_path)
        peftcore.load_adapter(model, tmp_path)
    else:
        peftcore.to_peft(source, tmp_path)
        peftcore.from_peft(model, tmp_path)
    assert not any(m.training for m in model.modules())
    x = torch.randn(4, 16)
    torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)  # no dropout at inference


def test_a_load_writes_no_module_its_config_does_not_name(tmp_path):
    from safetensors.torch import load_file, save_file

    peftcore.save_adapter(adapted(seed=1), tmp_path)
    tensors = load_file(str(tmp_path / io.WEIGHTS))
    tensors[io.SAVED + "head.weight"] = torch.full((3, 24), 7.0)  # a head the config does not name
    config_text = (tmp_path / io.CONFIG).read_text()
    save_file(tensors, str(tmp_path / io.WEIGHTS), metadata={io.EMBEDDED_CONFIG: config_text})
    model = Net()
    head = model.head.weight.detach().clone()
    with pytest.raises(ValueError, match="does not name its module"):
        peftcore.load_adapter(model, tmp_path)
    torch.testing.assert_close(model.head.weight, head, rtol=0, atol=0)
    assert not peftcore.model.adapter_names(model)


def test_a_failed_inject_changes_nothing():
    model = Net()
    before = {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()}
    with pytest.raises((ValueError, RuntimeError)):
        peftcore.inject(model, BoneConfig(r=16, variant="bat", target_modules=["q_proj", "v_proj"]))
    assert isinstance(model.q_proj, nn.Linear) and isinstance(model.v_proj, nn.Linear)
    assert not peftcore.model.adapter_names(model)
    for n, p in model.named_parameters():
        assert p.requires_grad == before[n][1]
        torch.testing.assert_close(p, before[n][0], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["a.b", "", 3])
def test_adapter_names_are_checked_before_anything_changes(name):
    model = Net()
    with pytest.raises(ValueError, match="adapter_name must be"):
        peftcore.inject(model, LoraConfig(r=4), name)
    assert isinstance(model.q_proj, nn.Linear)
    model = adapted()
    with pytest.raises(ValueError, match="adapter_name must be"):
        peftcore.model.add_adapter(model, LoraConfig(r=4), name)
    assert peftcore.model.adapter_names(model) == ["default"]


def test_a_crafted_adapter_name_in_a_config_file_is_refused(tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    peftcore.save_adapter(adapted(seed=1), tmp_path)
    meta = json.loads((tmp_path / io.CONFIG).read_text())
    meta["adapter_name"] = "x.y"
    save_file(load_file(str(tmp_path / io.WEIGHTS)), str(tmp_path / io.WEIGHTS),
              metadata={io.EMBEDDED_CONFIG: json.dumps(meta)})
    (tmp_path / io.CONFIG).write_text(json.dumps(meta))
    model = Net()
    with pytest.raises(ValueError, match="adapter_name must be"):
        peftcore.load_adapter(model, tmp_path)
    assert isinstance(model.q_proj, nn.Linear)


def test_nested_disable_adapters():
    model = adapted()
    x = torch.randn(3, 16)
    with_adapters = model(x)
    with peftcore.model.disable_adapters(model):
        base = model(x)
        with peftcore.model.disable_adapters(model):
            torch.testing.assert_close(model(x), base, rtol=0, atol=0)
        torch.testing.assert_close(model(x), base, rtol=0, atol=0)  # still disabled
    torch.testing.assert_close(model(x), with_adapters, rtol=0, atol=0)
    assert not torch.allclose(base, with_adapters)


@pytest.mark.parametrize("kind", ["fifo", "device", "huge"])
def test_config_files_are_read_with_bounds(tmp_path, kind):
    peftcore.to_peft(adapted(seed=1), tmp_path)
    from safetensors.torch import load_file, save_file

    # Weights without the embedded config: the loader falls back to the JSON file.
    save_file(load_file(str(tmp_path / io.PEFT_WEIGHTS)), str(tmp_path / io.PEFT_WEIGHTS), metadata={"format": "pt"})
    config = tmp_path / io.PEFT_CONFIG
    config.unlink()
    if kind == "fifo":
        os.mkfifo(config)
    elif kind == "device":
        config.symlink_to("/dev/zero")
    else:
        config.write_text(" " * (io.MAX_CONFIG_BYTES + 1))
    with pytest.raises(ValueError, match="not a regular file|larger than"):
        peftcore.from_peft(Net(), tmp_path)


@pytest.mark.parametrize("broken", [{"peft_type": "LORA"}, {"peft_type": "LORA", "r": [4]}, []])
def test_malformed_peft_configs_give_value_errors(tmp_path, broken):
    import json

    from safetensors.torch import load_file, save_file

    peftcore.to_peft(adapted(seed=1), tmp_path)
    save_file(load_file(str(tmp_path / io.PEFT_WEIGHTS)), str(tmp_path / io.PEFT_WEIGHTS),
              metadata={"format": "pt", io.EMBEDDED_CONFIG: json.dumps(broken)})
    (tmp_path / io.PEFT_CONFIG).write_text(json.dumps(broken))
    with pytest.raises(ValueError):
        peftcore.from_peft(Net(), tmp_path)


def randomize(model, seed=3):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if any(k in n for k in ("lora_B", "B_p", "B_s")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


@pytest.mark.parametrize("order", [("lora", "hydra"), ("hydra", "lora")])
def test_merge_with_a_sequential_hydra_beside_another_adapter_is_exact(order):
    torch.manual_seed(0)
    configs = {"lora": LoraConfig(r=4, alpha=8), "hydra": peftcore.HydraConfig(r_parallel=2, r_sequential=3)}
    model = peftcore.inject(Net(), configs[order[0]], order[0])
    peftcore.add_adapter(model, configs[order[1]], order[1])
    peftcore.set_adapter(model, list(order))
    randomize(model)
    x = torch.randn(6, 16, dtype=torch.float32)
    want = model(x)
    peftcore.merge(model)
    torch.testing.assert_close(model(x), want, rtol=1e-4, atol=1e-5)
    peftcore.unmerge(model)
    torch.testing.assert_close(model(x), want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(peftcore.merge_and_unload(model)(x), want, rtol=1e-4, atol=1e-5)


def test_two_active_sequential_branches_at_one_place_refuse_to_merge():
    model = peftcore.inject(Net(), peftcore.HydraConfig(r_parallel=0, r_sequential=2), "h1")
    peftcore.add_adapter(model, peftcore.HydraConfig(r_parallel=0, r_sequential=2), "h2")
    peftcore.set_adapter(model, ["h1", "h2"])
    randomize(model)
    weight = model.q_proj.base_layer.weight.detach().clone()
    with pytest.raises(ValueError, match="cannot be merged together"):
        peftcore.merge(model)
    torch.testing.assert_close(model.q_proj.base_layer.weight, weight, rtol=0, atol=0)


def test_a_singular_hydra_merge_is_refused_and_keeps_w():
    layer = peftcore.HydraLinear(nn.Linear(8, 8), r_parallel=0, r_sequential=1, alpha_sequential=1.0)
    with torch.no_grad():  # I + s B A with s A B = -1: singular
        layer.A_s.copy_(torch.ones(1, 8) / 8)
        layer.B_s.copy_(-torch.ones(8, 1))
    weight = layer.base_layer.weight.detach().clone()
    with pytest.raises(ValueError, match="singular"):
        layer.merge()
    assert not layer.merged
    torch.testing.assert_close(layer.base_layer.weight, weight, rtol=0, atol=0)
