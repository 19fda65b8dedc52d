"""Issue 18, sources side: every header field is validated where it enters, and no frame is
allocated or decompressed beyond the configured limits.

Rows of the issue's table reproduced here (each failed before the fix): 1 (native
``geometry`` a string or a list), 2 (``saturation: "lots"``), 5 (a start announcing
100000 x 100000 frames), 8 (``pixel_size: [1e-4]``, a 3-value ``beam_center``), 9 (a
frame number >= 2**63), 10 (a small message decoding to a huge frame).  Each is a
:class:`DecodeError` from its decoder, and in a running service one counted bad message
after which the next good series is complete.
"""
from __future__ import annotations

import asyncio
import json
import math
import struct

import cbor2
import lz4.block
import msgpack
import numpy as np
import pytest

from checks import pixels
from harness import config, running, send_messages
from livediff.errors import DecodeError
from livediff.model import SeriesStart
from livediff.sources import native
from livediff.sources.dectris_v1 import StreamV1Decoder
from livediff.sources.dectris_v2 import StreamV2Decoder
from livediff.sources.fields import Limits
from livediff.sources.sender import ENCODERS, stream_series
from simulators import DiffractionSimulator

_HUGE = [100000, 100000]


def _bslz4_zeros(n_bytes: int, itemsize: int) -> bytes:
    """A valid bitshuffle-LZ4 chunk of ``n_bytes`` zero bytes, about 5 MB per GiB, built without the GiB."""
    block_bytes = 8192
    block = lz4.block.compress(bytes(block_bytes), store_size=False)
    n_blocks, rest = divmod(n_bytes, block_bytes)
    assert rest == 0 and block_bytes % (8 * itemsize) == 0
    return struct.pack(">QI", n_bytes, block_bytes) + (struct.pack(">I", len(block)) + block) * n_blocks


# ---------------------------------------------------------------------- native
def _start(**fields) -> list[bytes]:
    header = {"v": 1, "type": "start", "series": 9, "shape": [5, 9], "dtype": "uint16", "n_frames": 3,
              "mask": False, "geometry": {"beam_center": [2.0, 4.5], "pixel_size": [75e-6, 75e-6],
                                          "distance": 0.1, "wavelength": 1.0}, **fields}
    return [msgpack.packb(header)]


def _image(blob: bytes = bytes(90), **fields) -> list[bytes]:
    header = {"v": 1, "type": "image", "series": 9, "frame": 0, "shape": [5, 9], "dtype": "uint16",
              "encoding": "raw", "timestamp": 1.5, **fields}
    return [msgpack.packb(header), blob]


_GEOMETRY = {"beam_center": [2.0, 4.5], "pixel_size": [75e-6, 75e-6], "distance": 0.1, "wavelength": 1.0}

