"""Payload codecs: round trips, independent encoders and decoders, every length checked, fuzzed for crashes.

Every decoding test runs on each installed backend (livediff's numba decoder always; dectris-compression
with the ``fast-codec`` extra).  The independent references are the bitshuffle package (a wheel on Linux
x86-64 only, so optional) and hdf5plugin's filters through h5py (a core dependency).
"""
from __future__ import annotations

import io
import logging
import struct
import time
import tracemalloc
from pathlib import Path

import h5py
import hdf5plugin
import lz4.block
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from livediff.errors import DecodeError
from livediff.model import Encoded, Frame
from livediff.sources import codecs
from livediff.sources.bitshuffle import bitshuffle as ours_bitshuffle
from livediff.sources.bitshuffle import bitunshuffle as ours_bitunshuffle

DATA = Path(__file__).parent / "data"
DTYPES = ["uint8", "uint16", "uint32", "int32", "float32"]
#: The backends installed here; numba is always there.
BACKENDS = ["numba"] + (["dectris-compression"] if codecs.backend() == "dectris-compression" else [])


def _frame(shape, dtype, seed=0):
    """Detector-like content: mostly small counts, some zeros, a few large values and gap markers."""
    rng = np.random.default_rng(seed)
    image = rng.poisson(4.0, shape) * (rng.random(shape) < 0.7)
    image[rng.random(shape) < 0.01] = 60000
    image = image.astype(dtype)
    if dtype != "float32":
        image[:, shape[1] // 3] = np.iinfo(dtype).max
    image.setflags(write=False)
    return image


def _reference_bitshuffle(data: np.ndarray, block: int) -> bytes:
    """Bitshuffle by its definition, with numpy bit unpacking (bitshuffle's layout, Masui et al. 2015)."""
    size = data.dtype.itemsize
    elements = np.ascontiguousarray(data).reshape(-1).view(np.uint8).reshape(-1, size)
    out, start, n = [], 0, elements.shape[0]
    while n - start >= 8:
        m = min(block, n - start) // 8 * 8
        bits = np.unpackbits(elements[start:start + m], axis=1, bitorder="little")  # (m, 8 size): bit k of element i
        out.append(np.packbits(bits.T, axis=1, bitorder="little").tobytes())        # plane k: bit i%8 of byte i//8
        start += m
    out.append(elements[start:].tobytes())
    return b"".join(out)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(37, 61), (64, 96), (1, 5), (3, 3), (2, 517), (0, 4)])
@pytest.mark.parametrize("encoding", codecs.ENCODINGS)
def test_round_trip(encoding, shape, dtype, backend):
    image = _frame(shape, dtype) if shape[0] else np.zeros(shape, dtype)
    got = codecs.decode(codecs.encode(image, encoding), encoding, shape, dtype, backend=backend)
    assert got.dtype == np.dtype(dtype) and got.shape == shape
    np.testing.assert_array_equal(got, image)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "uint64", "float64"])
@pytest.mark.parametrize("block", [8, 64, 128, 192, 1024, None])
def test_bslz4_round_trip_over_block_sizes(dtype, block, backend):
    """Blocks of 64k elements take the word kernel, the others and partial blocks the byte kernel."""
    image = _frame((61, 67), "uint32", seed=9).astype(dtype)
    blob = codecs.encode_bslz4(image, block_size=block)
    np.testing.assert_array_equal(codecs.decode_bslz4(blob, image.shape, dtype, backend=backend), image)


@pytest.mark.parametrize("itemsize", [1, 2, 3, 4, 8, 16])
@pytest.mark.parametrize("n", [0, 7, 64, 517, 2184, 5000])
@pytest.mark.parametrize("block", [8, 64, 256, 2048])
@pytest.mark.parametrize("little", [True, False])
def test_bitunshuffle_inverts_bitshuffle(itemsize, n, block, little):
    """Word kernel (little-endian host, 1/2/4/8-byte elements, blocks of 64k) and byte kernel agree."""
    data = np.random.default_rng(n + block).integers(0, 256, n * itemsize, dtype=np.uint8)
    shuffled = np.empty_like(data)
    ours_bitshuffle(data, shuffled, block, itemsize)
    assert bytes(shuffled) == _reference_bitshuffle(data.view(f"V{itemsize}"), block)
    back = np.empty_like(data)
    ours_bitunshuffle(shuffled, back, block, itemsize, little)
    np.testing.assert_array_equal(back, data)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32"])
