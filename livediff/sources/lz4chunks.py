"""livediff's own decoder of HDF5-filter chunks: numba kernels, no C extension to build.

:mod:`.codecs` uses these when the optional ``dectris-compression`` is not installed
(``pip install livediff[fast-codec]``).  They take bytes from the network, so they trust
nothing in them: every block's 4-byte length is checked against the bytes left and against
what an LZ4 block of that block's size can take *before* the block is decompressed, every
LZ4 sequence's literal run, match offset and match length against the input left, the
output written so far and the output left, and the bytes after the last block against the
stored tail.  Nothing is allocated from a length read in the data: the caller allocates the
output (``rows x cols x itemsize``, which the chunk's header must equal) and a block-sized
scratch buffer is cut to that.

Each walker returns ``(code, block, value)``: code :data:`OK` when the chunk decoded to
exactly the output's length, otherwise one of the other codes below with the block index
and the offending number, which :mod:`.codecs` turns into a one-line :class:`DecodeError`.

References
----------
LZ4 block format: ``lz4/doc/lz4_Block_format.md`` (sequences of a token, literals, a 2-byte
little-endian offset and a match; the last sequence has literals only).  Chunk layouts:
bitshuffle ``src/bshuf_h5filter.c`` (filter 32008) and HDF Group ``LZ4_HDF5_format.md``
(filter 32004).
"""
from __future__ import annotations

import numba
import numpy as np

from .bitshuffle import unshuffle_block

OK = 0
NO_LENGTH = 1        #: fewer than 4 bytes left where a block's length belongs (value: bytes left)
TOO_LONG = 2         #: a block's length exceeds the bytes left (value: the length)
IMPOSSIBLE = 3       #: a block's length no LZ4 block of that size can have (value: the length)
CORRUPT = 4          #: the LZ4 data of a block is corrupt or decodes to the wrong length (value: the length)
TRAILING = 5         #: the bytes after the last block are not the stored tail (bslz4) or nothing (value: bytes left)

#: An LZ4 sequence of 1 + e bytes of match length and a 2-byte offset writes at most
#: 19 + 255 e bytes, so a block of b bytes needs at least ceil(b / 255) bytes of input.
MAX_RATIO = 255


