"""Pixel payload codecs: bitshuffle-LZ4 and LZ4 in the HDF5 filter framing, and bare LZ4.

Every decoder here takes bytes from the network, so none may crash the process on
corrupt or truncated input, nor allocate what the header claims before the claim is
checked, nor let any exception but :class:`DecodeError` out.  The 12-byte header is parsed
here first: its total must equal the expected ``rows x cols x itemsize``, its block size must
suit the element size, and the chunk must be long enough to hold the blocks it announces
(an LZ4 block of b bytes takes at least ceil(b / 255) bytes), all *before* anything is
allocated or decompressed; the decoded length is checked again *after*.  So a 60-byte
payload claiming 100000 x 100000 pixels is refused without allocating, and no output is
ever larger than ``rows x cols x itemsize``.

Sources do not decompress (decoding is deferred to the worker that processes the frame):
:func:`check` does the header checks above and walks the chain of block lengths (a numba
walker in :mod:`.lz4chunks`, tens of microseconds for a 4M frame), and :func:`accept` turns a
payload into what a :class:`~livediff.model.Frame` carries; workers decode with
:func:`decode_payload`.  A payload that passes :func:`check` can still fail :func:`decode` (a
corrupt LZ4 stream inside a block): that is the worker's failure to report, for that frame.

Two backends decompress header-checked HDF5-filter chunks (:func:`backend` says which one
is in use; the choice is made once, at import):

``"dectris-compression"``
    DECTRIS' own codec package (optional extra ``livediff[fast-codec]``; it builds from
    source, so it needs a C compiler), used when it is installed: about 3x faster.  It
    checks every block length against the bytes left and decompresses with
    ``LZ4_decompress_safe`` (bounds-checked; it fails cleanly on corrupt input).
``"numba"``
    livediff's own decoder (:mod:`.lz4chunks`: a bounds-checked LZ4 block decoder and the
    inverse bit transposition as numba kernels), which needs nothing beyond the core
    dependencies, all of which install from binary wheels.  It walks the framing itself:
    each block's length is checked against the bytes left and the block's size before the
    block is decompressed.  numba is loaded on the first decode (:func:`prepare` loads it
    before).

Bare LZ4 blocks are decoded by the ``lz4`` package (``LZ4_decompress_safe``), after checking
that the block is long enough for the size asked for.  ``bitshuffle.decompress_lz4`` and the
HDF5 filter plugins are never given received bytes: they crash (segfault) on corrupt input.
``tests/test_codecs.py`` fuzzes every decoder, with both backends, with truncated and
corrupted blobs.

Formats (the names are :attr:`livediff.model.Frame.encoding` values):

``"bslz4"``
    The bitshuffle HDF5 filter (id 32008) chunk layout, which DECTRIS Stream v1
    (``bs8-lz4<``, ``bs16-lz4<``, ``bs32-lz4<``) and Stream v2 (tag 56500 ``"bslz4"``)
    send: 8-byte big-endian uncompressed size, 4-byte big-endian block size in bytes,
    then per block a 4-byte big-endian compressed length and an LZ4 block of the
    bit-transposed elements.  A last partial block holds the largest multiple of 8
    elements left; the final ``n % 8`` elements follow uncompressed [1]_.
``"lz4"``
    The HDF5 LZ4 filter (id 32004) chunk layout, which Stream v2 (tag 56500 ``"lz4"``)
    sends: the same 12-byte header, then per block a 4-byte big-endian length and
    either an LZ4 block or, when that length equals the block size, the bytes stored
    as they are [2]_.
bare LZ4 block
    Stream v1 ``lz4<``: one LZ4 block, nothing else (:func:`decode_lz4_block`).

The encoders (simulator, replay, tests) compress with the ``lz4`` package; the bit
transposition is a small numba kernel (:mod:`.bitshuffle`, loaded on the first encode, so
importing a receiver does not load numba), byte-identical to bitshuffle's (tested).

References
----------
.. [1] K. Masui et al., "A compression scheme for radio data in high performance
   computing", Astronomy and Computing 12, 181 (2015); bitshuffle ``src/bshuf_h5filter.c``.
.. [2] HDF Group, ``hdf5_plugins/LZ4/LZ4_HDF5_format.md``.
"""
from __future__ import annotations

