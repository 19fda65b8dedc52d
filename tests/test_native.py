"""The native protocol: encode -> decode round trips, and every malformed message is refused clearly."""
from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from checks import assert_decodes_as_declared, assert_sound
from livediff.errors import DecodeError
from livediff.model import Frame, Geometry, Scan, SeriesEnd, SeriesStart
from livediff.sources import native


def _start(**kw) -> SeriesStart:
    rng = np.random.default_rng(0)
    return SeriesStart(**{"series": 4, "shape": (5, 9), "dtype": "uint16", "n_frames": 3,
                          "mask": rng.random((5, 9)) > 0.2, "count_time": 0.01, "saturation": 4000,
                          "geometry": Geometry((2.0, 4.5), (75e-6, 75e-6), 0.1, 1.0), "scan": Scan((1, 3)),
                          **kw})


def test_start_round_trip():
    start = _start()
    got = native.decode(native.encode_start(start))
    assert isinstance(got, SeriesStart)
    np.testing.assert_array_equal(got.mask, start.mask)
    assert (got.series, got.shape, got.dtype, got.n_frames, got.geometry, got.scan, got.saturation) == (
        start.series, start.shape, start.dtype, start.n_frames, start.geometry, start.scan, start.saturation)


def test_start_without_mask():
    got = native.decode(native.encode_start(_start(mask=None)))
    assert got.mask is None


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "int32", "float32"])
def test_image_round_trip(dtype):
    data = (np.random.default_rng(1).random((5, 9)) * 200).astype(dtype)
    got = native.decode(native.encode_image(4, 2, data, timestamp=12.5))
    assert isinstance(got, Frame) and (got.series, got.index, got.timestamp) == (4, 2, 12.5)
    assert got.data.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got.data, data)


def test_end_round_trip():
    assert native.decode(native.encode_end(7)) == SeriesEnd(7)


def _image_header(**kw):
    return msgpack.packb({"v": 1, "type": "image", "series": 4, "frame": 0, "shape": [5, 9],
                          "dtype": "uint16", "encoding": "raw", **kw})


@pytest.mark.parametrize("parts,message", [
    ([b"\x92\x01"], "header is not msgpack"),
    ([msgpack.packb([1, 2])], "header must be a map"),
    ([msgpack.packb({"v": 2, "type": "end", "series": 1})], "protocol version 2, expected 1"),
    ([msgpack.packb({"v": 1, "type": "bogus", "series": 1})], "unknown message type 'bogus'"),
    ([msgpack.packb({"v": 1, "type": "end", "series": -1})], "'series' must be an integer >= 0, got -1"),
    ([_image_header()], "image message needs 2 part"),
    ([_image_header(), bytes(89)], "buffer holds 89 bytes, expected 90 for uint16 (5, 9)"),
    ([_image_header(dtype="float16"), bytes(90)], "unknown dtype 'float16'"),
    ([_image_header(shape=[5]), bytes(90)], "'shape' must be [rows, cols]"),
    ([_image_header(shape=[5, 0]), bytes(0)], "'shape' must be [rows, cols]"),
    ([_image_header(encoding="zstd"), bytes(90)], "unknown encoding 'zstd'"),
    ([_image_header(frame="3"), bytes(90)], "'frame' must be an integer"),
    ([msgpack.packb({"v": 1, "type": "start", "series": 1, "shape": [5, 9], "dtype": "uint16",
                     "mask": True})], "start message needs 2 part"),
    ([msgpack.packb({"v": 1, "type": "start", "series": 1, "shape": [5, 9], "dtype": "uint16",
                     "mask": True}), bytes(44)], "mask: buffer holds 44 bytes, expected 45"),
])
def test_malformed_messages_raise_one_line(parts, message):
    with pytest.raises(DecodeError) as info:
        native.decode(parts)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_frame_disagreeing_with_series_header_is_refused():
    series = _start()
    data = np.zeros((5, 9), "uint32")
    with pytest.raises(DecodeError, match=r"uint32 \(5, 9\) disagrees with the series header \(uint16 \(5, 9\)\)"):
        native.decode(native.encode_image(4, 0, data), series=series)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=0, max_size=4))
def test_random_bytes_never_escape_as_anything_but_decode_error(parts):
    try:
        event = native.decode(parts)
    except DecodeError:
        return
    assert_sound(event)


_FIELDS = st.one_of(st.none(), st.integers(-3, 70000), st.sampled_from([2**31, 2**63 - 1, 2**63, 2**64 - 1]),
                    st.floats(), st.text(max_size=8), st.booleans(), st.lists(st.integers(-2, 12), max_size=3),
                    st.lists(st.floats(), max_size=3),
                    st.sampled_from(["start", "image", "end", "uint16", "uint8", "float32", "raw", "bslz4"]))


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({"v": st.sampled_from([1, 1, 2, None])}, optional={
           k: _FIELDS for k in ["type", "series", "frame", "shape", "dtype", "encoding", "mask", "n_frames",
                                "scan", "timestamp", "count_time", "saturation", "meta"]} | {
           "geometry": st.one_of(_FIELDS, st.dictionaries(
               st.sampled_from(["beam_center", "pixel_size", "distance", "wavelength"]), _FIELDS))}),
       st.binary(max_size=300),
       st.sampled_from([None, SeriesStart(4, (5, 9), "uint16"), SeriesStart(4, (3, 2), "uint8")]))
def test_random_headers_decode_to_what_they_declare_or_raise_decode_error(header, payload, series):
    try:
        event = native.decode([msgpack.packb(header), payload], series=series)
    except DecodeError:
        return
    declared = (header["shape"], header["dtype"]) if isinstance(event, Frame) else None
    assert_sound(event, series, declared=declared)


_DTYPES = st.sampled_from(["uint8", "uint16", "uint32", "int32", "float32"])
_SIDES = st.tuples(st.integers(1, 12), st.integers(1, 12))


@settings(max_examples=300, deadline=None)
@given(_SIDES, _DTYPES, _SIDES, _DTYPES, st.sampled_from(["raw", "bslz4", "lz4"]), st.integers(0, 2**32 - 1))
def test_an_accepted_image_has_its_header_shape_and_dtype(shape, dtype, claimed, claimed_dtype, encoding, seed):
    data = np.random.default_rng(seed).integers(0, 200, shape).astype(dtype)
    parts = native.encode_image(4, 1, data, encoding=encoding)
    header = msgpack.unpackb(parts[0])
    parts[0] = msgpack.packb({**header, "shape": list(claimed), "dtype": claimed_dtype})
    assert_decodes_as_declared(native.decode, parts, data, (claimed, claimed_dtype))
