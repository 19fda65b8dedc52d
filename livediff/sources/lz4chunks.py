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
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

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


#: Slots of the state :func:`decode_bslz4_upto` resumes from (an int64 array of :data:`STATE_SLOTS`).
POS, DONE, BLOCKS, CODE, VALUE, FINISHED = 0, 1, 2, 3, 4, 5       # where the walk is, and how it ended
BLOCK, ITEMSIZE, LITTLE, C_LZ4, C_UNSHUFFLE = 6, 7, 8, 9, 10      # the chunk's layout; the C functions' addresses
SRC_BYTES, DST_BYTES, SCRATCH_BYTES = 11, 12, 13                  # the buffers' lengths (for the C-callable entry)
STATE_SLOTS = 14


def bslz4_state(src_bytes: int, dst_bytes: int, block: int, itemsize: int, little: bool,
                c_lz4: int = 0, c_unshuffle: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fresh state for :func:`decode_bslz4_upto` and the scratch buffer it needs: ``(state, scratch)``.

    ``block`` is the chunk's block size in elements (a positive multiple of 8, checked by the
    caller), ``c_lz4`` and ``c_unshuffle`` the addresses of ``LZ4_decompress_safe`` and kcb's
    ``bitshuf_decode_block`` (0: livediff's numba kernels decode the blocks).
    """
    full = dst_bytes // itemsize // 8 * 8
    scratch = np.empty(2 * min(block, full) * itemsize, np.uint8)  # a block's bit planes, and C's own scratch
    state = np.zeros(STATE_SLOTS, np.int64)
    state[POS] = 12
    state[BLOCK], state[ITEMSIZE], state[LITTLE] = block, itemsize, little
    state[C_LZ4], state[C_UNSHUFFLE] = c_lz4, c_unshuffle
    state[SRC_BYTES], state[DST_BYTES], state[SCRATCH_BYTES] = src_bytes, dst_bytes, scratch.size
    return state, scratch


@intrinsic
def _lz4_at(typingctx, fn, src, dst, length, capacity):  # noqa: ANN001, ANN202, ARG001 - numba's intrinsic protocol
    """``LZ4_decompress_safe(src, dst, length, capacity)`` at address ``fn`` (all passed as integers)."""
    sig = types.int64(types.int64, types.uintp, types.uintp, types.int64, types.int64)

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202, ARG001
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        function = builder.inttoptr(args[0], ir.FunctionType(i32, [i8p, i8p, i32, i32]).as_pointer())
        result = builder.call(function, [builder.inttoptr(args[1], i8p), builder.inttoptr(args[2], i8p),
                                         builder.trunc(args[3], i32), builder.trunc(args[4], i32)])
        return builder.sext(result, ir.IntType(64))

    return sig, codegen


@intrinsic
def _unshuffle_at(typingctx, fn, dst, src, scratch, size, itemsize):  # noqa: ANN001, ANN202, ARG001
    """kcb's ``bitshuf_decode_block(dst, src, scratch, size, itemsize)`` at address ``fn``: 0 or -1."""
    sig = types.int64(types.int64, types.uintp, types.uintp, types.uintp, types.int64, types.int64)

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202, ARG001
        i8p, i32, i64 = ir.IntType(8).as_pointer(), ir.IntType(32), ir.IntType(64)
        function = builder.inttoptr(args[0], ir.FunctionType(i32, [i8p, i8p, i8p, i64, i64]).as_pointer())
        result = builder.call(function, [builder.inttoptr(args[1], i8p), builder.inttoptr(args[2], i8p),
                                         builder.inttoptr(args[3], i8p), args[4], args[5]])
        return builder.sext(result, i64)

    return sig, codegen


@numba.njit(nogil=True, cache=True)
def decode_bslz4_upto(state: np.ndarray, src: np.ndarray, dst: np.ndarray, scratch: np.ndarray, upto: int) -> int:
    """Decode a bitshuffle-LZ4 chunk (filter 32008) into ``dst`` until at least its first ``upto`` bytes hold pixels.

    Resumable: ``state`` (:func:`bslz4_state`) says where the last call stopped, so a chain
    can decode a frame block by block just before it reads each row, while the rows are
    in cache.  ``src`` is the whole chunk, header included (checked by the caller: its total
    is ``dst.size`` and the block size a multiple of 8 elements); ``dst`` is uint8, n x
    itemsize bytes.  Each block's length is checked (:func:`_block_length`) before it is
    decompressed, by LZ4's own ``LZ4_decompress_safe`` and kcb's ``bitshuf_decode_block``
    when ``state`` holds their addresses, else by :func:`lz4_block` and
    :func:`~.bitshuffle.unshuffle_block`.  Once the blocks are decoded and ``upto`` reaches past
    them, the walk checks and copies the uncompressed last ``n % 8`` elements.

    Returns the state's code: :data:`OK`, or the first failure, which stops the walk for good
    (``state[BLOCKS]`` and ``state[VALUE]`` say where and what, as the walkers' triples do).
    """
    if state[CODE] != OK or state[FINISHED]:
        return state[CODE]
    itemsize = state[ITEMSIZE]
    block = state[BLOCK]
    n = dst.size // itemsize
    full = n - n % 8
    pos, done, k = state[POS], state[DONE], state[BLOCKS]
    c_lz4, c_unshuffle = state[C_LZ4], state[C_UNSHUFFLE]
    block_bytes = min(block, full) * itemsize
    words = scratch[:block_bytes].view(np.uint64)
    out = dst[:full * itemsize].view(np.uint64)
    code, value = OK, 0
    while done < full and done * itemsize < upto:
        m = min(block, full - done)
        size = m * itemsize
        code, value = _block_length(src, pos, size)
        if code != OK:
            break
        pos += 4
        if c_lz4 != 0:
            if _lz4_at(c_lz4, src[pos:].ctypes.data, scratch.ctypes.data, value, size) != size or _unshuffle_at(
                    c_unshuffle, dst[done * itemsize:].ctypes.data, scratch.ctypes.data,
                    scratch[block_bytes:].ctypes.data, m, itemsize) != 0:
                code = CORRUPT
                break
        else:
            if lz4_block(src, pos, pos + value, scratch[:size]) != size:
                code = CORRUPT
                break
            unshuffle_block(scratch[:size], words, dst, out, done, m, itemsize, state[LITTLE] != 0)
        pos += value
        done += m
        k += 1
    if code == OK and done == full and (upto > full * itemsize or full == n):  # the stored tail, and nothing after
        tail = (n - full) * itemsize
        if src.size - pos != tail:
            code, value = TRAILING, src.size - pos
        else:
            for i in range(tail):
                dst[full * itemsize + i] = src[pos + i]
            done, value = n, 0
            state[FINISHED] = 1
    state[POS], state[DONE], state[BLOCKS], state[CODE] = pos, done, k, code
    state[VALUE] = value if code != OK else 0
    return code


@numba.cfunc(types.int64(types.CPointer(types.int64), types.CPointer(types.uint8), types.CPointer(types.uint8),
                         types.CPointer(types.uint8), types.int64), nogil=True, cache=True)
def bslz4_rows(state, src, dst, scratch, upto):  # noqa: ANN001, ANN201 - a C signature
    """:func:`decode_bslz4_upto` as a C-callable function, which numba code elsewhere can be handed
    as a first-class function (and still be cached): the buffers' lengths are in ``state``."""
    s = numba.carray(state, STATE_SLOTS)
    return decode_bslz4_upto(s, numba.carray(src, s[SRC_BYTES]), numba.carray(dst, s[DST_BYTES]),
                             numba.carray(scratch, s[SCRATCH_BYTES]), upto)


def decode_bslz4(src: np.ndarray, dst: np.ndarray, block: int, itemsize: int, little: bool) -> tuple[int, int, int]:
    """Decode a whole bitshuffle-LZ4 chunk (filter 32008) into ``dst`` (uint8, n x itemsize bytes)
    with livediff's kernels (:func:`decode_bslz4_upto`).  Returns (code, block, value)."""
    state, scratch = bslz4_state(src.size, dst.size, block, itemsize, little)
    code = decode_bslz4_upto(state, src, dst, scratch, dst.size)
    return code, int(state[BLOCKS]), int(state[VALUE])


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