import ctypes
import logging
import struct
import sys
import threading
import time
from typing import Any

import lz4.block
import numpy as np

from ..errors import DecodeError
from ..model import Encoded

try:
    import dectris.compression as _dectris
except ImportError:  # the optional extra livediff[fast-codec] is not installed
    _dectris = None

log = logging.getLogger(__name__)

#: Encodings a frame payload may have (``Frame.encoding``).
ENCODINGS = ("raw", "bslz4", "lz4")
#: Backends that decompress HDF5-filter chunks, fastest first (module docstring).
BACKENDS = ("dectris-compression", "numba")

_HEADER = struct.Struct(">QI")
_LENGTH = struct.Struct(">I")
_BLOCKED_MULT = 8           # bitshuffle transposes groups of 8 elements
_TARGET_BLOCK_BYTES = 8192  # bitshuffle's default block: 8 KiB of elements
_MIN_BLOCK = 128            # ... but at least 128 elements
_LZ4_H5_BLOCK = 1 << 30     # the HDF5 LZ4 filter's default block size (1 GiB)
_LZ4_MAX_BLOCK = 0x7E000000  # LZ4_MAX_INPUT_SIZE: the most one LZ4 block can hold
_LZ4_MAX_RATIO = 255         # an LZ4 block of b bytes takes at least ceil(b / 255) bytes
_U32 = 0xFFFFFFFF
_logged: set[str] = set()
_found: dict[str, tuple[int, int]] = {}  # what _block_functions looked up


def backend() -> str:
    """The backend that decompresses HDF5-filter chunks here: one of :data:`BACKENDS`.

    ``"dectris-compression"`` when that package (extra ``livediff[fast-codec]``) imports,
    else ``"numba"``.
    """
    return "numba" if _dectris is None else "dectris-compression"


def describe() -> str:
    """One line for logs and benchmark output: which backend decodes bslz4/lz4 chunks, and why."""
    if _dectris is None:
        return ("bslz4/lz4 chunks decoded by livediff's numba decoder "
                "(pip install 'livediff[fast-codec]' adds dectris-compression, about 3x faster)")
    return "bslz4/lz4 chunks decoded by dectris-compression (extra fast-codec)"


def prepare() -> float:
    """Load (or, the first time on a machine, compile) the chunk decoder and framing checker now; returns seconds.

    The first check (and, with the numba backend, the first decode) would otherwise load numba and the kernels
    (about 1 s, or longer while numba compiles them the first time); a service calls this
    at start, before it reports ready.  Logs :func:`describe` once.
    """
    t0 = time.perf_counter()
    _log_backend()
    # 64 zeros: their bit transposition is zeros again, so no encoder is needed
    lz4_zeros = lz4.block.compress(bytes(256), store_size=False)
    chunk = _HEADER.pack(256, 256) + _LENGTH.pack(len(lz4_zeros)) + lz4_zeros
    check(chunk, "bslz4", (1, 64), np.uint32)  # the framing walker is numba whichever backend decodes
    if _dectris is None:
        decode_bslz4(chunk, (1, 64), np.uint32)
        decode_lz4(chunk, (1, 64), np.uint32)
    return time.perf_counter() - t0


def decode(blob: Any, encoding: str, shape: tuple[int, int], dtype: Any, *, backend: str | None = None) -> np.ndarray:
    """Decode a frame payload into a ``(rows, cols)`` array.

    Parameters
    ----------
    blob : bytes-like
        The payload as received.
    encoding : {"raw", "bslz4", "lz4"}
        ``"raw"``: little-endian pixels, C order; the others as in the module docstring.
    shape : (rows, cols)
        Shape the payload must decode to.
    dtype : numpy dtype
        Pixel type; the payload is little-endian, the result has native byte order.
    backend : {"dectris-compression", "numba"}, optional
        Which backend decompresses ``"bslz4"`` and ``"lz4"``; default :func:`backend`.

    Returns
    -------
    numpy.ndarray
        ``shape`` array of ``dtype`` in native byte order; it may be read-only (a view of
        ``blob`` for ``"raw"``, of the decoded bytes otherwise).

    Raises
    ------
    DecodeError
        Unknown encoding, or a payload that does not decode to exactly ``shape`` x
        ``dtype`` (each message says which length disagreed and what was expected).
    """
    dtype = np.dtype(dtype)
    if encoding == "raw":
        view = _bytes_view(blob)
        if len(view) != _nbytes(shape, dtype):
            raise DecodeError(f"buffer holds {len(view)} bytes, expected {_nbytes(shape, dtype)} "
                              f"for {dtype.name} {tuple(shape)}")
        return _as_array(view, shape, dtype)
    if encoding == "bslz4":
        return decode_bslz4(blob, shape, dtype, backend=backend)
    if encoding == "lz4":
        return decode_lz4(blob, shape, dtype, backend=backend)
    raise DecodeError(f"unknown encoding {encoding!r} (expected one of {', '.join(ENCODINGS)})")


