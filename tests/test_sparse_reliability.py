"""peftcore.sparse reliability (issue #16): checked revert, float64 from_diff, atomic
MaskedTraining, clear errors, argument checks and tied weights in from_diff."""

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from peftcore.sparse import (MaskedTraining, SparseDelta, SparseEntry, applied, apply, from_composable_sft,
                             revert)


def entry(indices, values, shape, dtype=torch.float32):
    return SparseEntry(torch.tensor(indices), torch.tensor(values, dtype=torch.float32), shape, dtype)


def bits(t):
    return t.detach().clone().view(torch.int16 if t.element_size() == 2 else
                                   torch.int32 if t.element_size() == 4 else torch.int64)


def snapshot(model):
    return {n: bits(p) for n, p in model.named_parameters()}


def assert_same(model, snap):
    now = snapshot(model)
    assert list(now) == list(snap)
    for n in snap:
        assert torch.equal(now[n], snap[n]), n


# ----------------------------------------------------------------------------- 5: checked revert


def test_revert_refuses_the_wrong_order_of_overlapping_deltas_and_writes_nothing():
    model = nn.Linear(4, 4)
    before = snapshot(model)
    first = SparseDelta({"weight": entry([0, 5, 9], [1.0, 2.0, 3.0], (4, 4))})
    second = SparseDelta({"weight": entry([5, 6], [10.0, 20.0], (4, 4))})
    h1, h2 = apply(model, first), apply(model, second)
    both = snapshot(model)
    with pytest.raises(ValueError, match="weight"):
        revert(model, h1)  # the old code restored index 5 to theta0 and left h2's +20 at 6
    assert_same(model, both)
    assert h1.active
    revert(model, h2)
    revert(model, h1)
    assert_same(model, before)
    # Deltas that share no entries still revert in any order, bit-exactly.
    model = nn.Sequential(nn.Linear(5, 5), nn.Linear(5, 3)).to(torch.float16)
    before = snapshot(model)
    a = SparseDelta({"0.weight": entry([0, 7], [0.3, -0.2], (5, 5), torch.float16)})
    b = SparseDelta({"0.weight": entry([8, 9], [0.1, 0.4], (5, 5), torch.float16),
                     "1.bias": entry([2], [1.5], (3,), torch.float16)})
    ha, hb = apply(model, a), apply(model, b)
    revert(model, ha)
    revert(model, hb)
    assert_same(model, before)


def test_revert_order_is_checked_even_when_the_later_delta_left_the_bits_unchanged():
    # A bf16 weight of 1.0 does not move for +1e-4: the later delta wrote the same
    # bits, so only the application order tells that h1 must wait for h2.
    model = nn.Linear(4, 4).to(torch.bfloat16)
    with torch.no_grad():
        model.weight.fill_(1.0)
    before = snapshot(model)
    first = SparseDelta({"weight": entry([0, 1], [1.0, 1.0], (4, 4), torch.bfloat16)})
    second = SparseDelta({"weight": entry([1, 2], [1e-4, 1.0], (4, 4), torch.bfloat16)})
    h1 = apply(model, first)
    h2 = apply(model, second)
    assert model.weight.view(-1)[1].item() == 2.0  # second's +1e-4 vanished at index 1
    with pytest.raises(ValueError, match="weight: a delta applied after this one"):
        revert(model, h1)
    revert(model, h2)
    revert(model, h1)
    assert_same(model, before)


def test_revert_refuses_a_handle_used_on_another_model():
    m1, m2 = nn.Linear(3, 3), nn.Linear(3, 3)
    before1, before2 = snapshot(m1), snapshot(m2)
    h = apply(m1, SparseDelta({"weight": entry([0, 4], [1.0, 1.0], (3, 3))}))
    with pytest.raises(ValueError, match="another model"):
        revert(m2, h)
    assert_same(m2, before2)
    revert(m1, h)
    assert_same(m1, before1)


def test_revert_refuses_a_replaced_parameter():
    delta = SparseDelta({"weight": entry([1, 2], [1.0, 1.0], (3, 3))})
    # A new Parameter object under the same name.
    model = nn.Linear(3, 3)
    h = apply(model, delta)
    model.weight = nn.Parameter(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="weight is not the parameter this delta was applied to"):
        revert(model, h)
    assert torch.equal(model.weight, torch.zeros(3, 3))
    # The same Parameter object, its data replaced by other values.
    model = nn.Linear(3, 3)
    h = apply(model, delta)
    model.weight.data = torch.full((3, 3), 7.0)
    with pytest.raises(ValueError, match="weight holds other memory than when this delta was applied"):
        revert(model, h)
    assert torch.equal(model.weight, torch.full((3, 3), 7.0))
    # The same object converted to another dtype.
    model = nn.Linear(3, 3)
    h = apply(model, delta)
    model.double()
    with pytest.raises(ValueError, match="weight is torch.float64"):
        revert(model, h)


