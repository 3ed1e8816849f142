"""CUDA multi-tensor optimizer kernels against the CPU ops (which test_optim.py checks
against timm and peftcore.reference.optim): launch packing, multi-chunk tensors, dtypes, no host sync."""

import copy
import math

import pytest
import torch
from torch import nn

from peftcore.optim import Lamb, Lars

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

# 41 tensors (more than one launch's 32), sizes from 0 to several 65536-element chunks.
SIZES = [0, 1, 7, 65536, 65537, 300001] + [1000 + 37 * i for i in range(35)]


def make_lists(dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    sdt = torch.float64 if dtype == torch.float64 else torch.float32
    out = []
    for n in SIZES:
        out.append([torch.randn(n, generator=g, dtype=torch.float64).to(dtype),
                    torch.randn(n, generator=g, dtype=torch.float64).to(dtype),
                    (torch.randn(n, generator=g, dtype=torch.float64) * 0.1).to(sdt),
                    (torch.rand(n, generator=g, dtype=torch.float64) * 0.1).to(sdt)])
    return [[t[i].to(device) for t in out] for i in range(4)]


def scalars(device, dtype=torch.float32, **values):
    return {k: torch.tensor(v, dtype=dtype, device=device) for k, v in values.items()}


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.float64, 1e-12), (torch.bfloat16, 1e-2)])
def test_lamb_cuda_matches_cpu(dtype, tol):
    cpu, gpu = make_lists(dtype, "cpu"), make_lists(dtype, "cuda")
    for lists, dev in ((cpu, "cpu"), (gpu, "cuda")):
        s = scalars(dev, lr=0.01, step=3.0, div=1.5)
        torch.ops.peftcore.lamb_step_(*lists, [], s["lr"], s["step"], s["div"], None, 0.9, 0.999, 1e-6,
                                      0.01, True, True, True, False, 0.0, math.inf, 0.0)
    for a, b in zip(cpu[0] + cpu[2] + cpu[3], gpu[0] + gpu[2] + gpu[3]):
        torch.testing.assert_close(b.cpu(), a, rtol=tol, atol=tol)


@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_lars_cuda_matches_cpu(momentum, nesterov):
    cpu, gpu = make_lists(torch.float32, "cpu"), make_lists(torch.float32, "cuda")
    fresh = [i % 2 == 0 for i in range(len(SIZES))] if momentum else []
    for lists, dev in ((cpu, "cpu"), (gpu, "cuda")):
        s = scalars(dev, lr=0.1, div=2.0)
        bufs = lists[2] if momentum else []
        torch.ops.peftcore.lars_step_(lists[0], lists[1], bufs, [], s["lr"], s["div"], None, fresh,
                                      momentum, 0.0, 1e-4, nesterov, 0.001, 1e-8, True, True)
    for a, b in zip(cpu[0] + cpu[2], gpu[0] + gpu[2]):
        torch.testing.assert_close(b.cpu(), a, rtol=2e-6, atol=2e-6)


def test_sumsq_cuda_matches_cpu():
    cpu, gpu = make_lists(torch.float32, "cpu"), make_lists(torch.float32, "cuda")
    torch.testing.assert_close(torch.ops.peftcore.multi_tensor_sumsq(gpu[1]).cpu(),
                               torch.ops.peftcore.multi_tensor_sumsq(cpu[1]), rtol=1e-5, atol=0)


def test_found_inf_skips_on_device():
    gpu = make_lists(torch.float32, "cuda")
    before = [t.clone() for t in gpu[0] + gpu[2] + gpu[3]]
    s = scalars("cuda", lr=0.01, step=1.0, div=1.0, inf=1.0)
    torch.ops.peftcore.lamb_step_(*gpu, [], s["lr"], s["step"], s["div"], s["inf"], 0.9, 0.999, 1e-6,
                                  0.01, True, True, True, False, 0.0, math.inf, 0.0)
    for a, b in zip(before, gpu[0] + gpu[2] + gpu[3]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cls,kw", [(Lamb, {}), (Lars, {"momentum": 0.9, "weight_decay": 1e-4})])
def test_optimizer_step_never_syncs_and_matches_cpu(cls, kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 8))
    gpu_model = copy.deepcopy(model).cuda()
    opt_cpu, opt_gpu = cls(model.parameters(), lr=0.01, **kw), cls(gpu_model.parameters(), lr=0.01, **kw)
    for step in range(5):
        x, y = torch.randn(32, 64), torch.randn(32, 8)
        for m, o, dev in ((model, opt_cpu, "cpu"), (gpu_model, opt_gpu, "cuda")):
            o.zero_grad()
            nn.functional.mse_loss(m(x.to(dev)), y.to(dev)).backward()
            if dev == "cuda" and step > 0:
                torch.cuda.set_sync_debug_mode("error")
            try:
                o.step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
    for p, q in zip(model.parameters(), gpu_model.parameters()):
        torch.testing.assert_close(q.cpu(), p, rtol=1e-4, atol=1e-5)


def test_state_dict_moves_between_cpu_and_cuda():
    model = nn.Linear(8, 4)
    opt = Lamb(model.parameters())
    model(torch.randn(2, 8)).sum().backward()
    opt.step()
    state = opt.state_dict()
    gpu_model = copy.deepcopy(model).cuda()
    gpu_opt = Lamb(gpu_model.parameters())
    gpu_opt.load_state_dict(state)
    gpu_model(torch.randn(2, 8, device="cuda")).sum().backward()
    gpu_opt.step()  # must not fail on device placement of the loaded state
    assert all(s["exp_avg"].is_cuda for s in gpu_opt.state.values())


@pytest.mark.parametrize("cls,kw", [(Lamb, {"weight_decay": 0.01}), (Lars, {"momentum": 0.9, "weight_decay": 1e-4})])
def test_whole_step_captures_in_a_cuda_graph(cls, kw):
    """Forward, backward and step captured once and replayed: the same parameters as eager
    steps (the step counter and scalars live on device, so nothing is baked at capture)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 4)).cuda()
    eager = copy.deepcopy(model)
    opt, eager_opt = cls(model.parameters(), lr=0.01, **kw), cls(eager.parameters(), lr=0.01, **kw)
    data = [(torch.randn(16, 32, device="cuda"), torch.randn(16, 4, device="cuda")) for _ in range(8)]
    static_x, static_y = data[0][0].clone(), data[0][1].clone()

    def train_step(m, o, x, y):
        o.zero_grad(set_to_none=False)
        nn.functional.mse_loss(m(x), y).backward()
        o.step()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up creates the optimizer state outside the capture
        for x, y in data[:3]:
            static_x.copy_(x), static_y.copy_(y)
            train_step(model, opt, static_x, static_y)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        train_step(model, opt, static_x, static_y)
    for x, y in data[3:]:
        static_x.copy_(x), static_y.copy_(y)
        graph.replay()
    for x, y in data:
        train_step(eager, eager_opt, x, y)
    torch.cuda.synchronize()
    for p, q in zip(model.parameters(), eager.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    if cls is Lamb:  # LARS keeps no step counter
        step = next(iter(opt.state.values()))["step"]
        assert step.is_cuda and float(step) == len(data)