#: (row of the issue, message, what the refusal says)
NATIVE_BAD = [
    (1, _start(geometry="on the bench"), "'geometry' must be a map"),
    (1, _start(geometry=[1, 2]), "'geometry' must be a map"),
    (1, _start(geometry={**_GEOMETRY, "beam_center": "middle"}), "'beam_center' must be 2 finite numbers"),
    (2, _start(saturation="lots"), "'saturation' must be a finite number"),
    (2, _start(saturation=[1]), "'saturation' must be a finite number"),
    (5, _start(shape=_HUGE), "more than source.max_frame_pixels"),
    (5, _start(scan=[100000, 100000]), "'scan' of 10000000000 positions"),
    (8, _start(geometry={**_GEOMETRY, "pixel_size": [1e-4]}), "'pixel_size' must be 2 positive finite numbers"),
    (8, _start(geometry={**_GEOMETRY, "pixel_size": [0.0, 1e-4]}), "'pixel_size' must be 2 positive finite"),
    (8, _start(geometry={**_GEOMETRY, "beam_center": [1.0, 2.0, 3.0]}), "'beam_center' must be 2 finite numbers"),
    (8, _start(geometry={**_GEOMETRY, "beam_center": [math.nan, 2.0]}), "'beam_center' must be 2 finite numbers"),
    (8, _start(geometry={**_GEOMETRY, "distance": -0.1}), "'distance' must be a positive finite number"),
    (8, _start(geometry={**_GEOMETRY, "wavelength": "short"}), "'wavelength' must be a positive finite number"),
    (8, _start(scan=[0, 3]), "'scan' must be [rows, cols] of positive integers"),
    (8, _start(scan="raster"), "'scan' must be [rows, cols] of positive integers"),
    (8, _start(count_time=-1.0), "'count_time' must be a finite number >= 0"),
    (8, _start(meta="notes"), "'meta' must be a map"),
    (8, _start(meta={1: "x"}), "'meta' keys must be strings"),
    (8, _start(mask="yes"), "'mask' must be true or false"),
    (9, _start(n_frames=2**63), "'n_frames' must be"),
    (9, _start(n_frames=2**64 - 1), "'n_frames' must be"),
    (9, _start(series=2**64 - 1), "'series' must be an integer"),
    (9, _image(frame=2**63), "'frame' must be"),
    (9, _image(frame=2**64 - 1), "'frame' must be"),
    (9, _image(frame=2**63 - 1), "'frame' must be"),
    (10, _image(_bslz4_zeros(16384 * 8192 * 4, 4), shape=[16384, 8192], dtype="uint32", encoding="bslz4"),
     "more than source.max_frame_pixels"),
    (10, _image(b"\x00" * 60, shape=_HUGE, dtype="uint32", encoding="bslz4"), "more than source.max_frame_pixels"),
    (8, _image(timestamp="noon"), "'timestamp' must be a finite number"),
]


@pytest.mark.parametrize("row,parts,message", NATIVE_BAD, ids=[f"row{r}-{m[:24]}" for r, _, m in NATIVE_BAD])
def test_native_bad_header_is_a_decode_error(row, parts, message):
    with pytest.raises(DecodeError) as info:
        native.decode(parts)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_native_good_header_still_decodes():
    start = native.decode(_start(scan=[1, 3], count_time=0.01, saturation=4000, meta={"a": [1, {"b": None}]}))
    assert isinstance(start, SeriesStart) and start.geometry.pixel_size == (75e-6, 75e-6)
    assert start.saturation == 4000 and start.meta == {"a": [1, {"b": None}]} and start.scan.shape == (1, 3)
    assert native.decode(_start(geometry=None, saturation=None, n_frames=None)).geometry.beam_center is None


# ---------------------------------------------------------------------- DECTRIS Stream v1
def _j(obj) -> bytes:
    return json.dumps(obj).encode()


def _v1_header(**config) -> list[bytes]:
    cfg = {"x_pixels_in_detector": 9, "y_pixels_in_detector": 5, "bit_depth_image": 16, "nimages": 3,
           "x_pixel_size": 75e-6, "y_pixel_size": 75e-6, "detector_distance": 0.1, "wavelength": 1.0, **config}
    return [_j({"htype": "dheader-1.0", "series": 9, "header_detail": "basic"}), _j(cfg)]


def _v1_image(shape, dtype, encoding, blob) -> list[bytes]:
    return [_j({"htype": "dimage-1.0", "series": 9, "frame": 0}),
            _j({"htype": "dimage_d-1.0", "shape": shape, "type": dtype, "encoding": encoding, "size": len(blob)}),
            blob, _j({"htype": "dconfig-1.0"})]


V1_BAD = [
    (5, _v1_header(x_pixels_in_detector=100000, y_pixels_in_detector=100000), "more than source.max_frame_pixels"),
    (8, _v1_header(x_pixel_size=0.0), "'x_pixel_size' must be a positive finite number"),
    (8, _v1_header(count_time=-0.5), "'count_time' must be a finite number >= 0"),
    (10, _v1_image(_HUGE, "uint32", "bs32-lz4<", b"\x00" * 60), "more than source.max_frame_pixels"),
    (10, _v1_image([8192, 16384], "uint32", "bs32-lz4<", _bslz4_zeros(16384 * 8192 * 4, 4)),
     "more than source.max_frame_pixels"),
    (10, _v1_image([40000, 30000], "uint32", "lz4<", b"\x00" * 60), "more than source.max_frame_pixels"),
]