@pytest.mark.parametrize("block", [None, 8, 64, 4096])
def test_bitshuffle_matches_its_definition(dtype, block):
    image = _frame((37, 61), dtype, seed=1)
    blob = codecs.encode_bslz4(image, block_size=block)
    total, block_bytes = struct.unpack(">QI", blob[:12])
    elements = block_bytes // image.itemsize
    assert total == image.nbytes
    assert elements == (block or max(8192 // image.itemsize, 128))
    shuffled, pos = [], 12
    for start in range(0, image.size // 8 * 8, elements):   # our framing, read back with plain lz4
        m = min(elements, image.size // 8 * 8 - start)
        (length,) = struct.unpack(">I", blob[pos:pos + 4])
        shuffled.append(lz4.block.decompress(blob[pos + 4:pos + 4 + length], uncompressed_size=m * image.itemsize))
        pos += 4 + length
    shuffled.append(blob[pos:])
    assert b"".join(shuffled) == _reference_bitshuffle(image, elements)


def test_bitshuffle_matches_the_bitshuffle_package():
    bitshuffle = pytest.importorskip("bitshuffle")  # a wheel only on Linux x86-64: the bench extra's marker
    for dtype in ("uint8", "uint16", "uint32", "uint64"):
        image = _frame((64, 96), "uint32", seed=2).astype(dtype).reshape(-1)
        out = np.empty(image.nbytes, np.uint8)
        ours_bitshuffle(image.view(np.uint8), out, 256, image.itemsize)
        theirs = bitshuffle.bitshuffle(image, 256).view(np.uint8)
        np.testing.assert_array_equal(out, theirs)
        back = np.empty(image.nbytes, np.uint8)  # and our inverse on their bytes (trusted: made here)
        ours_bitunshuffle(np.ascontiguousarray(theirs), back, 256, image.itemsize, True)
        np.testing.assert_array_equal(back, image.view(np.uint8))


def _h5_chunk(image, filter_kwargs):
    with h5py.File(io.BytesIO(), "w") as f:
        ds = f.create_dataset("x", data=image, chunks=image.shape, **filter_kwargs)
        return ds.id.read_direct_chunk((0,) * image.ndim)[1]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(64, 96), (37, 61), (300, 517)])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "float32", "float64"])
def test_chunks_from_hdf5plugin_decode(dtype, shape, backend):
    image = _frame(shape, "float32" if dtype.startswith("float") else dtype, seed=3).astype(dtype)
    bs = _h5_chunk(image, hdf5plugin.Bitshuffle(cname="lz4"))
    np.testing.assert_array_equal(codecs.decode(bs, "bslz4", image.shape, dtype, backend=backend), image)
    plain = _h5_chunk(image, hdf5plugin.LZ4(nbytes=1000))  # several blocks, some possibly stored
    np.testing.assert_array_equal(codecs.decode(plain, "lz4", image.shape, dtype, backend=backend), image)


@pytest.mark.parametrize("encoding,filter_kwargs", [("bslz4", hdf5plugin.Bitshuffle(cname="lz4")),
                                                     ("lz4", hdf5plugin.LZ4())])
def test_our_chunks_read_back_through_hdf5plugin(encoding, filter_kwargs):
    image = _frame((37, 61), "uint32", seed=4)
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        ds = f.create_dataset("x", shape=image.shape, dtype=image.dtype, chunks=image.shape, **filter_kwargs)
        ds.id.write_direct_chunk((0, 0), codecs.encode(image, encoding))
    with h5py.File(buf, "r") as f:
        np.testing.assert_array_equal(f["x"][()], image)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lz4_stores_incompressible_blocks_as_they_are(backend):
    image = np.random.default_rng(5).integers(0, 2**32, (16, 16), dtype=np.uint32)
    blob = codecs.encode_lz4(image, block_size=256)
    lengths = [struct.unpack(">I", blob[12 + k * 260:16 + k * 260])[0] for k in range(4)]
    assert lengths == [256] * 4
    np.testing.assert_array_equal(codecs.decode_lz4(blob, image.shape, image.dtype, backend=backend), image)