@numba.njit(nogil=True, cache=True)
def min_compressed(nbytes: int) -> int:
    """Fewest bytes an LZ4 block decoding to ``nbytes`` bytes can have (:data:`MAX_RATIO`)."""
    return max(1, (nbytes + MAX_RATIO - 1) // MAX_RATIO)


@numba.njit(nogil=True, cache=True)
def _length(src: np.ndarray, pos: int) -> int:
    return (np.int64(src[pos]) << 24) | (np.int64(src[pos + 1]) << 16) | (np.int64(src[pos + 2]) << 8) \
        | np.int64(src[pos + 3])


@numba.njit(nogil=True, cache=True, inline="always")
def _extend(src: np.ndarray, ip: int, end: int, count: int) -> tuple[int, int]:
    """Add LZ4's extra length bytes (255 means another follows) to ``count``: (count, ip), count -1 if cut short."""
    while True:
        if ip >= end:
            return -1, ip
        more = src[ip]
        ip += 1
        count += more
        if more != 255:
            return count, ip


@numba.njit(nogil=True, cache=True)
def lz4_block(src: np.ndarray, start: int, end: int, dst: np.ndarray) -> int:
    """Decode the LZ4 block ``src[start:end]`` into ``dst``; the bytes written, or -1 if corrupt.

    Bounds-checked like LZ4's ``LZ4_decompress_safe``: no read past ``end``, no write past
    ``dst``, no match before the start of ``dst``; -1 also when the block does not end on a
    literals-only sequence.
    """
    ip = start
    op = 0
    capacity = dst.size
    while ip < end:
        token = src[ip]
        ip += 1
        run = np.int64(token >> 4)
        if run == 15:
            run, ip = _extend(src, ip, end, run)
            if run < 0:
                return -1
        if run > end - ip or run > capacity - op:
            return -1
        if run:
            literals = src[ip:ip + run]
            to = dst[op:op + run]
            for k in range(run):
                to[k] = literals[k]
            ip += run
            op += run
        if ip == end:
            return op
        if end - ip < 2:
            return -1
        offset = np.int64(src[ip]) | (np.int64(src[ip + 1]) << 8)
        ip += 2
        if offset == 0 or offset > op:
            return -1
        match = np.int64(token & 15)
        if match == 15:
            match, ip = _extend(src, ip, end, match)
            if match < 0:
                return -1
        match += 4
        if match > capacity - op:
            return -1
        if offset == 1:
            value = dst[op - 1]
            to = dst[op:op + match]
            for k in range(match):
                to[k] = value
        else:  # copy in pieces that never overlap: each piece is as long as the pattern written so far
            done = 0
            while done < match:
                piece = min(match - done, offset + done)
                frm = dst[op - offset:op - offset + piece]
                to = dst[op + done:op + done + piece]
                for k in range(piece):
                    to[k] = frm[k]
                done += piece
        op += match
    return -1


@numba.njit(nogil=True, cache=True)
def _block_length(src: np.ndarray, pos: int, nbytes: int) -> tuple[int, int]:
    """The checked length of the block of ``nbytes`` bytes whose 4-byte length is at ``pos``: (code, length).

    At least what LZ4 needs for ``nbytes`` (:func:`min_compressed`), at most ``LZ4_COMPRESSBOUND``: a block
    LZ4 expands is longer than its data (a bare Stream v1 ``lz4<`` block reframed for HDF5 can be).
    """
    if src.size - pos < 4:
        return NO_LENGTH, src.size - pos
    length = _length(src, pos)
    if length > src.size - pos - 4:
        return TOO_LONG, length
    if length < min_compressed(nbytes) or length > nbytes + nbytes // MAX_RATIO + 16:  # LZ4_COMPRESSBOUND
        return IMPOSSIBLE, length
    return OK, length


# Holds the GIL (no nogil): it takes about a microsecond on the event loop's thread, where
# releasing the lock would let a worker take it and leave the loop waiting for it back.
@numba.njit(cache=True)
def walk(src: np.ndarray, blocked: int, block: int, tail: int) -> tuple[int, int, int]:
    """Check a chunk's framing without decompressing: the block-length chain and what follows it.

    ``blocked`` bytes go in blocks of ``block`` bytes (the last one shorter), each a checked
    4-byte length (:func:`_block_length`) and that many bytes; then exactly ``tail`` bytes
    (bitshuffle's uncompressed last elements; 0 for filter 32004).  Returns (code, block, value)
    as the decoders do; a corrupt LZ4 stream inside a block goes unnoticed (:data:`CORRUPT` is
    the decoders' to find).
    """
    pos = 12
    start = 0
    k = 0
    while start < blocked:
        size = min(block, blocked - start)
        code, length = _block_length(src, pos, size)
        if code != OK:
            return code, k, length
        pos += 4 + length
        start += size
        k += 1
    if src.size - pos != tail:
        return TRAILING, k, src.size - pos
    return OK, k, 0


@numba.njit(nogil=True, cache=True)
def decode_bslz4(src: np.ndarray, dst: np.ndarray, block: int, itemsize: int,
                 little: bool) -> tuple[int, int, int]:
    """Decode a bitshuffle-LZ4 chunk (filter 32008) into ``dst`` (uint8, n x itemsize bytes).

    ``src`` is the whole chunk, header included (checked by the caller: its total is
    ``dst.size`` and ``block`` > 0 elements is a multiple of 8).  Returns (code, block, value).
    """
    n = dst.size // itemsize
    full = n - n % 8
    scratch = np.empty(min(block, full) * itemsize, np.uint8)
    words = scratch.view(np.uint64)
    out = dst[:full * itemsize].view(np.uint64)
    pos = 12
    start = 0
    k = 0
    while start < full:
        m = min(block, full - start)
        code, length = _block_length(src, pos, m * itemsize)
        if code != OK:
            return code, k, length
        pos += 4
        planes = scratch[:m * itemsize]
        if lz4_block(src, pos, pos + length, planes) != m * itemsize:
            return CORRUPT, k, length
        unshuffle_block(planes, words, dst, out, start, m, itemsize, little)
        pos += length
        start += m
        k += 1
    tail = (n - full) * itemsize
    if src.size - pos != tail:
        return TRAILING, k, src.size - pos
    for i in range(tail):
        dst[full * itemsize + i] = src[pos + i]
    return OK, k, 0


@numba.njit(nogil=True, cache=True)
def decode_lz4(src: np.ndarray, dst: np.ndarray, block: int) -> tuple[int, int, int]:
    """Decode an LZ4 chunk (filter 32004) into ``dst``: blocks of ``block`` bytes, the last shorter.

    A block whose length equals its size is stored as it is.  Returns (code, block, value).
    """
    pos = 12
    start = 0
    k = 0
    while start < dst.size:
        size = min(block, dst.size - start)
        code, length = _block_length(src, pos, size)
        if code != OK:
            return code, k, length
        pos += 4
        to = dst[start:start + size]
        if length == size:
            frm = src[pos:pos + size]
            for i in range(size):
                to[i] = frm[i]
        elif lz4_block(src, pos, pos + length, to) != size:
            return CORRUPT, k, length
        pos += length
        start += size
        k += 1
    if src.size != pos:
        return TRAILING, k, src.size - pos
    return OK, k, 0
