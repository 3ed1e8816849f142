"""Exact top-k selection of |theta - theta0| over many tensors, without
concatenating them. Two algorithms, one tie rule (reference.magnitude_top_k):

- CPU: the magnitude_topk op (csrc/sparse/magnitude_topk_cpu.cpp), a radix select
  on the float32 bit patterns of the magnitudes, four parallel passes that never
  store a magnitude.
- GPU: the histograms would be atomics on a few hot bins and every parameter a few
  host reads (far slower than one torch.topk on an H200), so there the
  magnitudes go through a bounded fp32 buffer in chunks; each chunk's top k joins a
  pool that is cut back to k. The pool then holds the k largest values; a second
  pass counts the entries tied at the k-th value so that ties are taken in the
  documented order (pairs' order, then flat index), exactly as on the CPU."""

from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch import Tensor


def select_top_k(pairs: Mapping[str, tuple[Tensor, Tensor]], k: int, float64: bool = False) -> dict[str, Tensor]:
    """Flat indices (sorted int64) of the k largest |theta - theta0| over all pairs:
    everything above the k-th largest magnitude, then ties in the pairs' order.

    The difference is float(theta) - float(theta0) in float32 (the op's rule). With
    ``float64=True``, pairs with a float64 side are compared by their float64
    difference instead (the others keep the float32 one, which float64 holds
    exactly), so differences below float32's resolution rank by their true size;
    that goes through the chunked algorithm with a float64 buffer."""
    total = sum(p[0].numel() for p in pairs.values())
    if k <= 0 or total == 0:
        return {n: torch.zeros(0, dtype=torch.int64, device=p[0].device) for n, p in pairs.items()}
    k = min(k, total)
    if float64 and any(_wide(t0, t) for t0, t in pairs.values()):
        return select_top_k_chunked(pairs, k, float64=True)
    if next(iter(pairs.values()))[0].device.type != "cpu":
        return select_top_k_chunked(pairs, k)
    theta0, theta = [], []
    for t0, t in pairs.values():
        t0, t = t0.detach(), t.detach()
        if t0.dtype != t.dtype:  # float32 holds both exactly: the same float(t) - float(t0)
            t0, t = t0.float(), t.float()
        theta0.append(t0)
        theta.append(t)
    return dict(zip(pairs, torch.ops.peftcore.magnitude_topk(theta0, theta, k)))


def _wide(t0: Tensor, t: Tensor) -> bool:
    return t0.dtype == torch.float64 or t.dtype == torch.float64


# 32M fp32 magnitudes (128 MiB) per chunk: large enough that topk runs near its
# full-array speed, small next to a second copy of a model.
CHUNK_ELEMENTS = 1 << 25


def _pieces(numels: list[int], chunk: int):
    """Chunks of the pairs' virtual concatenation: per chunk its start position and
    the (pair index, start, length) pieces that fill it, in order."""
    chunk_start, filled, pieces = 0, 0, []
    for i, n in enumerate(numels):
        start = 0
        while start < n:
            take = min(n - start, chunk - filled)
            pieces.append((i, start, take))
            filled += take
            start += take
            if filled == chunk:
                yield chunk_start, pieces
                chunk_start, filled, pieces = chunk_start + chunk, 0, []
    if pieces:
        yield chunk_start, pieces


def _sub_float32(out: Tensor, t: Tensor, t0: Tensor) -> None:
    """out (float32) = float(t) - float(t0), as the CPU op computes it."""
    if t.dtype == torch.float32 and t0.dtype == torch.float32:
        torch.sub(t, t0, out=out)
    elif t.dtype in (torch.float16, torch.bfloat16) and t0.dtype in (torch.float16, torch.bfloat16, torch.float32):
        out.copy_(t).sub_(t0)  # 16-bit -> float32 is exact, so this is (float)t - (float)t0
    else:
        torch.sub(t.to(torch.float32), t0.to(torch.float32), out=out)