@pytest.mark.parametrize("backend", BACKENDS)
def test_incompressible_bare_lz4_block_reframed_for_hdf5(backend):
    """LZ4 expands random bytes: the reframed block is longer than its data, and hdf5plugin reads it as LZ4."""
    image = np.random.default_rng(11).integers(0, 256, (3, 12), dtype=np.uint8)
    framed = codecs.lz4_block_to_h5(codecs.encode_lz4_block(image), image.nbytes)
    assert struct.unpack(">I", framed[12:16])[0] > image.nbytes
    np.testing.assert_array_equal(codecs.decode_lz4(framed, image.shape, image.dtype, backend=backend), image)
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        ds = f.create_dataset("x", shape=image.shape, dtype=image.dtype, chunks=image.shape, **hdf5plugin.LZ4())
        ds.id.write_direct_chunk((0, 0), framed)
    with h5py.File(buf, "r") as f:
        np.testing.assert_array_equal(f["x"][()], image)


def test_bare_lz4_block_reframed_for_hdf5():
    image = _frame((37, 61), "uint16", seed=6)
    block = codecs.encode_lz4_block(image)
    np.testing.assert_array_equal(codecs.decode_lz4_block(block, image.shape, image.dtype), image)
    framed = codecs.lz4_block_to_h5(block, image.nbytes)
    np.testing.assert_array_equal(codecs.decode_lz4(framed, image.shape, image.dtype), image)
    assert codecs.lz4_block_to_h5(bytes(100), 100) is None  # would read as a stored block


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("encoding", ["bslz4", "lz4"])
def test_payload_is_not_written(encoding, backend):
    image = _frame((37, 61), "uint16")
    blob = bytearray(codecs.encode(image, encoding))
    before = bytes(blob)
    codecs.decode(memoryview(blob).toreadonly(), encoding, image.shape, image.dtype, backend=backend)
    codecs.decode(blob, encoding, image.shape, image.dtype, backend=backend)
    assert bytes(blob) == before


@pytest.mark.parametrize("backend", BACKENDS)
def test_real_stream1_frame_decodes_to_its_known_values(backend):
    blob = (DATA / "stream1_frame_bs16-lz4.bin").read_bytes()
    image = codecs.decode(blob, "bslz4", (4362, 4148), "uint16", backend=backend)
    gaps = image == 65535
    assert gaps.sum() == 1_253_074 and image[~gaps].sum(dtype=np.int64) == 9_876


def test_decode_benchmark_cases_agree_with_every_peer_and_name_the_backend():
    """``livediff bench --only decode --quick`` without the timing: each case's check runs (arrays equal)."""
    from livediff.bench import decode as bench_decode

    cases = bench_decode.cases(quick=True)
    assert {c.operator for c in cases} >= {"bslz4 decode [numba]", f"stream1 image message [{codecs.backend()}]"}
    for case in cases:
        if case.check is not None and case.skipped is None:
            case.check()
        np.asarray(case.ours())


def test_backend_is_named_and_loads():
    assert codecs.backend() in codecs.BACKENDS and codecs.backend() in codecs.describe()
    assert codecs.prepare() >= 0.0
    with pytest.raises(ValueError, match="backend must be one of"):
        codecs.decode(codecs.encode(np.zeros((2, 8), np.uint16), "bslz4"), "bslz4", (2, 8), "uint16", backend="c")


@pytest.mark.parametrize("blob,encoding,message", [
    (bytes(12), "bslz4", "header announces 0 bytes, expected 90"),              # a sender's all-zero header
    (bytes(11), "bslz4", "11 bytes, too short for the 12-byte header"),
    (struct.pack(">QI", 90, 12), "bslz4", "block size 12 bytes is not a positive multiple of 8 elements"),
    (struct.pack(">QI", 90, 0), "bslz4", "block size 0 bytes"),
    (struct.pack(">QI", 90, 0), "lz4", "block size 0 in the header"),
    (struct.pack(">QI", 90, 16) + b"\x00\x00\x00\x09xx", "bslz4", "corrupt or truncated data"),
    (struct.pack(">QI", 90, 90) + b"\x00\x00\x00\x09xx", "lz4", "corrupt or truncated data"),
    (bytes(89), "raw", "buffer holds 89 bytes, expected 90 for uint16 (5, 9)"),
    (b"", "zstd", "unknown encoding 'zstd'"),
])
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_payloads_raise_one_line(blob, encoding, message, backend):
    with pytest.raises(DecodeError) as info:
        codecs.decode(blob, encoding, (5, 9), "uint16", backend=backend)
    assert message in str(info.value) and "\n" not in str(info.value)