def test_verified_revert_refuses_after_a_training_step_changed_touched_entries_only():
    model = nn.Linear(4, 2)
    w0 = model.weight.detach().clone()
    delta = SparseDelta({"weight": entry([0, 3], [0.5, 0.5], (2, 4))})
    h = apply(model, delta, verify=True)
    with torch.no_grad():
        model.weight.view(-1)[5] += 1.0  # not touched by the delta: fine
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    snapshot_before_step = snapshot(model)
    revert(model, h)  # untouched entries may change: revert is exact where it wrote
    assert torch.equal(model.weight.view(-1)[[0, 3]], w0.view(-1)[[0, 3]])
    assert model.weight.view(-1)[5] == w0.view(-1)[5] + 1.0
    h = apply(model, delta, verify=True)
    model(torch.randn(8, 4)).square().sum().backward()
    opt.step()
    stepped = snapshot(model)
    assert not torch.equal(stepped["weight"], snapshot_before_step["weight"])
    with pytest.raises(ValueError, match="weight: 2 of the 2 entries this delta wrote were changed since"):
        revert(model, h)
    assert_same(model, stepped)


def test_applied_context_manager_reverts_nested_deltas_and_refuses_after_a_step_inside():
    model = nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 2)).to(torch.bfloat16)
    before = snapshot(model)
    lang = SparseDelta({"0.weight": entry([0, 1, 7], [0.1, 0.2, 0.3], (6, 6), torch.bfloat16)})
    task = SparseDelta({"0.weight": entry([1, 7, 30], [0.5, 0.25, 1.0], (6, 6), torch.bfloat16),
                        "1.bias": entry([1], [2.0], (2,), torch.bfloat16)})
    for _ in range(3):  # as per forward
        with applied(model, lang):
            with applied(model, task, weights=[0.5]):
                model(torch.randn(2, 6, dtype=torch.bfloat16))
        assert_same(model, before)
    with pytest.raises(KeyError):
        with applied(model, [lang, task]):
            raise KeyError("boom")
    assert_same(model, before)
    # A step on the applied weights inside the block: leaving it refuses to write the
    # stale originals over the trained entries.
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    with pytest.raises(ValueError, match="0.weight: 3 of the 3 entries this delta wrote were changed"):
        with applied(model, task, verify=True):
            model(torch.randn(2, 6, dtype=torch.bfloat16)).float().sum().backward()
            opt.step()
    assert not torch.equal(bits(model[1].bias), before["1.bias"])


# ----------------------------------------------------------------------------- 11: float64


def test_from_diff_float64_reproduces_theta_and_ranks_tiny_differences():
    gen = torch.Generator().manual_seed(0)
    theta0 = {"w": torch.randn(50, 20, generator=gen, dtype=torch.float64)}
    theta = {"w": theta0["w"] + torch.randn(50, 20, generator=gen, dtype=torch.float64) * 1e-3}
    for per_parameter in (False, True):
        delta = SparseDelta.from_diff(theta0, theta, density=0.1, per_parameter=per_parameter)
        assert delta["w"].values.dtype == torch.float64
        model = nn.Module()
        model.w = nn.Parameter(theta0["w"].clone())
        apply(model, delta)
        idx = delta["w"].indices
        assert torch.equal(model.w.detach().view(-1)[idx], theta["w"].view(-1)[idx])
    # Differences far below float32's resolution at 1.0 (float32 sees them all as 0,
    # so ties by index order chose 0 and 1) and below float32's range.
    theta0 = {"a": torch.ones(4, dtype=torch.float64), "b": torch.zeros(3, dtype=torch.float64)}
    theta = {"a": theta0["a"] + torch.tensor([1e-12, 3e-12, 2e-12, 0.0], dtype=torch.float64),
             "b": torch.tensor([0.0, 1e-50, 4e-50], dtype=torch.float64)}
    delta = SparseDelta.from_diff(theta0, theta, k=2)
    assert delta["a"].indices.tolist() == [1, 2] and delta["b"].indices.numel() == 0
    torch.testing.assert_close(delta["a"].values, torch.tensor([3e-12, 2e-12], dtype=torch.float64),
                               rtol=1e-3, atol=0)
    theta0 = {"b": torch.zeros(3, dtype=torch.float64)}
    delta = SparseDelta.from_diff(theta0, {"b": theta["b"]}, k=1)
    assert delta["b"].indices.tolist() == [2] and delta["b"].values.item() == 4e-50


