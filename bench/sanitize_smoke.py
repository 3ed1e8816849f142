"""Every CUDA kernel family once on small, odd shapes: run under
`compute-sanitizer --tool memcheck` by bench/gpu_check.sh to catch out-of-bounds
accesses that a parity test can miss (a stray read that happens to hit zeros)."""

import torch
from torch import nn

import peftcore
from peftcore.optim import Lamb, Lars
from peftcore.sparse import SparseDelta, apply, revert


def adapters(dtype):
    # (300, 256, 520, 16) and (70, 136, 64, 33): the tensor-core skinny kernels apply
    # when switched on (in and out multiples of 8).
    for n, i, o, r in ((1, 1, 1, 1), (37, 129, 65, 7), (300, 256, 513, 16), (300, 256, 520, 16), (70, 136, 64, 33)):
        x = torch.randn(n, i, device="cuda", dtype=dtype, requires_grad=True)
        for layer in (peftcore.LoraLinear(nn.Linear(i, o), r=r, dropout=0.1),
                      peftcore.HydraLinear(nn.Linear(i, o), r_parallel=r, r_sequential=r + 1, dropout=0.1)):
            layer = layer.to("cuda", dtype)
            for p in layer.parameters():
                if p.requires_grad:
                    nn.init.normal_(p, std=0.1)
            layer.train()
            layer(x).square().sum().backward()
            # x off the 16-byte grid: the element-by-element dropout kernels.
            layer(torch.randn(n * i + 1, device="cuda", dtype=dtype)[1:].view(n, i)).sum().backward()
    x = torch.randn(33, 128, device="cuda", dtype=dtype, requires_grad=True)
    bat = peftcore.BoneLinear(nn.Linear(128, 192), r=64, variant="bat").to("cuda", dtype)
    bat(x).sum().backward()


def optimizers():
    for cls, kw in ((Lamb, {"weight_decay": 0.01, "max_grad_norm": 1.0}), (Lars, {"momentum": 0.9})):
        model = nn.Sequential(nn.Linear(65, 129), nn.Linear(129, 3)).cuda()
        opt = cls(model.parameters(), lr=0.01, **kw)
        for _ in range(2):
            opt.zero_grad()
            model(torch.randn(5, 65, device="cuda")).sum().backward()
            opt.step()


def sparse():
    model = nn.Sequential(nn.Linear(97, 131), nn.Linear(131, 7)).cuda().to(torch.bfloat16)
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    deltas = []
    for seed in (0, 1):
        g = torch.Generator(device="cuda").manual_seed(seed)
        theta = {k: v + torch.randn(v.shape, generator=g, device="cuda", dtype=v.dtype) for k, v in theta0.items()}
        deltas.append(SparseDelta.from_diff(theta0, theta, density=0.05))
    handle = apply(model, deltas)
    revert(model, handle)


if __name__ == "__main__":
    for dtype in (torch.float32, torch.bfloat16):
        adapters(dtype)
    optimizers()
    sparse()
    torch.cuda.synchronize()
    print("sanitize_smoke: all kernel families ran")
