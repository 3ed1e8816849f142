"""torch.ops.peftcore.lora_linear: parity with peftcore.reference.lora, opcheck, gradcheck, errors."""

import pytest
import torch

import peftcore
from peftcore import ops, reference
from helpers import LOW_PRECISION, assert_as_accurate_as_torch, max_abs

lora_op = torch.ops.peftcore.lora_linear
lora_bwd = torch.ops.peftcore.lora_linear_backward

# (leading shape, in, out, r): odd sizes, 1s, ranks not multiples of the kernels' tiles.
SHAPES = [
    ((5,), 7, 3, 2),
    ((2, 3), 1, 1, 1),
    ((33,), 127, 65, 8),
    ((3, 17), 64, 127, 64),
    ((1,), 7, 129, 33),
    ((70,), 40, 1, 1),
    ((2000,), 300, 20, 3),  # many row blocks on the CPU, spread over threads
    ((3, 667), 50, 30, 5),  # row slabs of the CPU t^T x with a remainder row
]


def make_inputs(lead, n_in, n_out, r, dtype, device, bias=True, requires_grad=True, scale=1.0):
    g = torch.Generator().manual_seed(hash((lead, n_in, n_out, r)) % 2**31)

    def rnd(*shape, s=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * s).to(dtype).to(device)

    tensors = [
        rnd(*lead, n_in),
        rnd(n_out, n_in, s=max(n_in, 1) ** -0.5),
        rnd(n_out) if bias else None,
        rnd(r, n_in, s=max(n_in, 1) ** -0.5),
        rnd(n_out, r, s=scale),
    ]
    if requires_grad:
        for t in tensors:
            if t is not None:
                t.requires_grad_(True)
    return tensors


def seed_for(device):
    return torch.tensor([0x1234567890, -42], dtype=torch.int64, device=device)


def run_both(inputs, scaling, p, seed):
    x, w, b, a, bb = inputs
    out, _ = lora_op(x, w, b, a, bb, scaling, p, seed if p > 0 else None)
    ref = reference.lora_linear(x, w, b, a, bb, scaling, p, seed)
    return out, ref


@pytest.mark.parametrize("lead,n_in,n_out,r", SHAPES)
@pytest.mark.parametrize("p", [0.0, 0.3])
@pytest.mark.parametrize("bias", [True, False])
def test_float64_matches_reference(device, lead, n_in, n_out, r, p, bias):
    inputs = make_inputs(lead, n_in, n_out, r, torch.float64, device, bias=bias)
    out, ref = run_both(inputs, 0.75, p, seed_for(device))
    assert max_abs(out, ref) <= 1e-10
    grad = torch.randn_like(ref)
    params = [t for t in inputs if t is not None]
    g_ours = torch.autograd.grad(out, params, grad)
    g_ref = torch.autograd.grad(ref, params, grad)
    for name, go, gr in zip(["x", "weight", "bias", "A", "B"], g_ours, g_ref):
        assert max_abs(go, gr) <= 1e-10, name


@pytest.mark.parametrize("frozen_x", [False, True])
def test_merged_path_weight_grads_over_many_row_blocks(frozen_x):
    # N large against in/out (the merged-weight path) and out wide enough that the CPU
    # backward takes G in several row blocks per thread: dA, dB must stay exact.
    inputs = make_inputs((1000,), 96, 2048, 8, torch.float64, "cpu")
    if frozen_x:
        inputs[0].requires_grad_(False)
    out, ref = run_both(inputs, 0.5, 0.0, None)
    grad = torch.randn_like(ref)
    names, params = zip(*[(n, t) for n, t in zip("xwbAB", inputs) if t is not None and t.requires_grad])
    for name, go, gr in zip(names, torch.autograd.grad(out, params, grad), torch.autograd.grad(ref, params, grad)):
        assert max_abs(go, gr) <= 1e-10, name