@pytest.mark.parametrize("row,parts,message", V1_BAD, ids=[f"row{r}-{m[:24]}" for r, _, m in V1_BAD])
def test_stream1_bad_header_is_a_decode_error(row, parts, message):
    with pytest.raises(DecodeError) as info:
        StreamV1Decoder()(parts)
    assert message in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------------- DECTRIS Stream v2
def _v2_start(**fields) -> list[bytes]:
    return [cbor2.dumps({"type": "start", "series_id": 9, "channels": ["c"], "image_size_x": 9, "image_size_y": 5,
                         "number_of_images": 3, "pixel_size_x": 75e-6, "pixel_size_y": 75e-6, **fields})]


def _v2_image(dims, tag, payload) -> list[bytes]:
    return [cbor2.dumps({"type": "image", "series_id": 9, "image_id": 0,
                         "data": {"c": cbor2.CBORTag(40, [dims, cbor2.CBORTag(tag, payload)])}})]


V2_BAD = [
    (5, _v2_start(image_size_x=100000, image_size_y=100000), "more than source.max_frame_pixels"),
    (8, _v2_start(pixel_size_x=-75e-6), "'pixel_size_x' must be a positive finite number"),
    (8, _v2_start(count_time=-1), "'count_time' must be a finite number >= 0"),
    (10, _v2_image(_HUGE, 70, cbor2.CBORTag(56500, ["bslz4", 4, b"\x00" * 60])), "more than source.max_frame_pixels"),
    (10, _v2_image([16384, 8192], 70, cbor2.CBORTag(56500, ["bslz4", 4, _bslz4_zeros(16384 * 8192 * 4, 4)])),
     "more than source.max_frame_pixels"),
]


@pytest.mark.parametrize("row,parts,message", V2_BAD, ids=[f"row{r}-{m[:24]}" for r, _, m in V2_BAD])
def test_stream2_bad_header_is_a_decode_error(row, parts, message):
    with pytest.raises(DecodeError) as info:
        StreamV2Decoder()(parts)
    assert message in str(info.value) and "\n" not in str(info.value)


_SMALL = Limits(max_pixels=1 << 20, max_bytes=1 << 20)   # 1 Mpixel, 1 MiB
_2MIB = (1024, 512)   # uint32: within the pixel limit, twice the byte limit


def test_byte_limit_is_checked_from_the_header_of_every_protocol():
    with pytest.raises(DecodeError, match=r"native: start of series 9 refused: uint32 frames of 1024 x 512 decode "
                                          r"to 2 MiB, more than source.max_frame_mb = 1"):
        native.decode(_start(shape=list(_2MIB), dtype="uint32"), limits=_SMALL)
    with pytest.raises(DecodeError, match="frame 0: uint32 frames of 1024 x 512 decode to 2 MiB"):
        native.decode(_image(b"\x00" * 60, shape=list(_2MIB), dtype="uint32", encoding="bslz4"), limits=_SMALL)
    native.decode(_start(shape=list(_2MIB), dtype="uint16"), limits=_SMALL)   # 1 MiB: not more
    with pytest.raises(DecodeError, match="dectris-stream1: series 9 refused: .* more than source.max_frame_mb"):
        StreamV1Decoder(limits=_SMALL)(_v1_header(x_pixels_in_detector=512, y_pixels_in_detector=1024,
                                                  bit_depth_image=32))
    with pytest.raises(DecodeError, match="frame 0: .* more than source.max_frame_mb"):
        StreamV1Decoder(limits=_SMALL)(_v1_image([512, 1024], "uint32", "lz4<", b"\x00" * 60))