def _literal_lz4(data: bytes) -> bytes:
    """An LZ4 block of literals only: valid, and longer than its data."""
    if len(data) < 15:
        return bytes([len(data) << 4]) + data
    rest, ext = len(data) - 15, []
    while rest >= 255:
        ext.append(255)
        rest -= 255
    return bytes([0xF0, *ext, rest]) + data


def _blocks(blob: bytes) -> list[tuple[int, int]]:
    """(offset of the 4-byte length, length) of each block of a chunk with nothing after its blocks."""
    out, pos = [], 12
    while pos < len(blob):
        (length,) = struct.unpack(">I", blob[pos:pos + 4])
        out.append((pos, length))
        pos += 4 + length
    return out


@pytest.mark.parametrize("encoding", ["bslz4", "lz4"])
def test_each_block_length_is_checked_before_the_block_is_decompressed(encoding):
    """The numba walker names the block and the length it refused."""
    image = _frame((64, 64), "uint32", seed=10)   # 4096 elements: no uncompressed tail
    blob = codecs.encode_bslz4(image, block_size=512) if encoding == "bslz4" else codecs.encode_lz4(image,
                                                                                                   block_size=2048)
    (pos, length), *_ = _blocks(blob)[2:]
    size = 512 * 4 if encoding == "bslz4" else 2048
    # block 0 of zeros, valid and longer than LZ4 would make it (all literals; stored in the LZ4 framing),
    # then 3 bytes: enough for the length check of the whole chunk, too few for block 1's length
    literal = _literal_lz4(bytes(size)) if encoding == "bslz4" else bytes(size)
    cases = {
        "claims 4294967295 bytes, more than are left": blob[:pos] + b"\xff" * 4 + blob[pos + 4:],
        "claims 0 bytes, impossible": blob[:pos] + bytes(4) + blob[pos + 4:],
        "block 2 (": blob[:pos + 4] + bytes(length) + blob[pos + 4 + length:],
        "is not valid LZ4 data": blob[:pos + 4] + bytes(length) + blob[pos + 4 + length:],
        "3 bytes left where the length of block 1 belongs": blob[:12] + struct.pack(">I", len(literal)) + literal
                                                            + bytes(3),
        "1 bytes after the last of 8 block(s)": blob + b"x",
    }
    for message, bad in cases.items():
        with pytest.raises(DecodeError, match="corrupt or truncated data") as info:
            codecs.decode(bad, encoding, image.shape, image.dtype, backend="numba")
        assert message in str(info.value)
    too_big = blob[:pos] + struct.pack(">I", size + size // 255 + 17) + blob[pos + 4:]
    with pytest.raises(DecodeError, match="impossible for an LZ4 block"):
        codecs.decode(too_big + bytes(size), encoding, image.shape, image.dtype, backend="numba")


# ---------------------------------------------------------------------- what arrives is never trusted (issue 18)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("encoding", ["bslz4", "lz4"])
def test_tiny_chunk_claiming_a_huge_frame_is_refused_before_anything_is_allocated(encoding, backend):
    """Issue 18 row 3: ~60 bytes claiming 100000 x 100000 uint32 (40 GB) with a header that agrees."""
    shape, nbytes = (100_000, 100_000), 100_000 * 100_000 * 4
    block = codecs.encode_lz4_block(np.zeros(2048, np.uint32))
    blob = struct.pack(">QI", nbytes, 8192) + struct.pack(">I", len(block)) + block + bytes(8)
    assert len(blob) < 100
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError, match="cannot hold the .* block"):
            codecs.decode(blob, encoding, shape, "uint32", backend=backend)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_bare_lz4_block_too_short_for_its_size_is_refused_before_anything_is_allocated():
    block = codecs.encode_lz4_block(np.zeros(4096, np.uint8))
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError, match="cannot decode to 1600000000"):  # 1.6 GB: one LZ4 block could
            codecs.decode_lz4_block(block, (20_000, 20_000), "uint32")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_bare_lz4_block_over_4_gib():
    """Issue 18 row 4: a Stream v1 ``lz4<`` frame whose decoded size is over 4 GiB (struct.error before)."""
    shape = (40_000, 30_000)   # uint32: 4.8 GB, over the 4-byte fields of the HDF5 LZ4 framing
    block = bytes(20_000_000)  # long enough for the ratio check: only the size is wrong
    assert codecs.lz4_block_to_h5(block, 4 * shape[0] * shape[1]) is None
    assert codecs.lz4_block_to_h5(block, -1) is None and codecs.lz4_block_to_h5(object(), 8) is None
    with pytest.raises(DecodeError, match="more than one LZ4 block can hold"):
        codecs.decode_lz4_block(block, shape, "uint32")