@pytest.mark.parametrize("dtype", [torch.float32, *LOW_PRECISION])
@pytest.mark.parametrize(
    "lead,n_in,n_out,r",
    [((33,), 127, 65, 8), ((4, 16), 256, 96, 16), ((1024,), 96, 80, 8)],  # the last: merged-weight path
)
@pytest.mark.parametrize("p", [0.0, 0.1])
def test_low_precision_as_accurate_as_torch(device, dtype, lead, n_in, n_out, r, p):
    ref_inputs = make_inputs(lead, n_in, n_out, r, torch.float64, device)
    low_inputs = [t.detach().to(dtype).requires_grad_(True) for t in ref_inputs]
    # The oracle sees exactly the rounded inputs.
    ref_inputs = [t.detach().double().requires_grad_(True) for t in low_inputs]
    seed = seed_for(device)
    out, torch_low = run_both(low_inputs, 2.0, p, seed)
    ref = reference.lora_linear(*ref_inputs, 2.0, p, seed)
    assert out.dtype == dtype
    assert_as_accurate_as_torch(out, torch_low, ref, f"out {dtype}")
    grad = torch.randn(ref.shape, dtype=torch.float64, device=device)
    g_ours = torch.autograd.grad(out, low_inputs, grad.to(dtype))
    g_low = torch.autograd.grad(torch_low, low_inputs, grad.to(dtype))
    g_ref = torch.autograd.grad(ref, ref_inputs, grad)
    for name, go, gl, gr in zip(["x", "weight", "bias", "A", "B"], g_ours, g_low, g_ref):
        assert go.dtype == dtype
        assert_as_accurate_as_torch(go, gl, gr, f"grad {name} {dtype}")


def test_dropout_mask_statistics_and_seed_dependence():
    keep = reference.dropout_keep_mask(torch.tensor([7, 9]), 0.25, 200, 300)
    assert abs(keep.float().mean().item() - 0.75) < 0.01
    other = reference.dropout_keep_mask(torch.tensor([8, 9]), 0.25, 200, 300)
    assert (keep != other).float().mean() > 0.3
    # The wrapper draws a fresh seed per call from torch's generator.
    x, w, b, a, bb = make_inputs((64,), 32, 16, 4, torch.float64, "cpu", requires_grad=False, scale=1.0)
    torch.manual_seed(0)
    y1 = ops.lora_linear(x, w, b, a, bb, 1.0, 0.5)
    y2 = ops.lora_linear(x, w, b, a, bb, 1.0, 0.5)
    torch.manual_seed(0)
    y3 = ops.lora_linear(x, w, b, a, bb, 1.0, 0.5)
    assert not torch.equal(y1, y2) and torch.equal(y1, y3)
    # No dropout outside training.
    assert torch.equal(ops.lora_linear(x, w, b, a, bb, 1.0, 0.5, training=False),
                       ops.lora_linear(x, w, b, a, bb, 1.0, 0.0))


@pytest.mark.parametrize("p", [0.001, 0.1, 0.5, 0.9])
def test_dropout_mask_is_unbiased_and_neighbours_are_independent(p):
    # Each Philox word serves two elements (its 16-bit halves), each counter eight:
    # the keep rate must be 1 - p within sampling error, and elements sharing a word
    # or a counter must be as independent as elements far apart.
    keep = reference.dropout_keep_mask(torch.tensor([11, 13]), p, 1000, 1024).flatten().double()
    n = keep.numel()
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(keep.mean().item() - (1 - p)) < 5 * sigma
    centred = keep - keep.mean()
    var = centred.square().mean()
    for lag in (1, 2, 7, 8, 4096):  # same word, same counter, next counter, far
        corr = (centred[:-lag] * centred[lag:]).mean() / var
        assert abs(corr.item()) < 5 / n**0.5, (lag, corr.item())


@pytest.mark.parametrize("lead", [(3, 2), (6, 5)])  # without dropout: the unmerged and the merged-weight path
def test_gradcheck_float64(device, lead):
    for p in (0.0, 0.4):
        x, w, b, a, bb = make_inputs(lead, 5, 4, 3, torch.float64, device)
        seed = seed_for(device) if p > 0 else None

        def f(x, w, b, a, bb):
            return lora_op(x, w, b, a, bb, 1.5, p, seed)[0]

        assert torch.autograd.gradcheck(f, (x, w, b, a, bb))


def test_double_backward_raises_clearly():
    x, w, b, a, bb = make_inputs((3,), 5, 4, 2, torch.float64, "cpu")
    out = lora_op(x, w, b, a, bb, 1.0, 0.0, None)[0]
    (gx,) = torch.autograd.grad(out.sum(), [x], create_graph=True)
    with pytest.raises(RuntimeError, match="does not support double backward"):
        gx.sum().backward()


