"""DistributedDataParallel (gloo, 2 processes on this machine) with peftcore LoRA layers:
the adapters after training equal those of one process on the same global batches."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import peftcore

STEPS, GLOBAL_BATCH, WORLD = 5, 16, 2


def make_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 24), nn.GELU(), nn.Linear(24, 6))
    peftcore.inject(model, peftcore.LoraConfig(r=4, alpha=8, target_modules=["0", "2"]))
    with torch.no_grad():
        for layer in peftcore.model.lora_layers(model).values():
            layer.lora_B.weight.normal_(0, 0.1)
    return model


def batches():
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(GLOBAL_BATCH, 12, generator=gen), torch.randn(GLOBAL_BATCH, 6, generator=gen))
            for _ in range(STEPS)]


def train(model, data, rank=0, world=1):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    per = GLOBAL_BATCH // world
    for x, y in data:
        xs, ys = x[rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per]
        loss = nn.functional.mse_loss(model(xs), ys)
        opt.zero_grad()
        loss.backward()
        opt.step()


def _worker(rank, port, out_path):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model = make_model()
        ddp = nn.parallel.DistributedDataParallel(model)
        train(ddp, batches(), rank, WORLD)
        if rank == 0:
            torch.save({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}, out_path)
        dist.barrier()  # neither rank tears gloo down while the other still talks to it
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_ddp_two_processes_match_single_process(tmp_path):
    out = tmp_path / "ddp.pt"
    try:
        mp.spawn(_worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
        # One retry on a fresh port: the rendezvous can race, and gloo's teardown once
        # aborted a worker in CI ("terminate called without an active exception"),
        # not reproduced in 8 local runs.
        print("first DDP attempt failed, retrying:", exc)
        mp.spawn(_worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    ddp_params = torch.load(out, weights_only=True)
    single = make_model()
    train(single, batches())
    mine = {n: p for n, p in single.named_parameters() if p.requires_grad}
    assert set(mine) == set(ddp_params) and len(mine) == 4
    for n, p in mine.items():
        torch.testing.assert_close(ddp_params[n], p, rtol=1e-5, atol=1e-6)