def test_stream1_lz4_frame_over_4_gib_is_one_bad_frame():
    """Issue 18 row 4 through the Stream v1 decoder: a DecodeError, never struct.error."""
    from livediff.sources import dectris_v1

    blob = bytes(20_000_000)
    with pytest.raises(DecodeError):
        dectris_v1._frame(1, 0, {"encoding": "lz4<", "size": len(blob)}, blob, (40_000, 30_000),
                          np.dtype("uint32"), "frame 0")


class _Failing:
    def __init__(self, exc):
        self.exc = exc

    def __call__(self, *args, **kwargs):
        raise self.exc


@pytest.mark.parametrize("exc", [MemoryError(), ValueError("bad"), KeyError("x"), OverflowError("big"),
                                 RuntimeError("error decompressing stream"), SystemError("odd")])
@pytest.mark.parametrize("encoding", ["bslz4", "lz4", "block"])
def test_any_failure_of_the_underlying_library_is_a_decode_error(monkeypatch, exc, encoding):
    """No exception type but DecodeError leaves a codec, whatever the library raises."""
    from livediff.sources import lz4chunks

    image = _frame((8, 16), "uint16")
    if encoding == "block":
        monkeypatch.setattr(lz4.block, "decompress", _Failing(exc))
        with pytest.raises(DecodeError, match="lz4 block"):
            codecs.decode_lz4_block(codecs.encode_lz4_block(image), image.shape, image.dtype)
        return
    blob = codecs.encode(image, encoding)
    monkeypatch.setattr(lz4chunks, "decode_bslz4", _Failing(exc))
    monkeypatch.setattr(lz4chunks, "decode_lz4", _Failing(exc))
    with pytest.raises(DecodeError, match=encoding):
        codecs.decode(blob, encoding, image.shape, image.dtype, backend="numba")
    monkeypatch.setattr(codecs, "_dectris", type("Fake", (), {"decompress": staticmethod(_Failing(exc))}))
    with pytest.raises(DecodeError, match=encoding):
        codecs.decode(blob, encoding, image.shape, image.dtype, backend="dectris-compression")


def test_lz4_block_of_the_wrong_length_is_refused():
    block = codecs.encode_lz4_block(np.arange(45, dtype=np.uint16))
    with pytest.raises(DecodeError, match="decoded 90 bytes, expected 92"):
        codecs.decode_lz4_block(block, (2, 23), "uint16")
    with pytest.raises(DecodeError, match="corrupt LZ4 data"):
        codecs.decode_lz4_block(block[:-4], (5, 9), "uint16")


# ---------------------------------------------------------------------- fuzzing
_SHAPE = (13, 29)
_VALID = {(enc, dt): codecs.encode(_frame(_SHAPE, dt, seed=7), enc)
          for enc in ("bslz4", "lz4") for dt in ("uint8", "uint16", "uint32")}


