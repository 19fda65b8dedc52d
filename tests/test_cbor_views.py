"""``livediff.sources.cbor_views``: cbor2's values, with large byte strings as views of the message.

The reference is ``cbor2.loads`` itself, on real DECTRIS Stream v2 messages, on every message
our encoder writes, on random CBOR and on corrupted messages."""
from __future__ import annotations

import datetime
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cbor2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from livediff.sources import cbor_views
from livediff.sources.dectris_encoders import StreamV2Encoder
from simulators import DiffractionSimulator

DATA = Path(__file__).parent / "data"


def _plain(value: Any) -> Any:
    """``value`` with its types spelled out, memoryviews read as the bytes they show."""
    if isinstance(value, memoryview):
        return "bytes", bytes(value)
    if isinstance(value, cbor2.CBORTag):
        return "tag", value.tag, _plain(value.value)
    if isinstance(value, Mapping):
        return type(value).__name__, tuple((_plain(k), _plain(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value).__name__, tuple(_plain(v) for v in value)
    if isinstance(value, float) and value != value:
        return "nan"
    return type(value).__name__, value


def _same_as_cbor2(message: bytes) -> Any:
    ours = cbor_views.loads(message)
    assert _plain(ours) == _plain(cbor2.loads(message))
    return ours


def _views(value: Any) -> list[memoryview]:
    if isinstance(value, memoryview):
        return [value]
    if isinstance(value, cbor2.CBORTag):
        return _views(value.value)
    if isinstance(value, Mapping):
        return [v for item in value.values() for v in _views(item)]
    if isinstance(value, (list, tuple)):
        return [v for item in value for v in _views(item)]
    return []


def _encoder_messages() -> list[bytes]:
    sim = DiffractionSimulator(shape=(70, 90), dtype="uint32", n_frames=2, n_spots=5)
    messages = []
    for encoding in ("raw", "bslz4", "lz4"):
        encoder = StreamV2Encoder(encoding=encoding)
        messages += encoder.start(sim.series_start())
        for i in range(2):
            messages += encoder.image(1, i, sim.frame(i))
        messages += encoder.end(1)
    return messages


@pytest.mark.parametrize("name", ["stream2_start.cbor", "stream2_image.cbor", "stream2_end.cbor"])
def test_real_stream_v2_messages_decode_as_cbor2_decodes_them(name):
    message = (DATA / name).read_bytes()
    value = _same_as_cbor2(message)
    if name == "stream2_image.cbor":
        (blob,) = _views(value)  # the 513,082 bytes of bslz4: a view of the message, not a copy
        assert blob.nbytes == 513082
        assert np.shares_memory(np.frombuffer(blob, np.uint8), np.frombuffer(message, np.uint8))


def test_every_message_our_encoder_writes_decodes_as_cbor2_decodes_it():
    messages = _encoder_messages()
    values = [_same_as_cbor2(m) for m in messages]
    assert sum(len(_views(v)) for v in values) >= 6  # the frames' pixels (and the start's arrays) as views
    assert any(isinstance(v.get("series_date"), datetime.datetime) for v in values)


_leaf = (st.integers(-2**64 + 1, 2**64 - 1) | st.floats(allow_nan=True) | st.text(max_size=8) | st.booleans()
         | st.none() | st.binary(max_size=16) | st.binary(min_size=cbor_views.VIEW_BYTES,
                                                         max_size=cbor_views.VIEW_BYTES + 40)
         | st.datetimes(timezones=st.just(datetime.timezone.utc)))
_tags = st.sampled_from([40, 56500, 64, 70, 55799, 1000, 4000])  # tags cbor2 takes with any content


def _tagged(children):  # noqa: ANN001, ANN202
    return st.builds(cbor2.CBORTag, _tags, children)


_values = st.recursive(_leaf, lambda children: st.lists(children, max_size=4)
                       | st.dictionaries(st.text(max_size=4) | st.integers(-5, 5), children, max_size=4)
                       | _tagged(children), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(_values)
def test_random_cbor_decodes_as_cbor2_decodes_it(value):
    _same_as_cbor2(cbor2.dumps(value))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_cut_or_corrupted_message_fails_or_decodes_as_cbor2_does(data):
    message = bytearray(data.draw(st.sampled_from(_SMALL_MESSAGES)))
    if data.draw(st.booleans()):
        message = message[:data.draw(st.integers(0, len(message) - 1))]
    else:
        for _ in range(data.draw(st.integers(1, 4))):
            message[data.draw(st.integers(0, len(message) - 1))] = data.draw(st.integers(0, 255))
    message = bytes(message)
    try:
        expected = cbor2.loads(message)
    except Exception as exc:  # noqa: BLE001 - whatever cbor2 raises, ours must raise the same
        with pytest.raises(type(exc)):
            cbor_views.loads(message)
    else:
        assert _plain(cbor_views.loads(message)) == _plain(expected)


_SMALL_MESSAGES = [m for m in _encoder_messages() if len(m) < 40_000]


def test_nesting_deeper_than_it_parses_goes_to_cbor2():
    deep: Any = [b"x" * cbor_views.VIEW_BYTES]
    for _ in range(cbor_views.MAX_DEPTH + 4):
        deep = [deep]
    value = _same_as_cbor2(cbor2.dumps(deep))
    assert _views(value) == []  # cbor2's bytes: the whole message went to cbor2
