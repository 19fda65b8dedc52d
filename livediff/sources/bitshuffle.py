"""Bitshuffle's bit transposition, for the encoders (simulator, replay, benchmarks).

Decoding never needs it (``dectris-compression`` undoes the transposition in C); it lives
apart from :mod:`.codecs` so that receiving frames does not load numba.
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def _transpose8(x: np.uint64) -> np.uint64:
    """Transpose the 8 x 8 bit matrix whose row r is byte r of ``x`` (Hacker's Delight 7-3)."""
    t = (x ^ (x >> np.uint64(7))) & np.uint64(0x00AA00AA00AA00AA)
    x = x ^ t ^ (t << np.uint64(7))
    t = (x ^ (x >> np.uint64(14))) & np.uint64(0x0000CCCC0000CCCC)
    x = x ^ t ^ (t << np.uint64(14))
    t = (x ^ (x >> np.uint64(28))) & np.uint64(0x00000000F0F0F0F0)
    return x ^ t ^ (t << np.uint64(28))


@numba.njit(nogil=True, cache=True)
def bitshuffle(src: np.ndarray, dst: np.ndarray, block: int, itemsize: int) -> None:
    """Bit-transpose ``src`` into ``dst`` block by block, exactly as bitshuffle does.

    Both are uint8 buffers of n elements of ``itemsize`` bytes; ``block`` is in elements
    (a multiple of 8).  Full blocks, then the last partial block cut to a multiple of 8
    elements, are transposed; the final ``n % 8`` elements are copied.  In a block of m
    elements, bit k of element i goes to bit ``i % 8`` of byte ``k m / 8 + i // 8``.
    """
    n = src.size // itemsize
    start = 0
    while start + 8 <= n:
        m = min(block, n - start)
        m -= m % 8
        rows = m // 8  # bytes per bit plane
        base = start * itemsize
        for g in range(rows):
            for j in range(itemsize):
                x = np.uint64(0)
                for b in range(8):
                    x |= np.uint64(src[base + (g * 8 + b) * itemsize + j]) << np.uint64(8 * b)
                x = _transpose8(x)
                for b in range(8):
                    dst[base + (j * 8 + b) * rows + g] = np.uint8((x >> np.uint64(8 * b)) & np.uint64(0xFF))
        start += m
    for k in range(start * itemsize, n * itemsize):
        dst[k] = src[k]