def _fill_magnitudes(buf: Tensor, flat: list[tuple[Tensor, Tensor]], pieces) -> Tensor:
    """|theta - theta0| of the pieces into `buf`: computed like the CPU op (both sides
    cast to float32, then subtracted); in a float64 `buf`, pairs with a float64 side
    are subtracted in float64 and the others still in float32."""
    at = 0
    for i, start, length in pieces:
        t0, t = (x.narrow(0, start, length) for x in flat[i])
        out = buf.narrow(0, at, length)
        if buf.dtype == torch.float32:
            _sub_float32(out, t, t0)
        elif _wide(t0, t):
            torch.sub(t.to(torch.float64), t0.to(torch.float64), out=out)
        else:
            narrow32 = torch.empty(length, dtype=torch.float32, device=buf.device)
            _sub_float32(narrow32, t, t0)
            out.copy_(narrow32)
        at += length
    return buf.narrow(0, 0, at).abs_()


def default_chunk(device: torch.device, total: int, itemsize: int = 4) -> int:
    """All magnitudes in one chunk when they take at most 1/8 of the free GPU memory
    (one topk, and the tie pass reads the buffer instead of the parameters again);
    CHUNK_ELEMENTS otherwise."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if itemsize * total <= free // 8:
            return max(total, 1)
    return CHUNK_ELEMENTS


def select_top_k_chunked(pairs: Mapping[str, tuple[Tensor, Tensor]], k: int,
                         chunk: Optional[int] = None, float64: bool = False) -> dict[str, Tensor]:
    """`select_top_k` through chunked torch.topk (the GPU algorithm; exact, same tie
    rule). Extra memory: one chunk of float32 (float64 with ``float64=True``, see
    `select_top_k`) plus a pool of 2k values and positions."""
    names = list(pairs)
    flat = [(t0.detach().flatten(), t.detach().flatten()) for t0, t in pairs.values()]
    numels = [f[0].numel() for f in flat]
    device = flat[0][0].device
    mag_dtype = torch.float64 if float64 else torch.float32
    chunk = chunk or default_chunk(device, sum(numels), mag_dtype.itemsize)
    buf = torch.empty(min(chunk, sum(numels)), dtype=mag_dtype, device=device)
    pool_v = torch.empty(0, dtype=mag_dtype, device=device)
    pool_pos = torch.empty(0, dtype=torch.int64, device=device)
    finite = torch.ones((), dtype=torch.bool, device=device)
    for chunk_start, pieces in _pieces(numels, chunk):
        mags = _fill_magnitudes(buf, flat, pieces)
        finite &= torch.isfinite(mags).all()
        v, pos = torch.topk(mags, min(k, mags.numel()), sorted=False)
        pool_v, pool_pos = torch.cat([pool_v, v]), torch.cat([pool_pos, pos + chunk_start])
        if pool_v.numel() > k:
            pool_v, keep = torch.topk(pool_v, k, sorted=False)
            pool_pos = pool_pos[keep]
    threshold = pool_v.min()
    above = pool_v > threshold
    ok, n_above = torch.stack([finite.long(), above.sum()]).tolist()  # the first host read
    if not ok:
        raise ValueError("from_diff: theta - theta0 has non-finite values")
    ties_left = k - n_above

    # Ties at the threshold, taken in order: count them per piece (one host read),
    # then find the first `ties_left` of them.
    tie_pos = []
    if ties_left > 0 and chunk >= sum(numels):  # one chunk: its magnitudes are still in buf
        tie_pos.append(torch.nonzero(mags == threshold).flatten()[:ties_left])
    elif ties_left > 0:
        counts, spans = [], []
        for chunk_start, pieces in _pieces(numels, chunk):
            mags = _fill_magnitudes(buf, flat, pieces)
            at = 0
            for i, start, length in pieces:
                counts.append((mags.narrow(0, at, length) == threshold).sum())
                spans.append((i, start, length, chunk_start + at))
                at += length
        for count, (i, start, length, virtual_start) in zip(torch.stack(counts).tolist(), spans):
            if ties_left == 0:
                break
            if count == 0:
                continue
            mags = _fill_magnitudes(buf, flat, [(i, start, length)])
            take = torch.nonzero(mags == threshold).flatten()[:ties_left]
            tie_pos.append(take + virtual_start)
            ties_left -= take.numel()
    chosen_pos = torch.sort(torch.cat([pool_pos[above]] + tie_pos)).values

    # Back from virtual positions to each pair's flat indices (one host read).
    offsets = torch.tensor([0] + numels, dtype=torch.int64).cumsum(0)
    bounds = torch.searchsorted(chosen_pos, offsets.to(device)).tolist()
    return {name: chosen_pos[bounds[i]:bounds[i + 1]] - int(offsets[i])
            for i, name in enumerate(names)}
