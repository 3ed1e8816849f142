"""MaskedTraining and LT-SFT end to end on a small real task (sklearn's digits)."""

import copy

import pytest
import torch
from torch import nn

from peftcore.optim import Lamb
from peftcore.sparse import MaskedTraining, SparseDelta, applied


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


@pytest.mark.parametrize("make_opt", [lambda ps: Lamb(ps, lr=1e-2, weight_decay=0.01),
                                      lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1)],
                         ids=["lamb", "adamw"])
def test_only_masked_entries_ever_change(make_opt):
    model = mlp()
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(1)
    mask = {"0.weight": torch.sort(torch.randperm(64 * 256, generator=gen)[:300]).values,
            "4.bias": torch.tensor([0, 3, 9])}
    mt = MaskedTraining(model, mask)
    assert sum(v.numel() for v in mt.parameters()) == 303
    assert not any(p.requires_grad for n, p in model.named_parameters() if "parametrizations" not in n)
    opt = make_opt(mt.parameters())
    for _ in range(20):
        x, y = torch.randn(32, 64, generator=gen), torch.randint(0, 10, (32,), generator=gen)
        loss = nn.functional.cross_entropy(model(x), y) + mt.l1_penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
    delta = mt.delta()
    mt.merge()
    for name, p in model.named_parameters():
        changed = torch.nonzero((p != theta0[name]).flatten()).flatten()
        allowed = set(mask.get(name, torch.zeros(0, dtype=torch.int64)).tolist())
        assert set(changed.tolist()) <= allowed, name
    assert sum(int((p != theta0[n]).sum()) for n, p in model.named_parameters()) > 0
    # The extracted delta reproduces the trained model on a fresh theta0.
    fresh = mlp()
    x = torch.randn(8, 64)
    with applied(fresh, delta):
        torch.testing.assert_close(fresh(x), model(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_masked_training_of_a_16_bit_model_keeps_float32_values(dtype):
    model = mlp().to(dtype)
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    mask = {"2.weight": torch.tensor([0, 7, 300, 65535])}
    mt = MaskedTraining(model, mask)
    (values,) = mt.parameters()
    assert values.dtype == torch.float32 and values.numel() == 4 and not values.any()
    opt = torch.optim.AdamW(mt.parameters(), lr=0.1, weight_decay=0.0)
    x = torch.randn(16, 64).to(dtype)
    for _ in range(3):
        opt.zero_grad()
        model(x).float().square().mean().backward()
        opt.step()
    assert model[2].weight.dtype == dtype
    mt.merge()
    assert isinstance(dict(model.named_parameters())["2.weight"], nn.Parameter)
    changed = torch.nonzero((model[2].weight != theta0["2.weight"]).flatten()).flatten().tolist()
    assert changed and set(changed) <= {0, 7, 300, 65535}
    assert all(torch.equal(p, theta0[n]) for n, p in model.named_parameters() if n != "2.weight")


def test_masked_training_rejects_bad_masks():
    model = mlp()
    with pytest.raises(ValueError, match="does not have"):
        MaskedTraining(model, {"9.weight": torch.tensor([0])})
    with pytest.raises(ValueError, match="sorted and unique"):
        MaskedTraining(mlp(), {"0.weight": torch.tensor([5, 1])})


def test_l1_penalty_pulls_toward_theta0():
    model = mlp()
    mt = MaskedTraining(model, {"0.bias": torch.arange(10)}, l1=0.5)
    with torch.no_grad():
        mt.parameters()[0].fill_(2.0)
    assert mt.l1_penalty().item() == pytest.approx(0.5 * 2.0 * 10)


def test_lt_sft_end_to_end_on_digits_recovers_most_of_the_dense_gain():
    datasets = pytest.importorskip("sklearn.datasets")
    X, y = datasets.load_digits(return_X_y=True)
    X, y = torch.tensor(X, dtype=torch.float32) / 16.0, torch.tensor(y)
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))
    X, y = X[perm], y[perm]
    Xtr, ytr, Xte, yte = X[:1200], y[:1200], X[1200:], y[1200:]

    def train(m, params, X, y, epochs, lr):
        opt = torch.optim.Adam(params, lr=lr)
        for _ in range(epochs):
            for i in range(0, len(X), 64):
                loss = nn.functional.cross_entropy(m(X[i:i + 64]), y[i:i + 64])
                opt.zero_grad()
                loss.backward()
                opt.step()

    def accuracy(m):
        with torch.no_grad():
            return (m(Xte).argmax(1) == yte).float().mean().item()

    model = mlp()
    train(model, model.parameters(), Xtr[ytr < 5], ytr[ytr < 5], 5, 1e-3)  # "pretrained": digits 0-4
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    base_acc = accuracy(model)
    dense = copy.deepcopy(model)  # phase 1: full fine-tuning on all ten digits
    train(dense, dense.parameters(), Xtr, ytr, 10, 1e-3)
    dense_acc = accuracy(dense)
    mask = SparseDelta.from_diff(theta0, dict(dense.named_parameters()), density=0.01)
    sparse = copy.deepcopy(model)  # phase 2: back to theta0, train the 1% only
    mt = MaskedTraining(sparse, mask)
    train(sparse, mt.parameters(), Xtr, ytr, 10, 3e-2)
    sparse_acc = accuracy(sparse)
    print(f"LT-SFT digits: theta0 {base_acc:.3f}, dense {dense_acc:.3f}, 1% sparse {sparse_acc:.3f}")
    assert dense_acc > base_acc + 0.3
    assert sparse_acc - base_acc >= 0.75 * (dense_acc - base_acc)
    delta = mt.delta()
    assert delta.nnz == mask.nnz
