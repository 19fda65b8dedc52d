"""Bitshuffle's bit transposition and its inverse, as numba kernels.

:func:`bitshuffle` serves the encoders (simulator, replay, benchmarks); :func:`unshuffle_block`
serves livediff's own chunk decoder (:mod:`.lz4chunks`), which :mod:`.codecs` uses when the
optional ``dectris-compression`` is not installed.  Both live apart from :mod:`.codecs` so that
importing a receiver does not load numba; the kernels are loaded on the first encode or decode.

The transposition never reads lengths from received bytes: the caller sizes every buffer.
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


@numba.njit(nogil=True, cache=True)
def bitunshuffle(src: np.ndarray, dst: np.ndarray, block: int, itemsize: int, little: bool) -> None:
    """Undo :func:`bitshuffle`: ``bitunshuffle(bitshuffle(x))`` gives ``x`` back, byte for byte.

    Same arguments as :func:`bitshuffle`, plus ``little``: True on a little-endian host (the
    64-bit word kernel); ``src`` is not written.  The chunk decoder calls
    :func:`unshuffle_block` directly on each decompressed block instead.
    """
    n = src.size // itemsize
    full = n - n % 8
    scratch = np.empty(min(block, full) * itemsize, np.uint8)
    words = scratch[:scratch.size - scratch.size % 8].view(np.uint64)
    out = dst[:full * itemsize - full * itemsize % 8].view(np.uint64)
    start = 0
    while start < full:
        m = min(block, full - start)
        scratch[:m * itemsize] = src[start * itemsize:(start + m) * itemsize]
        unshuffle_block(scratch, words, dst, out, start, m, itemsize, little)
        start += m
    for k in range(full * itemsize, n * itemsize):
        dst[k] = src[k]


@numba.njit(nogil=True, cache=True)
def unshuffle_block(planes: np.ndarray, words: np.ndarray, dst: np.ndarray, out: np.ndarray, start: int,
                    m: int, itemsize: int, little: bool) -> None:
    """Undo the transposition of one block of ``m`` elements into ``dst`` from element ``start``.

    ``planes`` holds the block's ``8 itemsize`` bit planes of ``m / 8`` bytes each (it is
    overwritten), ``words`` is the same buffer seen as uint64 and ``out`` is ``dst`` seen as
    uint64 (both as long as their bytes allow).  Blocks of a multiple of 64 elements of 1, 2,
    4 or 8 bytes on a little-endian host take the word kernel (:func:`_unshuffle_words`), the
    rest the byte kernel; both give the same bytes.
    """
    if little and m % 64 == 0 and (start * itemsize) % 8 == 0 and (
            itemsize == 1 or itemsize == 2 or itemsize == 4 or itemsize == 8):
        _unshuffle_words(words, out, start * itemsize // 8, m, itemsize)
    else:
        _unshuffle_bytes(planes, dst, start * itemsize, m, itemsize)


@numba.njit(nogil=True, cache=True)
def _unshuffle_bytes(planes: np.ndarray, dst: np.ndarray, base: int, m: int, itemsize: int) -> None:
    """Byte by byte: bit ``i % 8`` of byte ``k m / 8 + i // 8`` becomes bit k of element i."""
    rows = m // 8
    for g in range(rows):
        for j in range(itemsize):
            x = np.uint64(0)
            for b in range(8):
                x |= np.uint64(planes[(j * 8 + b) * rows + g]) << np.uint64(8 * b)
            if x != 0:
                x = _transpose8(x)
            for b in range(8):
                dst[base + (g * 8 + b) * itemsize + j] = np.uint8((x >> np.uint64(8 * b)) & np.uint64(0xFF))


@numba.njit(nogil=True, cache=True, inline="always")
def _swap(words: np.ndarray, n: int, a: int, b: int, shift: np.uint64, mask: np.uint64) -> None:
    """One step of a transposition network on rows ``a`` and ``b`` (n words each) at once."""
    x = words[a * n:(a + 1) * n]
    y = words[b * n:(b + 1) * n]
    for i in range(n):
        t = ((x[i] >> shift) ^ y[i]) & mask
        x[i] ^= t << shift
        y[i] ^= t


@numba.njit(nogil=True, cache=True)
def _unshuffle_words(words: np.ndarray, out: np.ndarray, first: int, m: int, itemsize: int) -> None:
    """64 elements at a time: a bit-matrix transposition on little-endian 64-bit words.

    With w = 8 itemsize, word g of plane k holds bit k of elements 64 g .. 64 g + 63.  A
    w x w bit transposition inside each w-bit lane of the w words of a group [1]_ (log2 w
    stages of masked swaps), then a transposition of the 8 / itemsize lanes across words,
    leaves each word holding whole elements.  Every stage runs over all groups of the block
    at once, so the loops are long and vectorise.  ``first`` is the block's first word in
    ``out``.

    References
    ----------
    .. [1] H. S. Warren, *Hacker's Delight*, 2nd ed., section 7-3 (transposing a bit matrix).
    """
    w = 8 * itemsize
    groups = m // 64
    lanes = 8 // itemsize
    if w == 64:
        mask = np.uint64(0x00000000FFFFFFFF)
    elif w == 32:
        mask = np.uint64(0x0000FFFF0000FFFF)
    elif w == 16:
        mask = np.uint64(0x00FF00FF00FF00FF)
    else:
        mask = np.uint64(0x0F0F0F0F0F0F0F0F)
    j = w // 2
    while j > 0:  # bit transposition within each lane
        for first_row in range(0, w, 2 * j):
            for i in range(j):
                _swap(words, groups, first_row + i, first_row + i + j, np.uint64(j), mask)
        j //= 2
        mask ^= mask << np.uint64(j)
    per = itemsize * itemsize  # words of output per lane
    if lanes == 1:
        for k in range(w):
            row = words[k * groups:(k + 1) * groups]
            for g in range(groups):
                out[first + g * w + k] = row[g]
        return
    shift, step = 32, lanes // 2
    lane_mask = np.uint64(0x00000000FFFFFFFF)
    while shift > w:  # lanes across words, all but the last stage
        for first_row in range(0, w, 2 * step):
            for i in range(step):
                _swap(words, groups, first_row + i, first_row + i + step, np.uint64(shift), lane_mask)
        shift //= 2
        step //= 2
        lane_mask ^= lane_mask << np.uint64(shift)
    for q in range(per):  # the last stage writes the output: row q lanes + lane holds elements
        for lane in range(0, lanes, 2):
            k = q * lanes + lane
            x = words[k * groups:(k + 1) * groups]
            y = words[(k + 1) * groups:(k + 2) * groups]
            at = first + lane * per + q
            for g in range(groups):
                t = ((x[g] >> np.uint64(w)) ^ y[g]) & lane_mask
                out[at + g * w] = x[g] ^ (t << np.uint64(w))
                out[at + per + g * w] = y[g] ^ t
