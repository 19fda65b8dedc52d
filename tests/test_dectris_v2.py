"""DECTRIS Stream v2: real captured messages, conversions, channels, sender variations, malformed CBOR refused."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import cbor2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from checks import assert_decodes_as_declared, assert_sound, pixels
from livediff.errors import DecodeError
from livediff.model import Frame, SeriesEnd, SeriesStart
from livediff.sources import codecs
from livediff.sources.dectris_encoders import StreamV2Encoder
from livediff.sources.dectris_v2 import TYPED_ARRAYS, StreamV2Decoder
from simulators import DiffractionSimulator

DATA = Path(__file__).parent / "data"


def _run(decoder, messages):
    events, series = [], None
    for parts in messages:
        for ev in decoder([memoryview(bytes(p)).toreadonly() for p in parts], series=series):
            series = ev if isinstance(ev, SeriesStart) else series
            events.append(ev)
    return events


def _sim(**kw):
    return DiffractionSimulator(**{"shape": (37, 61), "n_frames": 4, "n_spots": 3, "seed": 12, **kw})


def _series(encoder, sim):
    return [encoder.start(sim.series_start()),
            *[encoder.image(sim.series, i, sim.frame(i)) for i in range(sim.n_frames)], encoder.end(sim.series)]


def test_real_captured_series():
    dec = StreamV2Decoder()
    assert cbor2.loads((DATA / "stream2_start.cbor").read_bytes())["type"] == "start"  # no tag 55799
    assert not isinstance(cbor2.loads((DATA / "stream2_image.cbor").read_bytes()), dict)  # immutable mapping
    assert dec([(DATA / "stream2_start.cbor").read_bytes()]) == []   # waits for the pixel type
    start, frame = dec([(DATA / "stream2_image.cbor").read_bytes()])
    (end,) = dec([(DATA / "stream2_end.cbor").read_bytes()], series=start)
    assert (start.series, start.shape, start.dtype, start.n_frames, start.saturation) == (
        15614, (4362, 4148), "uint16", 1, 21517)
    assert start.mask is None   # the capture's pixel_mask is a 4-byte placeholder
    g = start.geometry
    assert g.beam_center == pytest.approx((2163.621048575148 - 0.5, 2049.3840906675064 - 0.5))
    assert g.pixel_size == (75e-6, 75e-6) and g.wavelength == pytest.approx(0.918381073013)
    assert g.distance == pytest.approx(0.23715919962215962)
    assert start.meta["series_unique_id"] == "01HBV3JPF9T4ZDPADX6EMK6XMZ" and start.meta["channel"] == "threshold_1"
    ins = start.instrument   # what the detector says of itself, typed and kept
    assert (ins.sensor_material, ins.sensor_thickness, ins.description, ins.serial_number) == (
        "Si", 0.00045, "Dectris EIGER2 Si 16M", "E-32-0117")
    assert ins.frame_time == pytest.approx(0.004317572232502031)
    assert ins.goniometer == (("omega", 0.0, 0.1), ("phi", 0.0, 0.0), ("chi", 30.0, 0.0))
    assert ins.rotation == ("omega", 0.0, 0.1)
    assert ins.detector_translation == pytest.approx((0.15370380680006296, 0.1622715786431361, -0.23715919962215962))
    assert frame.index == 0 and frame.payload.encoding == "bslz4" and len(frame.payload.buffer) == 513082
    pixels = frame.decode(codecs.decode_payload)   # as the worker does
    gaps = pixels == 65535
    assert gaps.sum() == 1_253_075 and pixels[~gaps].sum(dtype=np.int64) == 13_712
    assert frame.timestamp == pytest.approx(start.meta["arm_epoch"] + 1.105, abs=0.01)
    assert end == SeriesEnd(15614)


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
@pytest.mark.parametrize("encoding", ["raw", "bslz4", "lz4"])
def test_simulated_series_round_trip(encoding, dtype):
    sim = _sim(dtype=dtype)
    truth = sim.series_start()
    start, *frames, end = _run(StreamV2Decoder(), _series(StreamV2Encoder(encoding=encoding), sim))
    assert (start.series, start.shape, start.dtype, start.n_frames) == (1, (37, 61), dtype, 4)
    np.testing.assert_array_equal(start.mask, truth.mask)
    assert start.geometry.beam_center == pytest.approx(truth.geometry.beam_center, abs=1e-12)
    assert start.geometry.distance == truth.geometry.distance
    assert start.geometry.wavelength == pytest.approx(truth.geometry.wavelength)
    assert isinstance(end, SeriesEnd)
    for i, frame in enumerate(frames):
        assert isinstance(frame, Frame) and frame.index == i
        if encoding == "raw":
            assert frame.payload is None
        else:  # passed on compressed, decoded by the worker
            assert frame.data is None and frame.payload.encoding == encoding
        np.testing.assert_array_equal(pixels(frame), sim.frame(i))


def test_first_channel_by_default_else_the_configured_one():
    sim = _sim(n_frames=2, dtype="uint16")
    messages = _series(StreamV2Encoder(encoding="bslz4", channels=("threshold_1", "threshold_2")), sim)
    first = _run(StreamV2Decoder(), messages)
    second = _run(StreamV2Decoder(channel="threshold_2"), messages)
    assert first[0].meta["channel"] == "threshold_1" and second[0].meta["channel"] == "threshold_2"
    assert second[0].meta["threshold_energy"] == 12000.0
    np.testing.assert_array_equal(pixels(first[1]), sim.frame(0))
    np.testing.assert_array_equal(pixels(second[1]), sim.frame(0) // 2)
    with pytest.raises(DecodeError, match=r"channel 'threshold_3' \(source.channel\) is not one of"):
        StreamV2Decoder(channel="threshold_3")(messages[0])


def _msg(obj, tag=True) -> list[bytes]:
    return [cbor2.dumps(cbor2.CBORTag(55799, obj) if tag else obj)]


def _start(**kw):
    return {"type": "start", "series_id": 3, "series_unique_id": "U3", "channels": ["c"], "image_size_x": 5,
            "image_size_y": 3, "number_of_images": 2, "beam_center_x": 1.0, "beam_center_y": 2.0,
            "future_key": {"x": [1, 2]}, **kw}


def _array(data, tag=69, compress=None):
    payload = data.astype(data.dtype.newbyteorder("<")).tobytes()
    if compress:
        payload = cbor2.CBORTag(56500, [compress, data.itemsize, codecs.encode(data, compress)])
    return cbor2.CBORTag(40, [list(data.shape), cbor2.CBORTag(tag, payload)])


def _image(data=None, index=0, **kw):
    data = np.arange(15, dtype=np.uint16).reshape(3, 5) if data is None else data
    return {"type": "image", "series_id": 3, "series_unique_id": "U3", "image_id": index,
            "data": {"c": _array(data)}, **kw}


def test_conversions_compressed_mask_and_unknown_keys_and_types():
    pixel_mask = np.zeros((3, 5), np.uint32)
    pixel_mask[1, 2], pixel_mask[0, 0] = 2, 1 << 30
    dec = StreamV2Decoder()
    assert dec(_msg(_start(pixel_mask={"c": _array(pixel_mask, tag=70, compress="bslz4")}), tag=False)) == []
    assert dec(_msg({"type": "calibration", "anything": 1})) == []   # Jungfraujoch's extra message types
    start, frame = dec(_msg(_image(start_time=[1, 4], series_date="2024-01-02T03:04:05+00:00")))
    assert start.shape == (3, 5) and start.geometry.beam_center == (1.5, 0.5)
    np.testing.assert_array_equal(start.mask, pixel_mask == 0)
    np.testing.assert_array_equal(frame.data, np.arange(15).reshape(3, 5))
    assert frame.payload is None and frame.timestamp == 1704164645.25


def test_series_without_images_still_starts_and_ends():
    dec = StreamV2Decoder()
    dec(_msg(_start(saturation_value=40000)))
    start, end = dec(_msg({"type": "end", "series_id": 3}))
    assert start.dtype == "uint16" and start.n_frames == 2 and end == SeriesEnd(3)


def test_a_bad_first_image_still_opens_its_series():
    dec = StreamV2Decoder()
    dec(_msg(_start()))
    bad = _image()
    bad["data"] = {"c": cbor2.CBORTag(40, [[3, 5], cbor2.CBORTag(69, cbor2.CBORTag(56500, ["bslz4", 2, bytes(20)]))])}
    start, error = dec(_msg(bad))
    assert isinstance(start, SeriesStart) and isinstance(error, DecodeError) and "bslz4" in str(error)


_OPEN = SeriesStart(3, (3, 5), "uint16", meta={"channel": "c", "series_unique_id": "U3"})


@pytest.mark.parametrize("parts,message", [
    ([b"\xff\x00"], "not a CBOR message"),
    ([cbor2.dumps([1, 2])], "message must be a CBOR map, got list"),
    ([cbor2.dumps({"type": "end", "series_id": 1}), b""], "a message is one part, got 2"),
    (_msg({"type": 7}), "'type' must be a string"),
    (_msg({"type": "end", "series_id": "1"}), "'series_id' must be an integer >= 0"),
    (_msg(_start(image_size_x=0)), "'image_size_x' must be in 1..1048575, got 0"),
    (_msg(_start(channels=[])), "'channels' must be a list of names"),
    (_msg(_start(beam_center_x="middle")), "'beam_center_x' must be a finite number"),
    (_msg(_start(detector_translation=[0.1, 0.2])), "'detector_translation' must be [x, y, z] in m"),
    (_msg(_start(pixel_mask={"c": _array(np.zeros((3, 4), np.uint32), tag=70)})),
     "pixel_mask shape (3, 4) != image shape (3, 5)"),
    (_msg(_image(data=np.zeros((3, 4), np.uint16))), "uint16 (3, 4) disagrees with the series header (uint16 (3, 5))"),
    (_msg({**_image(), "data": {"c": _array(np.zeros((3, 5), np.float64), tag=86)}}), "got tag 86"),
    (_msg({**_image(), "data": {"c": _array(np.zeros((3, 5), np.uint16), tag=65)}}), "little-endian"),
    (_msg({**_image(), "data": {"c": cbor2.CBORTag(40, [[3, 5], cbor2.CBORTag(71, bytes(120))])}}),
     "pixel type uint64"),
    (_msg({**_image(), "data": {"c": cbor2.CBORTag(40, [[3, 5], cbor2.CBORTag(69, bytes(29))])}}),
     "channel 'c': buffer holds 29 bytes, expected 30 for uint16 (3, 5)"),
    (_msg({**_image(), "data": {"c": cbor2.CBORTag(40, [[3, 5], cbor2.CBORTag(69, cbor2.CBORTag(
        56500, ["zstd", 2, b"x"]))])}}), "compression 'zstd' is not supported"),
    (_msg({**_image(), "data": {"c": cbor2.CBORTag(40, [[3, 5], cbor2.CBORTag(69, cbor2.CBORTag(
        56500, ["bslz4", 4, codecs.encode_bslz4(np.zeros((3, 5), np.uint16))]))])}}), "bslz4 element size 4 != 2"),
    (_msg({**_image(), "data": {"c": b"pixels"}}), "expected a tag-40 multi-dimensional array, got bytes of 6"),
    (_msg({**_image(), "data": []}), "'data' must be a map of channel -> array"),
    (_msg({**_image(), "series_unique_id": "U4"}), "series unique id 'U4', the open series is 'U3'"),
])
def test_malformed_messages_raise_one_line(parts, message):
    with pytest.raises(DecodeError) as info:
        StreamV2Decoder()(parts, series=_OPEN)
    assert message in str(info.value) and "\n" not in str(info.value)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=80), min_size=0, max_size=3))
def test_random_bytes_only_raise_decode_error(parts):
    try:
        events = StreamV2Decoder()(parts, series=_OPEN)
    except DecodeError:
        return
    assert_sound(events, _OPEN)


_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-2, 2**70), st.sampled_from([2**64, 10**400]), st.floats(),
                    st.text(max_size=5),
                    st.binary(max_size=24), st.sampled_from(["start", "image", "end", "c", "bslz4", "lz4"]))
_CBOR = st.recursive(_LEAVES, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.sampled_from(["type", "series_id", "image_id", "data", "c", "channels", "image_size_x",
                                     "image_size_y", "pixel_mask", "start_time", "series_date", "beam_center_x",
                                     "number_of_images", "detector_translation", "series_unique_id"]),
                    inner, max_size=5),
    st.builds(cbor2.CBORTag, st.sampled_from([40, 64, 69, 70, 85, 56500, 0, 1, 2, 30, 55799]), inner)),
    max_leaves=12)


@settings(max_examples=400, deadline=None)
@given(_CBOR, st.booleans())
def test_random_cbor_only_raises_decode_error(obj, started):
    dec = StreamV2Decoder()
    if started:
        dec(_msg(_start()))
    try:
        parts = [cbor2.dumps(obj)]
    except (ValueError, TypeError, OverflowError, cbor2.CBOREncodeError):
        return   # not encodable: nothing to send
    try:
        out = dec(parts, series=_OPEN if started else None)
    except DecodeError:
        return
    assert isinstance(out, list) and all(isinstance(e, (SeriesStart, Frame, SeriesEnd, DecodeError)) for e in out)
    assert_sound(out, _OPEN if started else None, declared=_declared(obj))


def test_decoded_messages_are_read_not_mutated():
    msg = cbor2.loads(cbor2.dumps(cbor2.CBORTag(55799, _image())))
    assert isinstance(msg, Mapping) and not isinstance(msg, dict)
    dec = StreamV2Decoder()
    dec(_msg(_start()))
    dec([cbor2.dumps(cbor2.CBORTag(55799, _image()))])


_ENCODER = StreamV2Encoder(encoding="bslz4")
_SIM = _sim(shape=(16, 24), n_frames=1, dtype="uint16", n_spots=1)
_START = _ENCODER.start(_SIM.series_start())[0]
_IMAGE = _ENCODER.image(1, 0, _SIM.frame(0))[0]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(_IMAGE) - 1), st.integers(1, 255)), min_size=1, max_size=4),
       st.integers(1, len(_IMAGE)), st.booleans())
def test_corrupted_real_messages_only_raise_decode_error(flips, cut, start_too):
    image = bytearray(_IMAGE[:cut])
    for at, bits in flips:
        if at < len(image):
            image[at] ^= bits
    dec = StreamV2Decoder()
    series = assert_sound(dec([_START]))
    for message in ([bytes(image)], [_START[:cut]] if start_too else [_START]):
        try:
            events = dec(message)
        except DecodeError:
            continue
        series = assert_sound(events, series)


def _declared(msg):
    """(shape, dtype name) an image message's channel array declares, else None."""
    try:
        array = msg["data"][next(iter(msg["data"]))].value
        return tuple(array[0]), np.dtype(TYPED_ARRAYS[array[1].tag]).name
    except (TypeError, KeyError, AttributeError, IndexError, StopIteration):
        return None