@st.composite
def _corrupted(draw):
    encoding, dtype = draw(st.sampled_from(sorted(_VALID)))
    blob = bytearray(_VALID[encoding, dtype])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "header", "length"]))
        at = draw(st.integers(0, max(len(blob) - 1, 0)))
        if kind == "truncate":
            del blob[at:]
        elif kind == "flip" and blob:
            blob[at] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            blob[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del blob[at:at + draw(st.integers(1, 16))]
        elif kind == "header" and len(blob) >= 12:
            blob[:12] = struct.pack(">QI", draw(st.sampled_from([0, 1, _SHAPE[0] * _SHAPE[1] * 4, 2**63 - 1])),
                                    draw(st.sampled_from([0, 8, 16, 8192, 2**31, 2**32 - 1])))
        elif kind == "length" and len(blob) >= 16:
            blob[12:16] = struct.pack(">I", draw(st.integers(0, 2**32 - 1)))
    return encoding, dtype, bytes(blob)


def _decode_or_none(blob, encoding, shape, dtype, backend):
    """The decoded array, or None for a DecodeError; an accepted payload must have the declared shape and dtype."""
    framed = True
    if encoding != "block":  # the receiver's check
        try:
            codecs.check(blob, encoding, shape, dtype)
        except DecodeError:
            framed = False
    try:
        if encoding == "block":
            image = codecs.decode_lz4_block(blob, shape, dtype)
        else:
            image = codecs.decode(blob, encoding, shape, dtype, backend=backend)
    except DecodeError:
        return None
    # as strict as livediff's own decoder (dectris-compression ignores bytes after the last block)
    assert framed or backend != "numba", f"check refused a {encoding} payload that decodes"
    assert isinstance(image, np.ndarray)
    assert image.shape == shape and image.dtype == np.dtype(dtype)
    return image


@settings(max_examples=600, deadline=None)
@given(_corrupted())
def test_corrupted_or_truncated_chunks_only_raise_decode_error(case):
    """Corrupt counts can still be valid LZ4: what is accepted has the declared shape and dtype, and
    where both backends accept, they agree."""
    encoding, dtype, blob = case
    got = [_decode_or_none(blob, encoding, _SHAPE, dtype, backend) for backend in BACKENDS]
    if len(got) == 2 and got[0] is not None and got[1] is not None:
        np.testing.assert_array_equal(got[0], got[1])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(["raw", "bslz4", "lz4", "block"]),
       st.sampled_from(["uint8", "uint16", "uint32", "float32"]))
def test_random_bytes_only_raise_decode_error(blob, encoding, dtype):
    for backend in BACKENDS:
        _decode_or_none(blob, encoding, (3, 7), dtype, backend)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=120), st.sampled_from(["bslz4", "lz4"]),
       st.sampled_from(["uint8", "uint16", "uint32"]), st.sampled_from([8, 64, 128]))
def test_random_blocks_behind_a_valid_header_only_raise_decode_error(body, encoding, dtype, block):
    """Past the header checks: random block lengths and LZ4 data reach the block walkers."""
    itemsize = np.dtype(dtype).itemsize
    blob = struct.pack(">QI", 21 * itemsize, block * itemsize if encoding == "bslz4" else block) + body
    for backend in BACKENDS:
        _decode_or_none(blob, encoding, (3, 7), dtype, backend)


@pytest.mark.parametrize("encoding", ["bslz4", "lz4"])
def test_native_protocol_carries_compressed_frames(encoding):
    """The receiver checks the framing and passes the payload on; the worker decodes it."""
    from livediff.sources import native

    image = _frame((37, 61), "uint32", seed=8)
    parts = native.encode_image(2, 5, image, timestamp=1.5, encoding=encoding)
    frame = native.decode(parts)
    assert frame.data is None and frame.payload.encoding == encoding and bytes(frame.payload.buffer) == bytes(parts[1])
    assert (frame.payload.shape, frame.payload.dtype) == ((37, 61), "uint32")
    np.testing.assert_array_equal(frame.decode(codecs.decode_payload), image)
    assert frame.data is not None and frame.payload is not None  # decoded once, the payload kept for writers
    with pytest.raises(DecodeError, match=f"native: frame 5: {encoding}: corrupt or truncated data"):
        native.decode([parts[0], bytes(parts[1])[:-20]])


