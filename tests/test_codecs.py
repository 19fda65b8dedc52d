"""Payload codecs: round trips, independent encoders and decoders, every length checked, fuzzed for crashes."""
from __future__ import annotations

import io
import struct
from pathlib import Path

import h5py
import hdf5plugin
import lz4.block
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from livediff.errors import DecodeError
from livediff.sources import codecs
from livediff.sources.bitshuffle import bitshuffle as ours_bitshuffle

DATA = Path(__file__).parent / "data"
DTYPES = ["uint8", "uint16", "uint32", "int32", "float32"]


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


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(37, 61), (64, 96), (1, 5), (3, 3), (2, 517)])
@pytest.mark.parametrize("encoding", codecs.ENCODINGS)
def test_round_trip(encoding, shape, dtype):
    image = _frame(shape, dtype)
    got = codecs.decode(codecs.encode(image, encoding), encoding, shape, dtype)
    assert got.dtype == np.dtype(dtype) and got.shape == shape
    np.testing.assert_array_equal(got, image)


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
    bitshuffle = pytest.importorskip("bitshuffle")
    for dtype in ("uint16", "uint32"):
        image = _frame((64, 96), dtype, seed=2).reshape(-1)
        out = np.empty(image.nbytes, np.uint8)
        ours_bitshuffle(image.view(np.uint8), out, 256, image.itemsize)
        np.testing.assert_array_equal(out, bitshuffle.bitshuffle(image, 256).view(np.uint8))


def _h5_chunk(image, filter_kwargs):
    with h5py.File(io.BytesIO(), "w") as f:
        ds = f.create_dataset("x", data=image, chunks=image.shape, **filter_kwargs)
        return ds.id.read_direct_chunk((0,) * image.ndim)[1]


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "float32"])
def test_chunks_from_hdf5plugin_decode(dtype):
    image = _frame((64, 96), dtype, seed=3)
    bs = _h5_chunk(image, hdf5plugin.Bitshuffle(cname="lz4"))
    np.testing.assert_array_equal(codecs.decode(bs, "bslz4", image.shape, dtype), image)
    plain = _h5_chunk(image, hdf5plugin.LZ4(nbytes=1000))  # several blocks, some possibly stored
    np.testing.assert_array_equal(codecs.decode(plain, "lz4", image.shape, dtype), image)


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


def test_lz4_stores_incompressible_blocks_as_they_are():
    image = np.random.default_rng(5).integers(0, 2**32, (16, 16), dtype=np.uint32)
    blob = codecs.encode_lz4(image, block_size=256)
    lengths = [struct.unpack(">I", blob[12 + k * 260:16 + k * 260])[0] for k in range(4)]
    assert lengths == [256] * 4
    np.testing.assert_array_equal(codecs.decode_lz4(blob, image.shape, image.dtype), image)


def test_bare_lz4_block_reframed_for_hdf5():
    image = _frame((37, 61), "uint16", seed=6)
    block = codecs.encode_lz4_block(image)
    np.testing.assert_array_equal(codecs.decode_lz4_block(block, image.shape, image.dtype), image)
    framed = codecs.lz4_block_to_h5(block, image.nbytes)
    np.testing.assert_array_equal(codecs.decode_lz4(framed, image.shape, image.dtype), image)
    assert codecs.lz4_block_to_h5(bytes(100), 100) is None  # would read as a stored block


def test_payload_is_not_written():
    image = _frame((37, 61), "uint16")
    blob = bytearray(codecs.encode_bslz4(image))
    before = bytes(blob)
    codecs.decode(memoryview(blob).toreadonly(), "bslz4", image.shape, image.dtype)
    assert bytes(blob) == before


def test_real_stream1_frame_decodes_to_its_known_values():
    blob = (DATA / "stream1_frame_bs16-lz4.bin").read_bytes()
    image = codecs.decode(blob, "bslz4", (4362, 4148), "uint16")
    gaps = image == 65535
    assert gaps.sum() == 1_253_074 and image[~gaps].sum(dtype=np.int64) == 9_876


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
def test_bad_payloads_raise_one_line(blob, encoding, message):
    with pytest.raises(DecodeError) as info:
        codecs.decode(blob, encoding, (5, 9), "uint16")
    assert message in str(info.value) and "\n" not in str(info.value)


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


@settings(max_examples=600, deadline=None)
@given(_corrupted())
def test_corrupted_or_truncated_chunks_only_raise_decode_error(case):
    encoding, dtype, blob = case
    try:
        image = codecs.decode(blob, encoding, _SHAPE, dtype)
    except DecodeError:
        return
    assert image.shape == _SHAPE and image.dtype == np.dtype(dtype)  # corrupt counts can still be valid LZ4


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(["raw", "bslz4", "lz4", "block"]),
       st.sampled_from(["uint8", "uint16", "uint32", "float32"]))
def test_random_bytes_only_raise_decode_error(blob, encoding, dtype):
    try:
        if encoding == "block":
            codecs.decode_lz4_block(blob, (3, 7), dtype)
        else:
            codecs.decode(blob, encoding, (3, 7), dtype)
    except DecodeError:
        pass


@pytest.mark.parametrize("encoding", ["bslz4", "lz4"])
def test_native_protocol_carries_compressed_frames(encoding):
    from livediff.sources import native

    image = _frame((37, 61), "uint32", seed=8)
    parts = native.encode_image(2, 5, image, timestamp=1.5, encoding=encoding)
    frame = native.decode(parts)
    np.testing.assert_array_equal(frame.data, image)
    assert frame.encoding == encoding and bytes(frame.raw) == bytes(parts[1])
    with pytest.raises(DecodeError, match=f"native: frame 5: {encoding}: corrupt or truncated data"):
        native.decode([parts[0], bytes(parts[1])[:-20]])