def test_stream2_start_within_pixels_but_over_bytes_is_refused_with_its_first_image():
    dec = StreamV2Decoder(limits=_SMALL)
    assert dec(_v2_start(image_size_x=_2MIB[1], image_size_y=_2MIB[0])) == []   # the pixel type decides
    with pytest.raises(DecodeError, match="series 9 refused: uint32 frames of 1024 x 512 decode to 2 MiB"):
        dec(_v2_image(list(_2MIB), 70, cbor2.CBORTag(56500, ["bslz4", 4, b"\x00" * 60])))
    with pytest.raises(DecodeError, match="frame 1: channel 'c': uint32 frames of 1024 x 512 decode to 2 MiB"):
        dec([cbor2.dumps({"type": "image", "series_id": 9, "image_id": 1, "data": {"c": cbor2.CBORTag(
            40, [list(_2MIB), cbor2.CBORTag(70, cbor2.CBORTag(56500, ["bslz4", 4, b"\x00" * 60]))])}})])
    (end,) = dec([cbor2.dumps({"type": "end", "series_id": 9})])   # its start was dropped: only the end
    assert end.series == 9


# ---------------------------------------------------------------------- the service survives each
def _sim() -> DiffractionSimulator:
    return DiffractionSimulator(shape=(24, 30), n_frames=4, n_spots=3, seed=5, dtype="uint16")


_BAD = {"native": [p for _, p, _ in NATIVE_BAD], "dectris-stream1": [p for _, p, _ in V1_BAD],
        "dectris-stream2": [p for _, p, _ in V2_BAD]}


async def received(service, n: int, timeout: float = 10.0) -> None:
    """Wait until the service's receiver counted ``n`` messages (before a second sender starts: two
    senders' messages may interleave)."""
    async def wait() -> None:
        while service.receiver.messages < n:
            await asyncio.sleep(0.01)
    await asyncio.wait_for(wait(), timeout)


@pytest.mark.parametrize("protocol", ["native", "dectris-stream1", "dectris-stream2"])
async def test_service_counts_each_bad_header_and_the_next_series_is_complete(tmp_path, protocol):
    sim = _sim()
    cfg = config(tmp_path, source={"protocol": protocol, "endpoint": "tcp://127.0.0.1:*"})
    bad = _BAD[protocol]
    async with running(cfg) as (service, sub):
        endpoint = service.receiver.endpoint_bound
        await asyncio.to_thread(send_messages, endpoint, bad)
        await received(service, len(bad))
        await asyncio.to_thread(stream_series, sim, endpoint, protocol=protocol)
        end = await sub.wait_for(lambda t, m: t == "series" and m["type"] == "end", timeout=20)
        receiver = service.receiver
        assert receiver.messages == len(bad) + sim.n_frames + 2
        assert receiver.bad == len(bad)
    assert end["series"] == sim.series and end["reason"] == "end"
    assert end["received"] == end["processed"] == end["expected"] == sim.n_frames
    assert end["bad"] == end["lost"] == 0


def test_encoders_still_round_trip_through_validation():
    sim = _sim()
    for protocol in ("native", "dectris-stream1", "dectris-stream2"):
        encoder = ENCODERS[protocol](encoding="bslz4")
        decoder = {"native": lambda: native.decode, "dectris-stream1": StreamV1Decoder,
                   "dectris-stream2": StreamV2Decoder}[protocol]()
        events, series = [], None
        for parts in [encoder.start(sim.series_start()), encoder.image(sim.series, 0, sim.frame(0)),
                      encoder.end(sim.series)]:
            out = decoder(parts, series=series)
            for ev in out if isinstance(out, list) else [out]:
                series = ev if isinstance(ev, SeriesStart) else series
                events.append(ev)
        assert [type(e).__name__ for e in events] == ["SeriesStart", "Frame", "SeriesEnd"], protocol
        np.testing.assert_array_equal(pixels(events[1]), sim.frame(0))  # decoded as the worker does