def check(blob: Any, encoding: str, shape: tuple[int, int], dtype: Any) -> None:
    """Check a payload's framing without decompressing it: cheap enough for the receiver.

    ``"raw"``: the length.  ``"bslz4"`` and ``"lz4"``: the header (its total against
    ``shape`` x ``dtype``, the block size), then the chain of block lengths, each within the
    bytes left and possible for an LZ4 block of its size, and the bytes after the last
    block.  A payload that passes may still hold a corrupt LZ4 stream, which only
    :func:`decode` finds.

    Raises
    ------
    DecodeError
        As :func:`decode` would for the framing, and for an unknown encoding.
    """
    dtype = np.dtype(dtype)
    if encoding == "raw":
        decode(blob, "raw", shape, dtype)
        return
    if encoding not in ENCODINGS:
        raise DecodeError(f"unknown encoding {encoding!r} (expected one of {', '.join(ENCODINGS)})")
    view = _bytes_view(blob)
    block_bytes, tail = _framing(view, encoding, shape, dtype)
    from . import lz4chunks  # numba: loaded on the first check, never by importing a receiver

    code, block, value = lz4chunks.walk(np.frombuffer(view, np.uint8), _nbytes(shape, dtype) - tail,
                                        block_bytes, tail)
    if code != lz4chunks.OK:
        raise _corrupt(encoding, code, block, value)


def accept(blob: Any, encoding: str, shape: tuple[int, int], dtype: Any) -> tuple[np.ndarray | None, Encoded | None]:
    """What a source puts in a :class:`~livediff.model.Frame`: ``(data, payload)``.

    Uncompressed pixels become ``data`` at once (a view of ``blob``, no copy); a compressed
    payload is checked (:func:`check`) and passed on as an :class:`~livediff.model.Encoded`
    ``payload``, to be decoded by the worker that processes the frame (:func:`decode_payload`).

    Raises
    ------
    DecodeError
        The payload's length or framing is wrong (:func:`check`).
    """
    dtype = np.dtype(dtype)
    if encoding == "raw":
        return decode(blob, "raw", shape, dtype), None
    check(blob, encoding, shape, dtype)
    return None, Encoded(encoding, blob, tuple(shape), dtype.name)


def decode_payload(payload: Encoded) -> np.ndarray:
    """Decode a frame's :class:`~livediff.model.Encoded` payload (:func:`decode`); the executors' codec.

    Raises
    ------
    DecodeError
        The payload does not decode (e.g. a corrupt LZ4 stream in well-framed blocks).
    """
    return decode(payload.buffer, payload.encoding, payload.shape, payload.dtype)


