"""End to end on loopback: one simulated series in every protocol and encoding -> identical HDF5 results;
garbage between good frames is counted, never fatal, never miscounted."""
from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import cbor2
import h5py
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import config, running
from livediff.sources.sender import ENCODERS, stream_series
from simulators import DiffractionSimulator

PROTOCOLS = ["native", "dectris-stream1", "dectris-stream2"]
_TIMING = ("timestamp", "received", "latency_s")   # wall-clock columns, different on every run


def _sim(**kw) -> DiffractionSimulator:
    return DiffractionSimulator(**{"shape": (48, 70), "n_frames": 12, "n_spots": 5, "seed": 21, "dtype": "uint32",
                                   **kw})


def _read(path: str) -> tuple[np.ndarray, np.ndarray, np.void]:
    with h5py.File(path, "r") as f:
        return f["entry/livediff/frames"][:], f["entry/data/data"][:], f["entry/livediff/summary"][0]


async def _serve(tmp: Path, protocol: str, send) -> tuple[dict, np.ndarray, np.ndarray, np.void]:
    cfg = config(tmp, source={"protocol": protocol, "endpoint": "tcp://127.0.0.1:*"}, output={"save_raw": True})
    async with running(cfg) as (service, sub):   # the OS picks the port: no race with other test runs
        await asyncio.to_thread(send, service.receiver.endpoint_bound)
        end = await sub.wait_for(lambda t, m: t == "series" and m["type"] == "end")
    return (end, *_read(end["file"]))


async def test_every_protocol_and_encoding_gives_identical_files(tmp_path):
    sim = _sim()
    mask = sim.detector_mask
    tables, instrument = {}, {}
    for protocol in PROTOCOLS:
        for encoding in ("raw", "bslz4", "lz4"):
            run = tmp_path / f"{protocol}-{encoding}"
            end, rows, raw, summary = await _serve(
                run, protocol, lambda ep: stream_series(sim, ep, protocol=protocol, encoding=encoding))
            assert end["received"] == end["processed"] == end["expected"] == sim.n_frames, (protocol, encoding)
            assert end["bad"] == end["lost"] == 0 and summary["complete"] == 1
            np.testing.assert_array_equal(raw, [sim.frame(i) for i in range(sim.n_frames)])
            with h5py.File(end["file"], "r") as f:
                np.testing.assert_array_equal(f["entry/instrument/detector/pixel_mask"][:] == 0, mask)
                instrument[protocol, encoding] = {name: f["entry/instrument"][name][()] for name in (
                    "detector/beam_center_x", "detector/beam_center_y", "detector/x_pixel_size",
                    "detector/distance", "detector/count_time", "beam/incident_wavelength")}
            tables[protocol, encoding] = rows
    reference = tables["native", "raw"]
    np.testing.assert_array_equal(reference["frame"], np.arange(sim.n_frames))
    np.testing.assert_array_equal(reference["sum"], [sim.frame(i)[mask].sum(dtype=np.int64)
                                                     for i in range(sim.n_frames)])
    row, col = sim.series_start().geometry.beam_center
    assert instrument["native", "raw"]["detector/beam_center_x"] == col + 0.5   # NXmx: from the pixel corner
    for key, values in instrument.items():
        assert values == pytest.approx(instrument["native", "raw"], rel=1e-12), key
    columns = [c for c in reference.dtype.names if c not in _TIMING]
    for key, rows in tables.items():
        for column in columns:
            np.testing.assert_array_equal(rows[column], reference[column], err_msg=f"{key} {column}")


def _garbage(protocol: str, sim: DiffractionSimulator) -> list[list[bytes]]:
    """Malformed messages of every kind the protocol can receive."""
    encoder = ENCODERS[protocol](encoding="bslz4")
    good = [bytes(p) for p in encoder.image(sim.series, 0, sim.frame(0))]
    if protocol == "native":
        return [[b"\xc1 not msgpack", b""], [good[0]], [good[0], good[1][:-5]], [good[0], good[1][:12] + good[1]]]
    if protocol == "dectris-stream1":
        wrong_shape = good[1].replace(b"[70, 48]", b"[70, 47]")
        return [[b"not json"], good[:3], [good[0], good[1], good[2][:-7], good[3]], [good[0], wrong_shape, *good[2:]],
                [b'{"htype": "dimage-9.0"}'], [b'{"x_pixels_in_detector": 3}']]
    msg = cbor2.loads(good[0])
    array = msg["data"]["threshold_1"]
    algorithm, element, blob = array.value[1].value.value
    corrupt = cbor2.CBORTag(40, [[48, 70], cbor2.CBORTag(70, cbor2.CBORTag(56500, [algorithm, element, blob[:-9]]))])
    return [[b"\xff\xfe garbage"], [good[0], good[0]], [cbor2.dumps([1, 2, 3])],
            [cbor2.dumps({**msg, "data": {"threshold_1": corrupt}})],
            [cbor2.dumps({**msg, "data": {"threshold_1": cbor2.CBORTag(40, [[47, 70], array.value[1]])}})]]


def _send_with_garbage(endpoint: str, protocol: str, sim: DiffractionSimulator, garbage, positions) -> None:
    encoder = ENCODERS[protocol](encoding="bslz4")
    start = encoder.start(sim.series_start())   # first: it arms the series (v2 unique id, frame times)
    messages = [encoder.image(sim.series, i, sim.frame(i)) for i in range(sim.n_frames)]
    for at, parts in sorted(zip(positions, garbage), key=lambda p: -p[0]):
        messages.insert(at, parts)
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 2000)
    push.connect(endpoint)
    try:
        for parts in [start, *messages, encoder.end(sim.series)]:
            push.send_multipart(parts)
    finally:
        push.close()
        ctx.term()


@pytest.mark.parametrize("protocol", PROTOCOLS)
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_garbage_between_good_frames_is_counted_and_skipped(protocol, data):
    sim = _sim(n_frames=8, dtype="uint32")
    garbage = data.draw(st.lists(st.sampled_from(_garbage(protocol, sim)), min_size=1, max_size=6))
    extra = data.draw(st.lists(st.binary(min_size=1, max_size=40).map(lambda b: [b"\x00\xff" + b]), max_size=3))
    garbage = garbage + extra
    positions = data.draw(st.lists(st.integers(1, sim.n_frames), min_size=len(garbage), max_size=len(garbage)))
    with tempfile.TemporaryDirectory() as tmp:
        end, rows, raw, summary = asyncio.run(_serve(
            Path(tmp), protocol, lambda ep: _send_with_garbage(ep, protocol, sim, garbage, positions)))
    assert end["bad"] == len(garbage)
    assert end["received"] == end["processed"] == sim.n_frames and end["lost"] == 0 and end["reason"] == "end"
    assert summary["bad"] == len(garbage) and summary["complete"] == 1
    mask = sim.detector_mask
    np.testing.assert_array_equal(rows["sum"], [sim.frame(i)[mask].sum(dtype=np.int64) for i in range(sim.n_frames)])
    np.testing.assert_array_equal(raw, [sim.frame(i) for i in range(sim.n_frames)])