def test_from_diff_mixed_dtypes_rank_float64_in_float64_and_the_rest_in_float32():
    gen = torch.Generator().manual_seed(1)
    theta0 = {"h": torch.randn(300, generator=gen).to(torch.bfloat16), "f": torch.randn(200, generator=gen),
              "d": torch.randn(100, generator=gen, dtype=torch.float64)}
    theta = {n: (t.double() + torch.randn(t.shape, generator=gen, dtype=torch.float64).round()).to(t.dtype)
             for n, t in theta0.items()}
    delta = SparseDelta.from_diff(theta0, theta, k=250)
    # Magnitudes: float32 for the 16/32-bit tensors, float64 for the float64 one.
    mags = torch.cat([(theta["h"].float() - theta0["h"].float()).double().abs(),
                      (theta["f"] - theta0["f"]).double().abs(), (theta["d"] - theta0["d"]).abs()])
    order = torch.sort(mags, descending=True, stable=True).indices[:250]
    chosen = torch.sort(order).values
    want = {"h": chosen[chosen < 300], "f": chosen[(chosen >= 300) & (chosen < 500)] - 300,
            "d": chosen[chosen >= 500] - 500}
    for n in theta0:
        assert torch.equal(delta[n].indices, want[n]), n
    assert delta["f"].values.dtype == torch.float32 and delta["h"].values.dtype == torch.bfloat16


# ----------------------------------------------------------------------------- 19: MaskedTraining


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def structure(model):
    return ([(n, id(p), p.requires_grad) for n, p in model.named_parameters()],
            [(n, type(m)) for n, m in model.named_modules()], list(model.state_dict()))


def test_masked_training_with_a_bad_second_mask_leaves_the_model_as_it_was():
    model = mlp()
    model[2].bias.requires_grad_(False)
    shape, values = structure(model), snapshot(model)
    with pytest.raises(ValueError, match=r"2.weight.*sorted and unique"):
        MaskedTraining(model, {"0.weight": torch.tensor([0, 3]), "2.weight": torch.tensor([9, 2])})
    assert structure(model) == shape
    assert not parametrize.is_parametrized(model[0]) and type(model[0]) is nn.Linear
    assert_same(model, values)
    with pytest.raises(ValueError, match=r"mask\['2.bias'\] must be flat indices"):
        MaskedTraining(model, {"0.weight": torch.tensor([0, 3]), "2.bias": "abc"})
    assert structure(model) == shape
    # Still usable afterwards.
    mt = MaskedTraining(model, {"0.weight": torch.tensor([0, 3])})
    assert sum(v.numel() for v in mt.parameters()) == 2


def test_masked_training_undoes_a_failure_while_registering(monkeypatch):
    model = mlp()
    shape, values = structure(model), snapshot(model)
    real = parametrize.register_parametrization
    calls = []

    def failing(module, name, *args, **kwargs):
        calls.append(name)
        if len(calls) == 3:
            raise RuntimeError("injected failure")
        return real(module, name, *args, **kwargs)

    monkeypatch.setattr(parametrize, "register_parametrization", failing)
    mask = {"0.weight": torch.tensor([1]), "0.bias": torch.tensor([2]), "2.weight": torch.tensor([3])}
    with pytest.raises(RuntimeError, match="injected failure"):
        MaskedTraining(model, mask)
    assert structure(model) == shape
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert_same(model, values)


# ----------------------------------------------------------------------------- 18: clear errors


def test_apply_with_no_deltas_raises_a_clear_value_error_and_an_empty_delta_is_a_no_op():
    model = nn.Linear(3, 3)
    before = snapshot(model)
    with pytest.raises(ValueError, match="deltas is empty"):
        apply(model, [])
    with pytest.raises(ValueError, match=r"deltas\[1\] must be a SparseDelta"):
        apply(model, [SparseDelta({}), {"weight": None}])
    handle = apply(model, SparseDelta({}))  # a delta with no entries applies nothing
    assert_same(model, before)
    revert(model, handle)
    with applied(model, [SparseDelta({}), SparseDelta({})]):
        assert_same(model, before)