class BitshuffleRows:
    """Decodes bitshuffle-LZ4 frames row by row as a chain's one pass reads them
    (:class:`~livediff.model.RowDecoder`; the fused pass of ``livediff.operators.fused``).

    A frame of a 4M EIGER is 17 MB: decoded whole, it goes to memory and the pass reads it
    back.  Decoded a few blocks at a time just before the pass reads each row, it is written
    and read while in cache.  The blocks are decoded by the backend's block functions: with
    dectris-compression, the ``LZ4_decompress_safe`` and kcb ``bitshuf_decode_block`` its
    module exports (the functions its own decoder is made of), found by name when the first
    frame comes; without it (or those names), livediff's numba kernels (:mod:`.lz4chunks`).
    Either way each block's length is checked before the block is decoded, as :func:`check`
    and :func:`decode` do.

    The frames are decoded into buffers it reuses (:class:`Buffers`): a worker does not
    allocate 17 MB per frame.

    Parameters
    ----------
    backend : {"dectris-compression", "numba"}, optional
        Whose block functions decode; default :func:`backend`.
    buffers : how many frame buffers to keep for reuse: the frames in flight in the executor
        and a few more (a frame someone still holds keeps its buffer out of use).
    """

    def __init__(self, backend: str | None = None, *, buffers: int = 8) -> None:
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if backend == "dectris-compression" and _dectris is None:
            raise ValueError("backend 'dectris-compression' is not installed (pip install 'livediff[fast-codec]')")
        self.backend = backend
        self.buffers = Buffers(buffers)

    def __call__(self, payload: Encoded) -> RowDecoding | None:
        """A :class:`RowDecoding` of a ``"bslz4"`` payload (its framing checked by :func:`check`)
        into a free buffer; None for other encodings, or on a big-endian host."""
        if payload.encoding != "bslz4" or sys.byteorder != "little":
            return None
        pixels = self.buffers.take(payload.shape, np.dtype(payload.dtype))
        return RowDecoding(payload, backend() if self.backend is None else self.backend, pixels=pixels)

    def sample(self, pixels: np.ndarray) -> Encoded:
        """``pixels`` as a bitshuffle-LZ4 payload."""
        return Encoded("bslz4", encode_bslz4(pixels), tuple(pixels.shape), pixels.dtype.name)


class RowDecoding:
    """One bitshuffle-LZ4 payload being decoded row by row (:class:`~livediff.model.Decoding`),
    with ``backend``'s block functions (:class:`BitshuffleRows`).

    Raises
    ------
    DecodeError
        From :meth:`finish`: the payload does not decode.
    """

    def __init__(self, payload: Encoded, backend: str, functions: tuple[int, int] | None = None,
                 pixels: np.ndarray | None = None) -> None:
        from . import lz4chunks  # numba: loaded with the first compressed frame, never by importing a receiver

        dtype = np.dtype(payload.dtype)
        view = _bytes_view(payload.buffer)
        block_bytes, _ = _framing(view, "bslz4", payload.shape, dtype)
        self.pixels = np.empty(payload.shape, dtype) if pixels is None else pixels
        src = np.frombuffer(view, np.uint8)
        dst = self.pixels.reshape(-1).view(np.uint8)
        if functions is None:
            functions = _block_functions() if backend == "dectris-compression" else (0, 0)
        if block_bytes >= 2**30:  # LZ4_decompress_safe takes C ints
            functions = (0, 0)
        state, scratch = lz4chunks.bslz4_state(src.size, dst.size, block_bytes // dtype.itemsize, dtype.itemsize,
                                               True, *functions)
        self.advance = lz4chunks.bslz4_rows
        self.args = (state, src, dst, scratch)

    def finish(self) -> np.ndarray:
        """Decode the rest (nothing, when the pass decoded every row) and check the payload: the pixels."""
        from . import lz4chunks

        state, src, dst, scratch = self.args
        code = lz4chunks.decode_bslz4_upto(state, src, dst, scratch, dst.size)
        if code:
            raise _corrupt("bslz4", code, int(state[lz4chunks.BLOCKS]), int(state[lz4chunks.VALUE]))
        return self.pixels