@pytest.mark.parametrize("p", [0.0, 0.2])
def test_opcheck(device, p):
    for lead, n_in, n_out, r in [((4,), 7, 5, 2), ((2, 3), 16, 9, 8), ((40,), 7, 5, 2)]:  # last: merged weight
        x, w, b, a, bb = make_inputs(lead, n_in, n_out, r, torch.float32, device)
        seed = seed_for(device) if p > 0 else None
        torch.library.opcheck(lora_op, (x, w, b, a, bb, 0.5, p, seed))
        torch.library.opcheck(lora_op, (x, w, None, a, bb, 0.5, p, seed))
        out, hidden = lora_op(x, w, b, a, bb, 0.5, p, seed)
        g = torch.randn_like(out)
        args = [t.detach() if isinstance(t, torch.Tensor) else t for t in (g, x, w, a, bb, hidden)]
        for mask in ([True] * 5, [False, False, False, True, True], [True, False, False, False, False]):
            torch.library.opcheck(lora_bwd, (*args, 0.5, p, seed, mask))


def test_non_contiguous_inputs(device):
    x, w, b, a, bb = make_inputs((6, 8), 12, 10, 4, torch.float64, device)
    xt = x.detach().transpose(0, 1).requires_grad_(True)  # [8, 6, 12], non-contiguous
    wt = w.detach().t().contiguous().t()  # same values, column-major
    at_ = a.detach().t().contiguous().t()
    seed = seed_for(device)
    for p in (0.0, 0.3):
        out, _ = lora_op(xt, wt, b, at_, bb, 0.5, p, seed if p > 0 else None)
        ref = reference.lora_linear(xt, wt, b, at_, bb, 0.5, p, seed)
        assert max_abs(out, ref) <= 1e-12
        g = torch.randn_like(ref).transpose(0, 1).contiguous().transpose(0, 1)
        (gx,) = torch.autograd.grad(out, [xt], g)
        (gr,) = torch.autograd.grad(ref, [xt], g)
        assert max_abs(gx, gr) <= 1e-12


def test_zero_sized(device):
    for lead in [(0,), (2, 0)]:
        x, w, b, a, bb = make_inputs(lead, 5, 3, 2, torch.float32, device)
        out, hidden = lora_op(x, w, b, a, bb, 1.0, 0.0, None)
        assert out.shape == (*lead, 3) and hidden.shape == (0, 2)
        out.sum().backward()
        assert torch.count_nonzero(a.grad) == 0 and torch.count_nonzero(bb.grad) == 0
        assert x.grad.shape == x.shape
    # in_features == 0: the linear map is all zeros.
    x, w, b, a, bb = make_inputs((4,), 0, 3, 2, torch.float32, device)
    out, _ = lora_op(x, w, b, a, bb, 1.0, 0.0, None)
    assert torch.equal(out, b.detach().expand(4, 3))


