"""DECTRIS Stream v1: conversions at the edge, sender variations, every malformed message refused clearly."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from checks import assert_decodes_as_declared, assert_sound, pixels
from livediff.errors import DecodeError
from livediff.model import Frame, Geometry, SeriesEnd, SeriesStart
from livediff.sources import codecs
from livediff.sources.dectris_encoders import StreamV1Encoder
from livediff.sources.dectris_v1 import StreamV1Decoder
from simulators import DiffractionSimulator

DATA = Path(__file__).parent / "data"


def _j(obj) -> bytes:
    return json.dumps(obj).encode()


def _sim(**kw) -> DiffractionSimulator:
    return DiffractionSimulator(**{"shape": (37, 61), "n_frames": 4, "n_spots": 3, "seed": 11, "dtype": "uint32",
                                   **kw})


def _run(decoder, messages):
    """Feed messages as a receiver does (read-only buffers, the open series); return every event."""
    events, series = [], None
    for parts in messages:
        out = decoder([memoryview(bytes(p)).toreadonly() for p in parts], series=series)
        for ev in out:
            if isinstance(ev, SeriesStart):
                series = ev
            events.append(ev)
    return events


def _series(encoder, sim):
    return [encoder.start(sim.series_start()),
            *[encoder.image(sim.series, i, sim.frame(i)) for i in range(sim.n_frames)], encoder.end(sim.series)]


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
@pytest.mark.parametrize("encoding", ["raw", "bslz4", "lz4"])
def test_simulated_series_round_trip(encoding, dtype):
    sim = _sim(dtype=dtype)
    truth = sim.series_start()
    events = _run(StreamV1Decoder(), _series(StreamV1Encoder(encoding=encoding), sim))
    start, *frames, end = events
    assert isinstance(start, SeriesStart) and isinstance(end, SeriesEnd) and end.series == sim.series
    assert (start.series, start.shape, start.dtype, start.n_frames) == (1, (37, 61), dtype, sim.n_frames)
    np.testing.assert_array_equal(start.mask, truth.mask)
    assert start.geometry.beam_center == pytest.approx(truth.geometry.beam_center, abs=1e-12)
    assert (start.geometry.pixel_size, start.geometry.distance, start.geometry.wavelength) == (
        truth.geometry.pixel_size, truth.geometry.distance, truth.geometry.wavelength)
    assert start.count_time == truth.count_time
    for i, frame in enumerate(frames):
        assert isinstance(frame, Frame) and frame.index == i
        if encoding == "raw":
            assert frame.payload is None
        else:  # the payload travels on (a bare lz4< block reframed as an HDF5 LZ4 chunk), decoded by the worker
            assert frame.data is None and frame.payload.encoding == encoding
        np.testing.assert_array_equal(pixels(frame), sim.frame(i))
        assert frame.timestamp == pytest.approx(start.meta["series_epoch"], abs=60)


def _header(detail="basic", **config):
    cfg = {"x_pixels_in_detector": 5, "y_pixels_in_detector": 3, "bit_depth_image": 16, "nimages": 4,
           "ntrigger": 2, "beam_center_x": 10.5, "beam_center_y": 20.25, "x_pixel_size": 75e-6,
           "y_pixel_size": 172e-6, "detector_distance": 0.12, "wavelength": 0.98, "count_time": 0.002,
           "countrate_correction_count_cutoff": 31000, "description": "EIGER2 X 4M", **config}
    return [_j({"htype": "dheader-1.0", "series": 7, "header_detail": detail}), _j(cfg)]


def _image(data, frame=0, *, series=7, encoding="<", dtype="uint16", shape=None, size=None, extra=()):
    data = np.ascontiguousarray(data, dtype=dtype)
    blob = {"<": lambda: data.astype(data.dtype.newbyteorder("<")).tobytes(),
            "lz4<": lambda: codecs.encode_lz4_block(data),
            "bs16-lz4<": lambda: codecs.encode_bslz4(data)}[encoding]()
    info = {"htype": "dimage_d-1.0", "shape": shape or [data.shape[1], data.shape[0]], "type": dtype,
            "encoding": encoding, "size": len(blob) if size is None else size}
    return [_j({"htype": "dimage-1.0", "series": series, "frame": frame, "hash": "not-an-md5"}), _j(info), blob,
            _j({"htype": "dconfig-1.0", "start_time": 2_000_000_000, "stop_time": 2_001_000_000,
                "real_time": 1_000_000}), *extra]


def test_conversions_at_the_edge():
    pixel_mask = np.zeros((3, 5), np.uint32)
    pixel_mask[0, 4], pixel_mask[2, 0], pixel_mask[1, 1] = 1, 8, 1 << 31   # gap, dead, "other" bits
    header = [*_header("all"), _j({"htype": "dflatfield-1.0", "shape": [5, 3], "type": "float32"}),
              np.ones((3, 5), "<f4").tobytes(), _j({"htype": "dpixelmask-1.0", "shape": [5, 3], "type": "uint32"}),
              pixel_mask.astype("<u4").tobytes()]
    data = np.arange(15, dtype=np.uint16).reshape(3, 5)  # wire shape [x, y] = [5, 3]
    start, frame = _run(StreamV1Decoder(), [header, _image(data)])
    assert start.shape == (3, 5) and start.dtype == "uint16" and start.n_frames == 8   # nimages x ntrigger
    np.testing.assert_array_equal(start.mask, pixel_mask == 0)
    assert start.geometry == Geometry(beam_center=(19.75, 10.0), pixel_size=(172e-6, 75e-6), distance=0.12,
                                      wavelength=0.98)
    assert start.count_time == 0.002 and start.saturation == 31000
    assert start.instrument.description == "EIGER2 X 4M"
    np.testing.assert_array_equal(start.instrument.pixel_flags, pixel_mask)   # the bits kept as received
    np.testing.assert_array_equal(frame.data, data)
    assert frame.payload is None


def test_header_in_pieces_flatfield_variant_and_appendices():
    dec = StreamV1Decoder()
    first, config = _header("all")
    assert dec([first]) == []
    assert dec([config]) == []   # "all": waits for the flat field and the pixel mask
    assert dec([_j({"htype": "flatfield-1.0", "shape": [5, 3], "type": "float32"}), bytes(60)]) == []
    (start,) = dec([_j({"htype": "dpixelmask-1.0", "shape": [5, 3], "type": "uint32"}), bytes(60),
                    _j({"user": "appendix"})])
    assert start.shape == (3, 5) and start.mask.all()
    assert dec([_j({"htype": "dcountrate_table-1.0", "shape": [2, 2], "type": "float32"}), bytes(16)]) == []
    (frame,) = dec(_image(np.ones((3, 5)), extra=[b"\x00binary appendix"]), series=start)
    assert frame.index == 0


def test_header_detail_none_starts_the_series_with_its_first_image():
    dec = StreamV1Decoder()
    assert dec([_j({"htype": "dheader-1.0", "series": 7, "header_detail": "none"}), _j({"appendix": 1})]) == []
    start, frame = dec(_image(np.full((3, 5), 4), encoding="bs16-lz4<"))
    assert (start.series, start.shape, start.dtype, start.n_frames, start.mask) == (7, (3, 5), "uint16", None, None)
    assert frame.payload.encoding == "bslz4" and pixels(frame).sum() == 60


def test_a_bad_first_image_still_opens_its_series():
    dec = StreamV1Decoder()
    dec([_j({"htype": "dheader-1.0", "series": 7, "header_detail": "none"})])
    parts = _image(np.ones((3, 5)), encoding="bs16-lz4<")
    parts[2] = parts[2][:-3]
    start, error = dec(parts)
    assert isinstance(start, SeriesStart) and isinstance(error, DecodeError)
    assert "frame 0" in str(error)


def test_end_passes_on_a_header_that_saw_no_image():
    dec = StreamV1Decoder()
    assert dec(_header("all")) == []   # no pixel mask yet
    start, end = dec([_j({"htype": "dseries_end-1.0", "series": 7})])
    assert start.shape == (3, 5) and end == SeriesEnd(7)


def test_real_stream1_data_part():
    blob = (DATA / "stream1_frame_bs16-lz4.bin").read_bytes()
    parts = [_j({"htype": "dimage-1.0", "series": 1, "frame": 0, "hash": ""}),
             _j({"htype": "dimage_d-1.0", "shape": [4148, 4362], "type": "uint16", "encoding": "bs16-lz4<",
                 "size": len(blob)}), blob, _j({"htype": "dconfig-1.0", "start_time": 0})]
    (frame,) = StreamV1Decoder()(parts)
    assert frame.payload.buffer == blob and frame.payload.shape == (4362, 4148)
    gaps = pixels(frame) == 65535
    assert gaps.sum() == 1_253_074 and pixels(frame)[~gaps].sum(dtype=np.int64) == 9_876


_ONES = np.ones((3, 5))


@pytest.mark.parametrize("parts,message", [
    ([], "empty message"),
    ([b"\x89PNG"], "part 1 is not a JSON object"),
    ([_j([1, 2])], "part 1 is not a JSON object"),
    ([_j({"htype": "dimage-2.0"})], "unknown htype 'dimage-2.0'"),
    ([_j({"htype": 3})], "'htype' must be a string"),
    ([_j({"htype": "dheader-1.0", "series": 1, "header_detail": "most"})], "header_detail 'most'"),
    ([_j({"htype": "dheader-1.0", "series": -1})], "'series' must be an integer >= 0, got -1"),
    ([_j({"x_pixels_in_detector": 5})], "with no dheader-1.0 before it"),
    ([_j({"htype": "dseries_end-1.0", "series": 1}), b""], "dseries_end-1.0 message needs 1 part, got 2"),
    (_image(_ONES)[:3], "needs 4 parts (5 with an appendix), got 3"),
    (_image(_ONES, shape=[5, 4]), "frame 0: uint16 (4, 5) disagrees with the series header (uint16 (3, 5))"),
    (_image(_ONES, dtype="uint32"), "uint32 (3, 5) disagrees with the series header"),
    (_image(_ONES, size=29), "data part holds 30 bytes, dimage_d-1.0 says size 29"),
    (_image(_ONES, encoding="bs16-lz4<", dtype="uint16")[:1]
     + [_j({"htype": "dimage_d-1.0", "shape": [5, 3], "type": "uint16", "encoding": "bs32-lz4<"}),
        codecs.encode_bslz4(np.ones((3, 5), np.uint16)), _image(_ONES)[3]], "'bs32-lz4<' does not suit type uint16"),
    (_image(_ONES)[:1] + [_j({"htype": "dimage_d-1.0", "shape": [5, 3], "type": "uint16", "encoding": ">"}),
                          bytes(30), _image(_ONES)[3]], "unknown encoding '>'"),
    (_image(_ONES)[:1] + [_j({"htype": "dimage_d-1.0", "shape": [5, 3], "type": "float64", "encoding": "<"}),
                          bytes(120), _image(_ONES)[3]], "type 'float64'"),
    (_image(_ONES)[:3] + [_j({"htype": "dconfig-2.0"})], "part 4 htype 'dconfig-2.0'"),
    (_image(_ONES)[:1] + [_j({"htype": "dimage_d-1.0", "shape": [0, 3], "type": "uint16", "encoding": "<"}),
                          b"", _image(_ONES)[3]], "'shape' must be [x, y] of positive integers"),
])
def test_malformed_messages_raise_one_line(parts, message):
    series = SeriesStart(7, (3, 5), "uint16")
    with pytest.raises(DecodeError) as info:
        StreamV1Decoder()(parts, series=series)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_header_errors():
    with pytest.raises(DecodeError, match=r"pixel mask shape \(3, 4\) != image shape \(3, 5\)"):
        StreamV1Decoder()([*_header("all"), _j({"htype": "dflatfield-1.0", "shape": [5, 3], "type": "float32"}),
                           bytes(60), _j({"htype": "dpixelmask-1.0", "shape": [4, 3], "type": "uint32"}), bytes(48)])
    with pytest.raises(DecodeError, match="pixel_mask: buffer holds 7 bytes, expected 60"):
        StreamV1Decoder()([*_header("all"), _j({"htype": "dpixelmask-1.0", "shape": [5, 3], "type": "uint32"}),
                           bytes(7)])
    with pytest.raises(DecodeError, match="bit_depth_image 12, expected 8, 16 or 32"):
        StreamV1Decoder()(_header(bit_depth_image=12))
    with pytest.raises(DecodeError, match="'beam_center_x' must be a finite number, got nan"):
        StreamV1Decoder()([_header()[0], b'{"x_pixels_in_detector": 5, "y_pixels_in_detector": 3, '
                                         b'"bit_depth_image": 16, "beam_center_x": NaN}'])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=6))
def test_random_bytes_only_raise_decode_error(parts):
    try:
        events = StreamV1Decoder()(parts)
    except DecodeError:
        return
    assert_sound(events)


_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 2**40), st.sampled_from([2**63, 10**400]), st.floats(),
                    st.text(max_size=6),
                    st.lists(st.integers(-2, 9), max_size=3), st.sampled_from(
                        ["dheader-1.0", "dimage-1.0", "dimage_d-1.0", "dconfig-1.0", "dseries_end-1.0",
                         "dpixelmask-1.0", "flatfield-1.0", "all", "none", "basic", "<", "lz4<", "bs16-lz4<",
                         "uint16", "uint32"]))
_KEYS = st.sampled_from(["htype", "series", "frame", "header_detail", "shape", "type", "encoding", "size",
                         "x_pixels_in_detector", "y_pixels_in_detector", "bit_depth_image", "nimages",
                         "beam_center_x", "start_time", "data_collection_date", "nimages", "ntrigger"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.dictionaries(_KEYS, _VALUES, max_size=6).map(_j), st.binary(max_size=40)),
                min_size=1, max_size=6), st.integers(0, 3))
def test_random_json_messages_only_raise_decode_error(parts, pick):
    dec = StreamV1Decoder()
    dec(_header("basic"))
    series = [None, SeriesStart(7, (3, 5), "uint16"), SeriesStart(7, (3, 5), "uint32"), SeriesStart(1, (1, 1), "uint8")]
    try:
        events = dec(parts, series=series[pick])
    except DecodeError:
        return
    declared = None
    if any(isinstance(e, Frame) for e in events):   # an image: part 2 declares [x, y] and the type
        info = json.loads(parts[1])
        declared = ((info["shape"][1], info["shape"][0]), info["type"])
    assert_sound(events, series[pick], declared=declared)


_GARBAGE = st.lists(st.one_of(st.binary(max_size=30), st.dictionaries(_KEYS.filter(lambda k: k != "htype"), _VALUES,
                                                                     max_size=4).map(_j)), min_size=1, max_size=5)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), _GARBAGE), max_size=6))
def test_garbage_between_messages_changes_nothing_else(garbage):
    sim = _sim(n_frames=5)
    messages = _series(StreamV1Encoder(encoding="bslz4"), sim)
    mixed = list(messages)
    for at, parts in sorted(garbage, key=lambda g: -g[0]):
        mixed.insert(at + 1, parts)   # after the header, between frames, before the end
    dec, got, series = StreamV1Decoder(), [], None
    for parts in mixed:
        try:
            out = dec(parts, series=series)
        except DecodeError:
            continue
        for ev in out:
            series = ev if isinstance(ev, SeriesStart) else series
            got.append(ev)
    clean = _run(StreamV1Decoder(), messages)
    assert [type(e).__name__ for e in got] == [type(e).__name__ for e in clean]
    for a, b in zip(got[1:-1], clean[1:-1]):
        np.testing.assert_array_equal(pixels(a), pixels(b))


_V1 = StreamV1Encoder(encoding="bslz4")
_V1_SIM = _sim(shape=(16, 24), n_frames=1, n_spots=1)
_V1_HEADER = _V1.start(_V1_SIM.series_start())
_V1_IMAGE = _V1.image(1, 0, _V1_SIM.frame(0))


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 3), st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=4),
       st.integers(0, 10**6), st.booleans())
def test_corrupted_real_messages_only_raise_decode_error(part, flips, cut, header):
    parts = [bytearray(p) for p in (_V1_HEADER if header else _V1_IMAGE)]
    part %= len(parts)
    for at, bits in flips:
        if parts[part]:
            parts[part][at % len(parts[part])] ^= bits
    del parts[part][cut % (len(parts[part]) + 1):]
    dec = StreamV1Decoder()
    try:
        if not header:
            dec(_V1_HEADER)
        events = dec([bytes(p) for p in parts], series=_V1_SIM.series_start())
    except DecodeError:
        return
    assert_sound(events, _V1_SIM.series_start())


@settings(max_examples=300, deadline=None)
@given(st.tuples(st.integers(1, 12), st.integers(1, 12)), st.sampled_from(["uint8", "uint16", "uint32"]),
       st.tuples(st.integers(1, 12), st.integers(1, 12)), st.sampled_from(["uint8", "uint16", "uint32"]),
       st.sampled_from(["raw", "bslz4", "lz4"]), st.integers(0, 2**32 - 1))
def test_an_accepted_image_has_its_declared_shape_and_type(shape, dtype, claimed, claimed_dtype, encoding, seed):
    data = np.random.default_rng(seed).integers(0, 200, shape).astype(dtype)
    parts = [bytes(p) for p in StreamV1Encoder(encoding=encoding).image(7, 0, data)]
    info = json.loads(parts[1])
    wire_type = {"raw": "<", "lz4": "lz4<"}.get(encoding, f"bs{8 * np.dtype(claimed_dtype).itemsize}-lz4<")
    parts[1] = _j({**info, "shape": [claimed[1], claimed[0]], "type": claimed_dtype, "encoding": wire_type})
    assert_decodes_as_declared(StreamV1Decoder(), parts, data, (claimed, claimed_dtype))


def test_a_bare_lz4_block_is_decoded_by_the_worker_and_garbage_fails_there():
    """A bare ``lz4<`` block has no framing to walk beyond its size bound: garbage of a plausible size
    passes the receiver (reframed as an HDF5 LZ4 chunk) and fails when the worker decodes it."""
    dec = StreamV1Decoder()
    (start,) = dec(_header("basic"))
    parts = _image(_ONES, encoding="lz4<", size=8)[:2] + [b"\x12garbage", _image(_ONES)[3]]
    (frame,) = dec(parts, series=start)
    assert frame.data is None and frame.payload.encoding == "lz4"
    with pytest.raises(DecodeError, match="lz4: corrupt or truncated data"):
        pixels(frame)
    with pytest.raises(DecodeError, match="frame 0: lz4: corrupt or truncated data"):  # too short: refused at once
        dec(_image(_ONES, encoding="lz4<", size=0)[:2] + [b"", _image(_ONES)[3]], series=start)