class Buffers:
    """Frame buffers of one shape and pixel type, each handed out again only once nothing else
    refers to it.

    CPython counts the references to every object: a buffer only this pool's list refers to
    (and any view of it, a frame's ``data``, a sink's copy of the reference, an array a numba
    kernel is running on, all count) is free.  So a consumer that keeps frames, however long,
    keeps their buffers; the pool then hands out new ones, up to ``size``, and past that
    buffers it does not keep.  Thread-safe: workers take buffers at the same time.

    Parameters
    ----------
    size : the most buffers kept for reuse.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._kept: list[np.ndarray] = []
        self._lock = threading.Lock()

    def take(self, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
        """A ``shape`` array of ``dtype`` that nothing else refers to (its contents are left over)."""
        with self._lock:
            kept = self._kept
            if kept and (kept[0].shape != tuple(shape) or kept[0].dtype != dtype):
                kept.clear()  # a new series: the old series' buffers go when their frames do
            for i in range(len(kept)):
                if sys.getrefcount(kept[i]) == 2:  # the list's reference and getrefcount's argument: free
                    return kept[i]
            buffer = np.empty(shape, dtype)
            if len(kept) < self.size:
                kept.append(buffer)
            return buffer


def _block_functions() -> tuple[int, int]:
    """Addresses of ``LZ4_decompress_safe`` and ``bitshuf_decode_block`` in dectris-compression's
    module, or (0, 0) when it lacks them or they do not decode a test chunk as livediff's kernels
    do (they are not its documented interface)."""
    if "block_functions" not in _found:
        functions = (0, 0)
        try:
            lib = ctypes.CDLL(_dectris.__file__)
            found = (ctypes.cast(lib.LZ4_decompress_safe, ctypes.c_void_p).value,
                     ctypes.cast(lib.bitshuf_decode_block, ctypes.c_void_p).value)
        except (OSError, AttributeError) as exc:
            log.info("codecs: dectris-compression's block functions not found (%s): rows decode with numba", exc)
        else:
            test = np.random.default_rng(0).poisson(3.0, (64, 300)).astype(np.uint32)
            decoding = RowDecoding(Encoded("bslz4", encode_bslz4(test, block_size=512), test.shape, "uint32"),
                                   "dectris-compression", found)
            try:
                same = np.array_equal(decoding.finish(), test)
            except DecodeError:
                same = False
            if same:
                functions = found
            else:
                log.warning("codecs: dectris-compression's block functions do not decode as expected: rows "
                            "decode with numba")
        _found["block_functions"] = functions
    return _found["block_functions"]


def _corrupt(algorithm: str, code: int, block: int, value: int) -> DecodeError:
    """The error for a chunk a walker found corrupt (its code, the block and the offending number)."""
    return DecodeError(f"{algorithm}: corrupt or truncated data ({_MESSAGES[code].format(k=block, v=value)})")


def decode_bslz4(blob: Any, shape: tuple[int, int], dtype: Any, *, backend: str | None = None) -> np.ndarray:
    """Decode a bitshuffle-LZ4 chunk (HDF5 filter 32008 layout) into a ``shape`` array.

    Parameters
    ----------
    blob : bytes-like
        12-byte header, compressed blocks, uncompressed tail (module docstring).
    shape : (rows, cols)
    dtype : numpy dtype
        Element type; its size is the bitshuffle element size.
    backend : {"dectris-compression", "numba"}, optional
        Default :func:`backend`; naming one that is not installed is a ValueError.

    Returns
    -------
    numpy.ndarray
        ``shape`` array of ``dtype`` (native byte order), read-only.

    Raises
    ------
    DecodeError
        Header total != rows x cols x itemsize, block size not a positive multiple of
        8 elements, a chunk too short for the blocks it announces, a truncated or corrupt
        block, a wrong decoded length, or any failure of the backend (out of memory
        included).

    Notes
    -----
    With n elements and a block of b elements there are ``n // b`` full blocks, one
    block of ``(n % b) - (n % b) % 8`` elements if that is not zero, then ``n % 8``
    elements stored as they are.  Inside a block of m elements of s bytes, bit k
    (k < 8 s, little-endian) of element i is bit ``i % 8`` of byte ``k m / 8 + i // 8``.
    """
    dtype = np.dtype(dtype)
    view = _bytes_view(blob)
    block_bytes, _ = _framing(view, "bslz4", shape, dtype)
    return _decompress(view, "bslz4", shape, dtype, block_bytes, backend)


def decode_lz4(blob: Any, shape: tuple[int, int], dtype: Any, *, backend: str | None = None) -> np.ndarray:
    """Decode an LZ4 chunk in the HDF5 LZ4 filter (32004) layout into a ``shape`` array.

    Parameters
    ----------
    blob : bytes-like
    shape : (rows, cols)
    dtype : numpy dtype
    backend : {"dectris-compression", "numba"}, optional
        Default :func:`backend`.

    Returns
    -------
    numpy.ndarray
        ``shape`` array of ``dtype`` (native byte order), read-only.

    Raises
    ------
    DecodeError
        Header total != rows x cols x itemsize, zero block size, a chunk too short for
        the blocks it announces, a truncated or corrupt block, a wrong decoded length, or
        any failure of the backend.
    """
    dtype = np.dtype(dtype)
    view = _bytes_view(blob)
    block_bytes, _ = _framing(view, "lz4", shape, dtype)
    return _decompress(view, "lz4", shape, dtype, block_bytes, backend)


def decode_lz4_block(blob: Any, shape: tuple[int, int], dtype: Any) -> np.ndarray:
    """Decode one bare LZ4 block (DECTRIS Stream v1 ``lz4<``) into a ``shape`` array.

    Raises
    ------
    DecodeError
        Corrupt or truncated block, one not decompressing to exactly rows x cols x
        itemsize bytes, a size no LZ4 block can hold (over 2,113,929,216 bytes), or one
        the block is too short for (at most 255 decoded bytes per byte), both found before
        anything is allocated; out of memory.
    """
    dtype = np.dtype(dtype)
    expected = _nbytes(shape, dtype)
    view = _bytes_view(blob)
    if expected > _LZ4_MAX_BLOCK:
        raise DecodeError(f"lz4 block: {dtype.name} {tuple(shape)} is {expected} bytes, more than one LZ4 "
                          f"block can hold ({_LZ4_MAX_BLOCK})")
    if expected > _LZ4_MAX_RATIO * len(view):
        raise DecodeError(f"lz4 block: {len(view)} bytes cannot decode to {expected} "
                          f"(an LZ4 block gives at most {_LZ4_MAX_RATIO} bytes per byte)")
    data = _lz4_block(view, expected, "lz4 block")
    if len(data) != expected:
        raise DecodeError(f"lz4 block: decoded {len(data)} bytes, expected {expected}")
    return _as_array(data, shape, dtype)


def lz4_block_to_h5(blob: Any, nbytes: int) -> bytes | None:
    """Re-frame a bare LZ4 block of ``nbytes`` decoded bytes as one HDF5 LZ4 filter chunk.

    The result is a valid ``"lz4"`` payload (one block, no recompression), or None where
    the framing cannot express it: a compressed block exactly ``nbytes`` long (the filter
    would read it as stored), or a block or size over the framing's 4-byte fields (4 GiB).
    Never raises on what it is given: the caller decodes the block separately.
    """
    try:
        view = _bytes_view(blob)
    except DecodeError:
        return None
    if len(view) == nbytes or not 0 <= nbytes <= _U32 or len(view) > _U32:
        return None
    return _HEADER.pack(nbytes, nbytes) + _LENGTH.pack(len(view)) + bytes(view)


def encode(data: np.ndarray, encoding: str) -> bytes:
    """Encode ``data`` (any shape) as ``encoding``: the inverse of :func:`decode`.

    Raises
    ------
    ValueError
        Unknown encoding.
    """
    if encoding == "raw":
        return _little_endian(data).tobytes()
    if encoding == "bslz4":
        return encode_bslz4(data)
    if encoding == "lz4":
        return encode_lz4(data)
    raise ValueError(f"unknown encoding {encoding!r} (expected one of {', '.join(ENCODINGS)})")


def encode_bslz4(data: np.ndarray, *, block_size: int | None = None) -> bytes:
    """Bitshuffle-LZ4 chunk of ``data`` in the HDF5 filter 32008 layout.

    Parameters
    ----------
    data : numpy.ndarray
        Any shape; its elements are written little-endian, C order.
    block_size : int, optional
        Elements per block, a positive multiple of 8; default bitshuffle's own choice,
        8192 bytes of elements (at least 128), as DECTRIS detectors use.

    Returns
    -------
    bytes

    Raises
    ------
    ValueError
        ``block_size`` not a positive multiple of 8.
    """
    flat = _little_endian(data).reshape(-1).view(np.uint8)
    itemsize = data.dtype.itemsize
    if block_size is None:
        block_size = max(_TARGET_BLOCK_BYTES // itemsize // _BLOCKED_MULT * _BLOCKED_MULT, _MIN_BLOCK)
    if block_size <= 0 or block_size % _BLOCKED_MULT:
        raise ValueError(f"block_size must be a positive multiple of {_BLOCKED_MULT}, got {block_size}")
    n = data.size
    shuffled = np.empty_like(flat)
    from .bitshuffle import bitshuffle  # numba, compiled only when something is encoded

    bitshuffle(flat, shuffled, block_size, itemsize)
    parts = [_HEADER.pack(flat.size, block_size * itemsize)]
    end = (n - n % _BLOCKED_MULT) * itemsize
    for start in range(0, end, block_size * itemsize):
        block = lz4.block.compress(shuffled[start:min(start + block_size * itemsize, end)], store_size=False)
        parts += [_LENGTH.pack(len(block)), block]
    parts.append(flat[end:].tobytes())
    return b"".join(parts)


def encode_lz4(data: np.ndarray, *, block_size: int = _LZ4_H5_BLOCK) -> bytes:
    """LZ4 chunk of ``data`` in the HDF5 LZ4 filter 32004 layout (blocks of ``block_size`` bytes).

    A block that LZ4 cannot shrink is stored as it is, as the HDF5 filter does.

    Raises
    ------
    ValueError
        ``block_size`` not positive.
    """
    if block_size <= 0:
        raise ValueError(f"block_size must be > 0, got {block_size}")
    flat = _little_endian(data).reshape(-1).view(np.uint8)
    block_size = min(block_size, max(flat.size, 1))
    parts = [_HEADER.pack(flat.size, block_size)]
    for start in range(0, flat.size, block_size):
        raw = flat[start:start + block_size]
        block = lz4.block.compress(raw, store_size=False)
        if len(block) >= raw.size:
            block = raw.tobytes()
        parts += [_LENGTH.pack(len(block)), block]
    return b"".join(parts)


def encode_lz4_block(data: np.ndarray) -> bytes:
    """One bare LZ4 block of ``data`` (little-endian, C order): Stream v1 ``lz4<``."""
    return lz4.block.compress(_little_endian(data).reshape(-1).view(np.uint8), store_size=False)


# ---------------------------------------------------------------------- helpers
def _bytes_view(blob: Any) -> memoryview:
    try:
        view = memoryview(blob)
    except TypeError:
        raise DecodeError(f"payload must be bytes-like, got {type(blob).__name__}") from None
    if view.format == "B" and view.ndim == 1:
        return view
    try:
        return view.cast("B")
    except (TypeError, ValueError):  # e.g. a non-contiguous buffer
        raise DecodeError(f"payload must be a contiguous buffer, got {type(blob).__name__}") from None


def _nbytes(shape: tuple[int, int], dtype: np.dtype) -> int:
    return int(shape[0]) * int(shape[1]) * dtype.itemsize


def _check_header(view: memoryview, expected: int, what: str) -> int:
    """Validate the 12-byte HDF5-filter header; return the block size in bytes."""
    if len(view) < _HEADER.size:
        raise DecodeError(f"{what}: {len(view)} bytes, too short for the {_HEADER.size}-byte header")
    total, block_bytes = _HEADER.unpack_from(view, 0)
    if total != expected:
        raise DecodeError(f"{what}: header announces {total} bytes, expected {expected}")
    return block_bytes


def _framing(view: memoryview, algorithm: str, shape: tuple[int, int], dtype: np.dtype) -> tuple[int, int]:
    """Check an HDF5-filter chunk's header and size; return (block size in bytes, uncompressed tail bytes)."""
    expected = _nbytes(shape, dtype)
    block_bytes = _check_header(view, expected, algorithm)
    tail = 0
    if algorithm == "bslz4":
        unit = _BLOCKED_MULT * dtype.itemsize
        if block_bytes == 0 or block_bytes % unit:
            raise DecodeError(f"bslz4: block size {block_bytes} bytes is not a positive multiple of "
                              f"{_BLOCKED_MULT} elements of {dtype.itemsize} byte(s)")
        tail = expected // dtype.itemsize % _BLOCKED_MULT * dtype.itemsize
    elif block_bytes == 0:
        raise DecodeError("lz4: block size 0 in the header")
    _check_room(view, expected - tail, block_bytes, tail, algorithm)
    return block_bytes, tail