def save_diff(path, diffs, **extra):
    torch.save({"diffs": diffs, **extra}, path)
    return path


def test_composable_sft_reader_gives_value_errors_for_malformed_files(tmp_path):
    good = {"size": torch.Size((3, 4)), "index_steps": torch.tensor([1, 2, 3]), "values": torch.ones(3)}
    cases = {
        "values_count": ({**good, "values": torch.ones(2)}, r"3 index steps but 2 values"),
        "scalar_steps": ({**good, "index_steps": torch.tensor(1), "values": torch.ones(1)},
                         r"\['index_steps'\] must be a 1-D"),
        "not_a_dict": (torch.ones(3), r"diffs\['w'\] must be a dict"),
        "missing": ({"size": (3, 4)}, r"lacks \['index_steps', 'values'\]"),
        "bad_size": ({**good, "size": 7}, r"\['size'\] must be a sequence of integers"),
        "int_values": ({**good, "values": torch.ones(3, dtype=torch.int64)}, r"\['values'\] must be a floating"),
    }
    for name, (diff, pattern) in cases.items():
        path = save_diff(tmp_path / f"{name}.bin", {"w": diff})
        with pytest.raises(ValueError, match=pattern) as info:
            from_composable_sft(path)
        assert str(path) in str(info.value), name
    path = save_diff(tmp_path / "abs.bin", {"w": good}, abs=[1, 2])
    with pytest.raises(ValueError, match="'abs' must be a dict"):
        from_composable_sft(path)
    # composable-sft itself writes index_steps as a list of ints.
    path = save_diff(tmp_path / "list.bin", {"w": {**good, "index_steps": [1, 2, 3]}})
    delta, _ = from_composable_sft(path)
    assert delta["w"].indices.numel() == 3


# ----------------------------------------------------------------------------- 20: arguments, tied weights


def test_from_diff_rejects_negative_k_and_density_outside_0_1():
    theta0 = {"a": torch.zeros(10)}
    theta = {"a": torch.randn(10)}
    for k in (-3, -1, 2.5, True):
        with pytest.raises(ValueError, match=r"k must be a non-negative integer.*got"):
            SparseDelta.from_diff(theta0, theta, k=k)
    for density in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"density must be a number in \(0, 1\]"):
            SparseDelta.from_diff(theta0, theta, density=density)
    assert SparseDelta.from_diff(theta0, theta, k=0).nnz == 0  # k = 0 stays a valid (empty) budget
    assert SparseDelta.from_diff(theta0, theta, density=1.0).nnz == 10


class TiedLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = nn.Module()
        self.model.embed = nn.Embedding(11, 6)
        self.model.proj = nn.Linear(6, 6)
        self.lm_head = nn.Linear(6, 11, bias=False)
        self.lm_head.weight = self.model.embed.weight  # tied

    def forward(self, ids):
        return self.lm_head(self.model.proj(self.model.embed(ids)))


def test_from_diff_on_a_tied_embedding_model_lists_the_tied_weight_once():
    torch.manual_seed(0)
    model = TiedLM()
    assert "lm_head.weight" in model.state_dict() and "lm_head.weight" not in dict(model.named_parameters())
    theta0 = {n: t.clone() for n, t in model.state_dict().items()}
    tuned = TiedLM()
    tuned.load_state_dict(theta0)
    opt = torch.optim.SGD(tuned.parameters(), lr=0.5)
    ids = torch.randint(0, 11, (16,))
    nn.functional.cross_entropy(tuned(ids), ids).backward()
    opt.step()
    delta = SparseDelta.from_diff(theta0, tuned.state_dict(), density=0.5)
    assert "model.embed.weight" in delta and "lm_head.weight" not in delta
    total = sum(p.numel() for p in model.parameters())
    assert delta.nnz == round(0.5 * total)  # the budget counts the tied weight once
    before = snapshot(model)
    with applied(model, delta):
        idx = delta["model.embed.weight"].indices
        assert torch.equal(model.lm_head.weight.view(-1)[idx], tuned.model.embed.weight.view(-1)[idx])
    assert_same(model, before)
    # A delta that names the second, tied name gets an error that says so.
    alias = SparseDelta({"lm_head.weight": entry([0], [1.0], (11, 6))})
    with pytest.raises(ValueError, match="'lm_head.weight' is tied to 'model.embed.weight'"):
        apply(model, alias)