@settings(max_examples=300, deadline=None)
@given(st.tuples(st.integers(1, 12), st.integers(1, 12)), st.sampled_from(["uint16", "uint32"]),
       st.tuples(st.integers(1, 12), st.integers(1, 12)), st.sampled_from([69, 70, 85]),
       st.sampled_from(["raw", "bslz4", "lz4"]), st.integers(0, 2**32 - 1))
def test_an_accepted_image_has_its_declared_shape_and_type(shape, dtype, claimed, tag, encoding, seed):
    data = np.random.default_rng(seed).integers(0, 200, shape).astype(dtype)
    msg = cbor2.loads(StreamV2Encoder(encoding=encoding).image(3, 0, data)[0])
    typed = msg["data"]["threshold_1"].value[1]
    if encoding == "bslz4":   # the element size travels with the blob
        algorithm, _, blob = typed.value.value
        typed = cbor2.CBORTag(tag, cbor2.CBORTag(56500, [algorithm, np.dtype(TYPED_ARRAYS[tag]).itemsize, blob]))
    else:
        typed = cbor2.CBORTag(tag, typed.value)
    msg = {**msg, "data": {"threshold_1": cbor2.CBORTag(40, [list(claimed), typed])}}
    assert_decodes_as_declared(StreamV2Decoder(), [cbor2.dumps(msg)], data, (claimed, np.dtype(TYPED_ARRAYS[tag]).name))
