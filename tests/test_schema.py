"""The wire format: every topic round-trips, arrays keep dtype and shape, bad input is refused."""
from __future__ import annotations

import msgpack
import numpy as np
import pytest

from livediff import schema
from livediff.model import Geometry, SeriesStart


@pytest.mark.parametrize("dtype", ["<f4", "<f8", "<u2", "<u4", "<i8", "|b1"])
def test_array_round_trip(dtype):
    a = np.random.default_rng(1).integers(0, 2, (5, 7)).astype(dtype)
    b = schema.decode_array(schema.encode_array(a))
    assert b.dtype == a.dtype and b.shape == a.shape
    np.testing.assert_array_equal(a, b)


def test_big_endian_and_non_contiguous_arrays_travel_little_endian():
    a = np.arange(24, dtype=">f8").reshape(4, 6)[:, ::2]
    enc = schema.encode_array(a)
    assert enc["dtype"] == "<f8" and enc["shape"] == [4, 3]
    np.testing.assert_array_equal(schema.decode_array(enc), a)


def test_array_with_wrong_byte_count_is_refused():
    enc = schema.encode_array(np.zeros((3, 3), "<f4"))
    enc["data"] = enc["data"][:-1]
    with pytest.raises(schema.SchemaError, match=r"needs 36 bytes, got 35"):
        schema.decode_array(enc)


@pytest.mark.parametrize("topic,type_", [(t, ty) for t, types in schema.TOPICS.items() for ty in types])
def test_every_topic_round_trips(topic, type_):
    body = {"series": 3, "frame": 7, "value": 1.5, "image": np.eye(3, dtype="f4"), "nested": {"x": (1, 2)}}
    got_topic, msg = schema.decode(schema.encode(topic, type_, body))
    assert got_topic == topic and msg["v"] == schema.VERSION and msg["type"] == type_
    assert msg["series"] == 3 and msg["frame"] == 7 and msg["value"] == 1.5 and msg["nested"] == {"x": [1, 2]}
    np.testing.assert_array_equal(msg["image"], np.eye(3, dtype="f4"))


def test_unknown_topic_or_type_is_a_programming_error():
    with pytest.raises(schema.SchemaError, match="topic 'stats' carries no message type 'start'"):
        schema.encode("stats", "start", {})


def test_decode_refuses_other_versions_and_garbage():
    parts = schema.encode("status", "heartbeat", {})
    body = msgpack.unpackb(parts[1])
    with pytest.raises(schema.SchemaError, match="schema version 99"):
        schema.decode([parts[0], msgpack.packb({**body, "v": 99})])
    with pytest.raises(schema.SchemaError, match="not msgpack"):
        schema.decode([b"stats", b"\xc1"])
    with pytest.raises(schema.SchemaError, match="expected 2 parts"):
        schema.decode([b"stats"])


def test_series_start_body_carries_geometry():
    start = SeriesStart(2, (10, 12), "uint16", n_frames=5,
                        geometry=Geometry(beam_center=(4.5, 6.0), pixel_size=(75e-6, 75e-6)))
    _, msg = schema.decode(schema.encode("series", "start", schema.series_start(start, config_hash="ab",
                                                                                  file=None)))
    assert msg["shape"] == [10, 12] and msg["geometry"]["beam_center"] == [4.5, 6.0]
    assert msg["config_hash"] == "ab" and msg["n_frames"] == 5