@pytest.mark.parametrize(
    "change,pattern",
    [
        (lambda t: t.update(a=t["a"][:, :-1]), r"lora_A must be \[r, in_features\]"),
        (lambda t: t.update(bb=t["bb"][:-1]), r"lora_B must be \[out_features, r\]"),
        (lambda t: t.update(bb=t["bb"][:, :-1]), r"lora_B must be \[out_features, r\]"),
        (lambda t: t.update(a=t["a"][:0]), r"rank r must be positive"),
        (lambda t: t.update(x=t["x"][..., :-1]), r"x must have shape \[\.\.\., in_features=7\]"),
        (lambda t: t.update(a=t["a"].double()), r"lora_A has dtype Double but x has dtype Float"),
        (lambda t: t.update(b=t["b"][:-1]), r"bias must be \[out_features\]"),
        (lambda t: t.update(w=t["w"][0]), r"weight must have 2 dimensions"),
        (lambda t: t.update(x=t["x"].int()), r"x must be float16, bfloat16, float32 or float64"),
        (lambda t: t.update(p=-0.1), r"dropout_p must be in \[0, 1\), got -0.1"),
        (lambda t: t.update(p=1.0), r"dropout_p must be in \[0, 1\)"),
        (lambda t: t.update(p=0.5, seed=None), r"needs dropout_seed"),
        (lambda t: t.update(p=0.5, seed=torch.zeros(3, dtype=torch.int64)), r"dropout_seed must be an int64 tensor of 2"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, pattern):
    x, w, b, a, bb = make_inputs((4,), 7, 5, 3, torch.float32, "cpu", requires_grad=False)
    t = dict(x=x, w=w, b=b, a=a, bb=bb, p=0.0, seed=None)
    change(t)
    with pytest.raises(RuntimeError, match=pattern):
        lora_op(t["x"], t["w"], t["b"], t["a"], t["bb"], 1.0, t["p"], t["seed"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_mismatch_and_cpu_cuda_masks_agree():
    x, w, b, a, bb = make_inputs((40,), 33, 17, 5, torch.float64, "cpu", requires_grad=False)
    with pytest.raises(RuntimeError, match="lora_A is on cuda:0 but x is on cpu|lora_A is on"):
        lora_op(x.cuda(), w.cuda(), b.cuda(), a, bb.cuda(), 1.0, 0.0, None)
    seed = seed_for("cpu")
    cpu, _ = lora_op(x, w, b, a, bb, 1.0, 0.3, seed)
    gpu, _ = lora_op(x.cuda(), w.cuda(), b.cuda(), a.cuda(), bb.cuda(), 1.0, 0.3, seed.cuda())
    assert max_abs(cpu, gpu.cpu()) <= 1e-10


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("offset", [0, 1])
def test_cuda_dropout_kernels_apply_the_cpu_mask(dtype, offset):
    # offset 1 puts x off the 16-byte grid (the element-by-element kernels), offset 0
    # takes the packed ones; 37 x 29 elements leave a tail after the packs of 8.
    n, n_in, n_out, r = 37, 29, 13, 3
    gen = torch.Generator().manual_seed(5)
    flat = torch.randn(offset + n * n_in, generator=gen, dtype=torch.float64).to(dtype)
    w, b = torch.randn(n_out, n_in, generator=gen) / 6, torch.randn(n_out, generator=gen)
    a, bb = torch.randn(r, n_in, generator=gen) / 6, torch.randn(n_out, r, generator=gen)
    x = flat.cuda()[offset:].view(n, n_in).requires_grad_(True)
    params = [t.to(dtype).cuda().requires_grad_(True) for t in (w, b, a, bb)]
    seed = seed_for("cuda")
    out, _ = lora_op(x, *params, 0.5, 0.3, seed)
    ref_x = flat[offset:].view(n, n_in).double().requires_grad_(True)
    ref_params = [t.detach().cpu().double().requires_grad_(True) for t in params]
    ref = reference.lora_linear(ref_x, *ref_params, 0.5, 0.3, seed.cpu())
    grad = torch.randn(n, n_out, generator=gen, dtype=torch.float64)
    ours = torch.autograd.grad(out, [x, *params], grad.to(dtype).cuda())
    theirs = torch.autograd.grad(ref, [ref_x, *ref_params], grad)
    tol = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 3e-2}[dtype]
    for name, got, want in zip(["out", "x", "w", "b", "A", "B"], [out, *ours], [ref, *theirs]):
        # A wrong keep-mask moves whole terms: errors of the order of the values.
        assert max_abs(got.double().cpu(), want) <= tol * (1 + want.abs().max().item()), name


def test_saved_tensors_are_x_and_hidden_only():
    """With dropout, backward keeps x (own dtype) and the N x r hidden: no mask, no masked copy."""
    n, n_in, n_out, r = 256, 64, 48, 4
    x, w, b, a, bb = make_inputs((n,), n_in, n_out, r, torch.float32, "cpu")
    w.requires_grad_(False)
    b.requires_grad_(False)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        ops.lora_linear(x, w, b, a, bb, 1.0, 0.1)
    params = {w.data_ptr(), a.data_ptr(), bb.data_ptr()}
    activation_elems = sum(t.numel() for t in saved if t.data_ptr() not in params and t.numel() > 2)
    assert activation_elems <= n * n_in + n * r, activation_elems


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_runs_in_autocast_dtype(device, dtype):
    if device.type == "cpu" and dtype == torch.float16 and not hasattr(torch, "autocast"):
        pytest.skip("no cpu autocast")
    x, w, b, a, bb = make_inputs((8,), 16, 12, 4, torch.float32, device)
    with torch.autocast(device.type, dtype=dtype):
        out = ops.lora_linear(x, w, b, a, bb, 1.0)
        ref = torch.nn.functional.linear(x, w, b)
    assert out.dtype == ref.dtype == dtype
    out.float().sum().backward()
    assert a.grad.dtype == torch.float32 and x.grad.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lora_layer_replays_in_a_cuda_graph_cuda():
    # Small token counts are bound by the host on a GPU; a CUDA graph removes the
    # host's part. The op must capture: no host sync, the dropout seed drawn on the
    # device (graph-safe RNG: every replay draws a fresh mask).
    import copy

    from torch import nn

    torch.manual_seed(0)
    for p in (0.0, 0.25):
        layer = peftcore.LoraLinear(nn.Linear(64, 48).cuda(), r=8, alpha=16, dropout=p)
        with torch.no_grad():
            layer.lora_B.weight.normal_()
        eager_layer = copy.deepcopy(layer)  # make_graphed_callables replaces layer.forward
        x = torch.randn(40, 64, device="cuda", requires_grad=True)
        graphed = torch.cuda.make_graphed_callables(layer, (x,))
        out = graphed(x)
        out.backward(torch.ones_like(out))
        grad_a = layer.lora_A.weight.grad.clone()
        if p == 0.0:  # the eager layer's numbers
            x_eager = x.detach().clone().requires_grad_(True)
            eager = eager_layer(x_eager)
            eager.backward(torch.ones_like(eager))
            torch.testing.assert_close(out, eager)
            torch.testing.assert_close(grad_a, eager_layer.lora_A.weight.grad)
            torch.testing.assert_close(x.grad, x_eager.grad)
        else:  # a replay draws a new mask
            assert not torch.equal(graphed(x), out)


def test_torch_compile_fullgraph(device):
    torch._dynamo.reset()
    x, w, b, a, bb = make_inputs((2, 9), 24, 20, 4, torch.float32, device)

    def f(x, w, b, a, bb):
        return ops.lora_linear(x, w, b, a, bb, 0.5, 0.0).square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    loss = compiled(x, w, b, a, bb)
    grads = torch.autograd.grad(loss, [x, a, bb])
    ref_loss = f(x, w, b, a, bb)
    ref_grads = torch.autograd.grad(ref_loss, [x, a, bb])
    assert max_abs(loss, ref_loss) <= 1e-4
    for g, rg in zip(grads, ref_grads):
        assert max_abs(g, rg) <= 1e-4


@pytest.mark.parametrize("freeze_A", [False, True])
def test_torch_compile_dynamic_shapes_match_eager(freeze_A):
    # The C++ autograd runs on symbolic shapes under dynamic compilation; with A
    # frozen it saves a zero-storage stand-in for x shaped from those shapes.
    torch.manual_seed(0)
    layer = peftcore.LoraLinear(torch.nn.Linear(16, 8), r=4, alpha=8)
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    layer.lora_A.weight.requires_grad_(not freeze_A)
    compiled = torch.compile(layer, fullgraph=True, dynamic=True, backend="aot_eager")
    for n in (5, 7, 11):
        x = torch.randn(n, 16, requires_grad=True)
        x_ref = x.detach().clone().requires_grad_(True)
        params = [p for p in layer.parameters() if p.requires_grad]
        got = torch.autograd.grad(compiled(x).square().sum(), [x, *params])
        want = torch.autograd.grad(layer(x_ref).square().sum(), [x_ref, *params])
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)


@pytest.mark.slow
def test_torch_compile_inductor_with_dropout(device):
    torch._dynamo.reset()
    x, w, b, a, bb = make_inputs((2, 9), 24, 20, 4, torch.float32, device)

    def f(x, w, b, a, bb):
        return ops.lora_linear(x, w, b, a, bb, 0.5, 0.25).square().sum()

    compiled = torch.compile(f, fullgraph=True)
    loss = compiled(x, w, b, a, bb)
    loss.backward()
    assert torch.isfinite(a.grad).all() and bb.grad is not None