def _check_room(view: memoryview, blocked: int, block_bytes: int, tail: int, what: str) -> None:
    """Refuse a chunk too short for its blocks, before anything is allocated.

    ``blocked`` bytes go in blocks of ``block_bytes`` (the last one shorter), each a 4-byte
    length and at least ceil(size / 255) bytes of LZ4 data; ``tail`` bytes follow as they are.
    """
    full, last = divmod(blocked, block_bytes)
    need = _HEADER.size + full * (_LENGTH.size + _min_lz4(block_bytes)) + tail
    if last:
        need += _LENGTH.size + _min_lz4(last)
    if len(view) < need:
        raise DecodeError(f"{what}: corrupt or truncated data ({len(view)} bytes cannot hold the "
                          f"{full + bool(last)} block(s) the header announces: at least {need} needed)")


def _min_lz4(nbytes: int) -> int:
    return max(1, -(-nbytes // _LZ4_MAX_RATIO))


def _decompress(view: memoryview, algorithm: str, shape: tuple[int, int], dtype: np.dtype, block_bytes: int,
                name: str | None) -> np.ndarray:
    """Decompress a header-checked HDF5-filter chunk with a backend, checking the length.

    Any failure of the backend (out of memory included) becomes a DecodeError.
    """
    name = backend() if name is None else name
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    if name == "dectris-compression" and _dectris is None:
        raise ValueError("backend 'dectris-compression' is not installed (pip install 'livediff[fast-codec]')")
    _log_backend()
    expected = _nbytes(shape, dtype)
    try:
        if name == "numba":
            data = _numba_decompress(view, algorithm, expected, block_bytes, dtype.itemsize)
        else:
            data = _dectris.decompress(view, algorithm, elem_size=dtype.itemsize)
    except DecodeError:
        raise
    except RuntimeError:  # dectris-compression's only failure: "error decompressing stream"
        raise DecodeError(f"{algorithm}: corrupt or truncated data") from None
    except MemoryError:
        raise DecodeError(f"{algorithm}: out of memory for {expected} bytes") from None
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: no other exception may leave a codec
        raise DecodeError(f"{algorithm}: {name} failed: {type(exc).__name__}: {str(exc)[:200]}") from None
    if len(data) != expected:
        raise DecodeError(f"{algorithm}: decoded {len(data)} bytes, expected {expected}")
    return _as_array(data, shape, dtype)


_MESSAGES = {
    1: "{v} bytes left where the length of block {k} belongs",
    2: "block {k} claims {v} bytes, more than are left",
    3: "block {k} claims {v} bytes, impossible for an LZ4 block of that size",
    4: "block {k} ({v} bytes) is not valid LZ4 data of the block's size",
    5: "{v} bytes after the last of {k} block(s), not what the header's size leaves",
}


def _numba_decompress(view: memoryview, algorithm: str, expected: int, block_bytes: int,
                      itemsize: int) -> np.ndarray:
    """livediff's decoder (:mod:`.lz4chunks`) on a header-checked chunk: a uint8 array of ``expected`` bytes."""
    from . import lz4chunks  # numba: loaded on the first decode, never by importing a receiver

    src = np.frombuffer(view, np.uint8)
    out = np.empty(expected, np.uint8)
    if algorithm == "bslz4":
        code, block, value = lz4chunks.decode_bslz4(src, out, block_bytes // itemsize, itemsize,
                                                    sys.byteorder == "little")
    else:
        code, block, value = lz4chunks.decode_lz4(src, out, block_bytes)
    if code != lz4chunks.OK:
        raise _corrupt(algorithm, code, block, value)
    out.setflags(write=False)
    return out


def _log_backend() -> None:
    """Say once per process which backend decodes chunks."""
    if "backend" not in _logged:
        _logged.add("backend")
        log.info("codecs: %s", describe())


def _lz4_block(view: memoryview, size: int, what: str) -> bytes:
    try:
        return lz4.block.decompress(view, uncompressed_size=size)
    except lz4.block.LZ4BlockError as exc:
        raise DecodeError(f"{what}: corrupt LZ4 data ({exc})") from None
    except MemoryError:
        raise DecodeError(f"{what}: out of memory for {size} bytes") from None
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: no other exception may leave a codec
        raise DecodeError(f"{what}: lz4 failed: {type(exc).__name__}: {str(exc)[:200]}") from None


def _little_endian(data: np.ndarray) -> np.ndarray:
    data = np.ascontiguousarray(data)
    return data.astype(data.dtype.newbyteorder("<"), copy=False)


def _as_array(buf: Any, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
    wire = np.frombuffer(buf, dtype=dtype.newbyteorder("<")).reshape(shape)
    return wire.astype(dtype.newbyteorder("="), copy=False)
