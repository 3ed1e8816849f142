"""The dropout masks every adapter kernel regenerates from a seed: Philox4x32-10 and the
rule that turns its output into a keep-mask, in plain PyTorch (the oracle the kernels
are compared with bit for bit)."""

from __future__ import annotations

import torch
from torch import Tensor


_M32 = 0xFFFFFFFF
_PHILOX_M = (0xD2511F53, 0xCD9E8D57)
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)


def _mulhilo32(a: Tensor, b: int) -> tuple[Tensor, Tensor]:
    """(lo, hi) 32-bit halves of a * b for uint32 values held in int64, without overflow."""
    p0 = (a & 0xFFFF) * b  # < 2**48
    p1 = (a >> 16) * b  # < 2**48
    low_sum = p0 + ((p1 & 0xFFFF) << 16)  # < 2**49
    return low_sum & _M32, ((p1 >> 16) + (low_sum >> 32)) & _M32


def philox4x32_10(group: Tensor, stream: int, key: int) -> list[Tensor]:
    """Philox4x32-10 (Salmon et al. 2011) on counters (group, stream) with a 64-bit key.

    group: int64 tensor of non-negative counter values; stream, key: uint64 as Python ints.
    Returns the four uint32 output words (as int64 tensors).
    """
    c = [group & _M32, (group >> 32) & _M32]
    c += [torch.full_like(group, stream & _M32), torch.full_like(group, (stream >> 32) & _M32)]
    k0, k1 = key & _M32, (key >> 32) & _M32
    for _ in range(10):
        lo0, hi0 = _mulhilo32(c[0], _PHILOX_M[0])
        lo1, hi1 = _mulhilo32(c[2], _PHILOX_M[1])
        c = [hi1 ^ c[1] ^ k0, lo1, hi0 ^ c[3] ^ k1, lo0]
        k0, k1 = (k0 + _PHILOX_W[0]) & _M32, (k1 + _PHILOX_W[1]) & _M32
    return c


def dropout_keep_mask(seed: Tensor, p: float, rows: int, cols: int) -> Tensor:
    """The keep-mask peftcore's kernels regenerate for a [rows, cols] input.

    Element i (flat row-major) takes the 16-bit half i % 2 (low half first) of word
    (i // 2) % 4 of Philox(counter=(i // 8, seed[1]), key=seed[0]) and is kept when
    that half is >= ceil(p * 2**16), i.e. with probability 1 - p up to 2**-16. Kept
    values are later scaled by 1 / (1 - p).
    """
    words = [int(w) & 0xFFFFFFFFFFFFFFFF for w in seed.cpu().tolist()]
    flat = torch.arange(rows * cols, dtype=torch.int64)
    r = philox4x32_10(flat >> 3, stream=words[1], key=words[0])
    lane = (flat >> 1) & 3
    word = torch.where(lane == 0, r[0], torch.where(lane == 1, r[1], torch.where(lane == 2, r[2], r[3])))
    half = (word >> (16 * (flat & 1))) & 0xFFFF
    threshold = int(-(-p * 2**16 // 1))  # ceil
    return (half >= threshold).reshape(rows, cols)
