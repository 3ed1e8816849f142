"""The GPU paths that are off by default (csrc/common/gpu_paths.h): the LoRA backward's
dA / dB on a side stream, and the tensor-core skinny kernels with dropout applied on
the fly. Each switched on alone and together, against the float64 reference and
PyTorch's own math in the same dtype; shapes where the kernels apply and where they
fall back (K or out not a multiple of 8, r > 64)."""

import pytest
import torch

import peftcore
from peftcore import reference
from helpers import LOW_PRECISION, assert_as_accurate_as_torch

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
SWITCHES = {"side stream": peftcore._C._set_side_stream, "tc skinny": peftcore._C._set_tc_skinny}


@pytest.fixture(params=["side stream", "tc skinny", "side stream+tc skinny"])
def gpu_paths(request):
    on = request.param.split("+")
    for name, switch in SWITCHES.items():
        switch(name in on)
    yield request.param
    for switch in SWITCHES.values():
        switch(False)


def test_gpu_paths_are_off_by_default():
    assert not peftcore._C._side_stream() and not peftcore._C._tc_skinny()


def test_switches_leave_the_cpu_path_alone(gpu_paths):
    g = torch.Generator().manual_seed(3)
    x, w, a, b = (torch.randn(*s, generator=g, dtype=torch.float64) for s in [(33, 16), (24, 16), (8, 16), (24, 8)])
    out, _ = torch.ops.peftcore.lora_linear(x, w, None, a, b, 0.5, 0.0, None)
    assert torch.allclose(out, reference.lora_linear(x, w, None, a, b, 0.5), rtol=1e-12, atol=1e-12)


def make(lead, n_in, n_out, r, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(*lead, n_in), (n_out, n_in), (n_out,), (r, n_in), (n_out, r)]
    scales = [1.0, n_in ** -0.5, 1.0, n_in ** -0.5, 1.0]
    hi = [(torch.randn(*s, generator=g, dtype=torch.float64) * k).cuda() for s, k in zip(shapes, scales)]
    low = [t.to(dtype) for t in hi]
    for t in hi + low:
        t.requires_grad_(True)
    return low, hi


def assert_op_as_accurate_as_torch(op, reference_fn, low, hi, what):
    """op(low) and its gradients against reference_fn in the same dtype (PyTorch's own
    math) and in float64: a wrong keep-mask, row or column moves whole terms, far
    beyond the 16-bit rounding."""
    out, torch_low, ref = op(low), reference_fn(low), reference_fn(hi)
    assert_as_accurate_as_torch(out, torch_low, ref, f"out {what}")
    grad = torch.randn(ref.shape, dtype=torch.float64, device="cuda")
    for i, (ours, theirs, want) in enumerate(zip(torch.autograd.grad(out, low, grad.to(out.dtype)),
                                                 torch.autograd.grad(torch_low, low, grad.to(out.dtype)),
                                                 torch.autograd.grad(ref, hi, grad))):
        assert_as_accurate_as_torch(ours, theirs, want, f"grad {i} {what}")


def lora_pair(p, seed):
    """The op and reference.lora_linear at scaling 0.5 and dropout p."""
    def op(t):
        return torch.ops.peftcore.lora_linear(*t, 0.5, p, seed if p > 0 else None)[0]

    return op, lambda t: reference.lora_linear(*t, 0.5, p, seed)


# (leading shape, in, out, r). The kernels need in and out multiples of 8 and r <= 64;
# the last three fall back in part or whole. Split reductions from a few hundred rows.
SHAPES = [((37,), 136, 264, 16), ((2, 129), 1000, 8, 1), ((300,), 64, 72, 33), ((1,), 8, 16, 64),
          ((3, 1111), 512, 384, 16), ((5,), 7, 9, 4), ((40,), 24, 17, 8), ((260,), 256, 256, 65)]


@needs_cuda
@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("lead,n_in,n_out,r", SHAPES)
@pytest.mark.parametrize("p", [0.0, 0.3])
def test_lora_on_the_gpu_paths_is_as_accurate_as_torch(gpu_paths, dtype, lead, n_in, n_out, r, p):
    low, hi = make(lead, n_in, n_out, r, dtype, seed=n_in * 7 + r)
    seed = torch.tensor([0x5EED, 77], dtype=torch.int64, device="cuda")
    assert_op_as_accurate_as_torch(*lora_pair(p, seed), low, hi, gpu_paths)


@needs_cuda
@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("p", [0.0, 0.3])
def test_hydra_on_the_gpu_paths_is_as_accurate_as_torch(gpu_paths, dtype, p):
    # The sequential branch's big operand is h [N, out]; 203 rows leave partial tiles.
    g = torch.Generator().manual_seed(11)
    n, n_in, n_out, rp, rs = 203, 96, 64, 8, 16
    shapes = [(n, n_in), (n_out, n_in), (n_out,), (rp, n_in), (n_out, rp), (rs, n_out), (n_out, rs)]
    hi = [(torch.randn(*s, generator=g, dtype=torch.float64) / 4).cuda().requires_grad_(True) for s in shapes]
    low = [t.detach().to(dtype).requires_grad_(True) for t in hi]
    seed = torch.tensor([99, 5], dtype=torch.int64, device="cuda")
    assert_op_as_accurate_as_torch(
        lambda t: torch.ops.peftcore.hydra_linear(*t, 0.7, 1.3, p, seed if p > 0 else None)[0],
        lambda t: reference.hydra_linear(*t, 0.7, 1.3, p, seed), low, hi, gpu_paths)


@needs_cuda
@pytest.mark.parametrize("p", [0.0, 0.3])
def test_tc_kernels_take_adapter_weights_off_the_16_byte_grid(gpu_paths, p):
    # lora_A is read in 16-byte vectors: a view one element into its storage must be
    # copied to an aligned buffer first, not read misaligned.
    low, hi = make((100,), 64, 48, 8, torch.bfloat16, seed=3)
    flat = torch.empty(8 * 64 + 1, device="cuda", dtype=torch.bfloat16)
    flat[1:].copy_(low[3].detach().flatten())
    low[3] = flat[1:].view(8, 64).requires_grad_(True)
    seed = torch.tensor([5, 6], dtype=torch.int64, device="cuda")
    assert_op_as_accurate_as_torch(*lora_pair(p, seed), low, hi, gpu_paths)


@needs_cuda
def test_tc_kernels_run_when_switched_on_and_only_then():
    # A silent fallback to cuBLAS would let the parity tests above pass untested.
    low, _ = make((512,), 256, 256, 16, torch.bfloat16)
    seed = torch.tensor([1, 2], dtype=torch.int64, device="cuda")

    def kernels(tc: bool) -> set:
        peftcore._C._set_tc_skinny(tc)
        try:
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                out, _ = torch.ops.peftcore.lora_linear(*low, 0.5, 0.1, seed)
                out.backward(torch.randn_like(out))
                torch.cuda.synchronize()
        finally:
            peftcore._C._set_tc_skinny(False)
        names = {e.name for e in prof.events()}
        wanted = ("shrink_kernel", "outer_kernel", "expand_kernel", "masked_copy", "zero_dropped")
        return {k for k in wanted if any(k in n for n in names)}

    assert kernels(True) == {"shrink_kernel", "outer_kernel", "expand_kernel"}
    assert kernels(False) == {"masked_copy", "zero_dropped"}