def _chain(blob: bytes) -> list[tuple[int, int]]:
    """(offset, length) of each LZ4 block of an HDF5-filter chunk, walked independently of livediff."""
    total, block = struct.unpack(">QI", blob[:12])
    out, pos = [], 12
    while pos + 4 <= len(blob) and len(out) < -(-total // block):
        (length,) = struct.unpack(">I", blob[pos:pos + 4])
        out.append((pos + 4, length))
        pos += 4 + length
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("encoding", ["bslz4", "lz4"])
def test_a_well_framed_chunk_with_corrupt_lz4_passes_the_check_and_fails_to_decode(encoding, backend):
    """The receiver's cheap check cannot see inside a block: such a payload fails later, on the worker."""
    image = np.zeros((37, 61), np.uint32)
    blob = codecs.encode_bslz4(image, block_size=512) if encoding == "bslz4" else codecs.encode_lz4(image,
                                                                                                  block_size=2048)
    offset, length = _chain(blob)[1]
    assert length >= 3
    bad = blob[:offset] + b"\x00\x00\x00" + blob[offset + 3:]  # no literals, then a match at offset 0: invalid LZ4
    assert len(bad) == len(blob)
    codecs.check(bad, encoding, image.shape, image.dtype)
    with pytest.raises(DecodeError, match=f"^{encoding}: corrupt or truncated data"):
        codecs.decode(bad, encoding, image.shape, image.dtype, backend=backend)


@pytest.mark.parametrize("encoding", ["bslz4", "lz4"])
def test_the_check_walks_the_block_length_chain(encoding):
    """Truncated, over-long, and a block length pointing past the end: refused without decompressing."""
    image = _frame((37, 61), "uint32", seed=5)
    blob = codecs.encode_bslz4(image, block_size=512) if encoding == "bslz4" else codecs.encode_lz4(image,
                                                                                                  block_size=2048)
    blocks = _chain(blob)
    assert len(blocks) >= 3
    offset, length = blocks[1]
    past_end = blob[:offset - 4] + struct.pack(">I", len(blob)) + blob[offset:]
    for bad, why in [(blob[:-1], "truncated"), (blob + b"\x00", "a byte too many"), (past_end, "claims")]:
        with pytest.raises(DecodeError, match=f"^{encoding}: corrupt or truncated data"):
            codecs.check(bad, encoding, image.shape, image.dtype)
    codecs.check(blob, encoding, image.shape, image.dtype)
    data, payload = codecs.accept(blob, encoding, image.shape, image.dtype)
    assert data is None and payload.buffer is blob and payload.nbytes == image.nbytes
    np.testing.assert_array_equal(codecs.decode_payload(payload), image)


# ---------------------------------------------------------------- decoding row by row (BitshuffleRows)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int32", "uint32"])
@pytest.mark.parametrize("block_size", [None, 64])
def test_a_payload_decoded_a_few_rows_at_a_time_gives_the_frame_decoded_whole(backend, dtype, block_size):
    from livediff.sources import lz4chunks

    rng = np.random.default_rng(11)
    image = _frame((53, 77), dtype, seed=3)  # 4081 pixels: the last one stored after the blocks
    payload = Encoded("bslz4", codecs.encode_bslz4(image, block_size=block_size), image.shape, dtype)
    decoding = codecs.BitshuffleRows(backend)(payload)
    state, src, dst, scratch = decoding.args
    wire = image.reshape(-1).view(np.uint8)
    upto = 0
    while upto < dst.size:
        upto = min(dst.size, upto + int(rng.integers(1, 4 * image.shape[1] * image.itemsize)))
        assert lz4chunks.decode_bslz4_upto(state, src, dst, scratch, upto) == lz4chunks.OK
        np.testing.assert_array_equal(dst[:upto], wire[:upto])
    np.testing.assert_array_equal(decoding.finish(), image)
    assert decoding.pixels.dtype == image.dtype and decoding.pixels.shape == image.shape


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_payload_decoded_row_by_row_reports_a_corrupt_block_as_decoding_it_whole_does(backend):
    image = _frame((40, 64), "uint16", seed=5)
    blob = bytearray(codecs.encode_bslz4(image, block_size=128))
    second = 12 + 4 + struct.unpack_from(">I", blob, 12)[0]  # block 1's length
    length = struct.unpack_from(">I", blob, second)[0]
    blob[second + 4:second + 4 + length] = b"\xff" * length
    decoding = codecs.BitshuffleRows(backend)(Encoded("bslz4", bytes(blob), image.shape, "uint16"))
    with pytest.raises(DecodeError) as rows:
        decoding.finish()
    with pytest.raises(DecodeError) as whole:
        codecs.decode(bytes(blob), "bslz4", image.shape, "uint16", backend="numba")
    assert str(rows.value) == str(whole.value) and "block 1 " in str(rows.value)
    with pytest.raises(DecodeError):  # and again: the failure is for good
        decoding.finish()


def test_only_bitshuffle_lz4_payloads_are_decoded_row_by_row():
    image = _frame((8, 9), "uint16")
    rows = codecs.BitshuffleRows()
    assert rows(Encoded("lz4", codecs.encode_lz4(image), image.shape, "uint16")) is None
    assert rows(rows.sample(image)) is not None
    with pytest.raises(ValueError, match="backend"):
        codecs.BitshuffleRows("zstd")


def test_without_dectris_compressions_block_functions_rows_decode_with_numba(monkeypatch, caplog):
    class Missing:  # a library without the two symbols (they are not dectris-compression's documented interface)
        def __init__(self, path):
            self.path = path

    monkeypatch.setattr(codecs, "_dectris", type("Module", (), {"__file__": "missing.so"}))
    monkeypatch.setattr(codecs.ctypes, "CDLL", Missing)
    monkeypatch.setattr(codecs, "_found", {})
    caplog.set_level(logging.INFO, logger="livediff.sources.codecs")
    assert codecs._block_functions() == (0, 0)
    assert "rows decode with numba" in caplog.text
    image = _frame((30, 41), "uint32", seed=2)
    decoding = codecs.BitshuffleRows("dectris-compression")(codecs.BitshuffleRows().sample(image))
    from livediff.sources import lz4chunks

    assert decoding.args[0][lz4chunks.C_LZ4] == 0  # livediff's kernels decode the blocks
    np.testing.assert_array_equal(decoding.finish(), image)


@pytest.mark.skipif(codecs.backend() != "dectris-compression", reason="dectris-compression is not installed")
def test_dectris_compressions_block_functions_are_found_and_pass_the_check(monkeypatch):
    monkeypatch.setattr(codecs, "_found", {})
    assert all(codecs._block_functions())


# ---------------------------------------------------------------- the frame buffers BitshuffleRows decodes into
def test_a_buffer_is_handed_out_again_only_once_nothing_refers_to_it():
    pool = codecs.Buffers(2)
    first = pool.take((4, 6), np.dtype("uint16"))
    view = first[1:3]  # a view keeps its buffer in use
    second = pool.take((4, 6), np.dtype("uint16"))
    assert second is not first
    del first
    third = pool.take((4, 6), np.dtype("uint16"))
    assert not np.shares_memory(third, view) and not np.shares_memory(third, second)  # both still in use
    del view, second
    assert pool.take((4, 6), np.dtype("uint16")) is pool._kept[0]  # free again, and reused
    assert pool.take((5, 6), np.dtype("uint16")).shape == (5, 6)  # another shape: fresh buffers


def test_threads_taking_buffers_never_share_one():
    import threading

    pool = codecs.Buffers(3)
    held: set[int] = set()
    lock = threading.Lock()
    clashes = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(300):
            buffer = pool.take((8, 8), np.dtype("uint32"))
            with lock:
                if id(buffer) in held:
                    clashes.append(id(buffer))
                held.add(id(buffer))
            buffer[...] = seed  # a slow consumer writes and reads its buffer
            if rng.random() < 0.5:
                time.sleep(0.0005)
            if not (buffer == seed).all():
                clashes.append("overwritten")
            with lock:
                held.discard(id(buffer))
            del buffer

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert clashes == [] and len(pool._kept) == 3


def test_frames_kept_by_a_slow_consumer_keep_their_pixels():
    """Every frame held until the end (process_frames returns them all): none of their buffers
    is decoded into again, with 2 workers and a pool of 2."""
    from livediff.config import parse
    from livediff.executors.offline import process_frames
    from simulators import DiffractionSimulator

    sim = DiffractionSimulator(shape=(61, 83), dtype="uint32", n_frames=10, n_spots=6, seed=8)
    rows = codecs.BitshuffleRows(buffers=2)
    frames = [Frame(sim.series, i, None, payload=rows.sample(sim.frame(i))) for i in range(sim.n_frames)]
    specs = parse({"operators": {"summary": {}, "flatfield": {}, "spots": {}}}).operators
    done, _ = process_frames(specs, sim.series_start(), frames, workers=2, decode=codecs.decode_payload, rows=rows)
    for i, frame in enumerate(done):
        np.testing.assert_array_equal(frame.data, sim.frame(i))
    bases = {id(frame.data.base if frame.data.base is not None else frame.data) for frame in done}
    assert len(bases) == sim.n_frames
