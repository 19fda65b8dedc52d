"""End to end on loopback: simulator -> service -> PUB messages + HDF5 file."""
from __future__ import annotations

import asyncio
import logging
import threading

import h5py
import msgpack
import numpy as np
import zmq

from harness import config, running
from livediff.client import Subscriber
from livediff.sources import native
from livediff.sources.sender import stream_series
from simulators import DiffractionSimulator


def _sim(**kw) -> DiffractionSimulator:
    return DiffractionSimulator(**{"shape": (48, 70), "n_frames": 25, "n_spots": 5, **kw})


async def test_simulated_series_reaches_subscriber_and_file(tmp_path):
    sim = _sim(dtype="uint32", seed=3)
    cfg = config(tmp_path, pipeline={"workers": 2})
    async with running(cfg) as (service, sub):
        sent = await asyncio.to_thread(stream_series, sim, cfg.source.endpoint)
        end = await sub.wait_for(lambda t, m: t == "series" and m["type"] == "end")
    assert sent == sim.n_frames
    assert end["expected"] == end["received"] == end["processed"] == sim.n_frames
    assert end["dropped"] == end["lost"] == end["bad"] == end["failed"] == 0

    start = sub.of("series")[0]
    assert start["type"] == "start" and start["shape"] == [48, 70] and start["dtype"] == "uint32"
    mask = sim.detector_mask
    expected_sums = [float(sim.frame(i)[mask].sum(dtype=np.int64)) for i in range(sim.n_frames)]

    stats = sorted(sub.of("stats"), key=lambda m: m["frame"])
    assert [m["frame"] for m in stats] == list(range(sim.n_frames))
    assert [m["sum"] for m in stats] == expected_sums
    assert all(m["n_valid"] == mask.sum() for m in stats)

    with h5py.File(end["file"], "r") as f:
        rows = f["entry/livediff/frames"][:]
        summary = f["entry/livediff/summary"][0]
        stored_mask = f["entry/instrument/detector/pixel_mask"][:]
        history = f["entry/livediff/config"][:]
    assert list(rows["frame"]) == list(range(sim.n_frames))  # written in order with 2 workers
    np.testing.assert_array_equal(rows["sum"], expected_sums)
    np.testing.assert_array_equal(rows["max"], [sim.frame(i)[mask].max() for i in range(sim.n_frames)])
    assert summary["complete"] == 1 and summary["processed"] == sim.n_frames
    np.testing.assert_array_equal(stored_mask == 0, mask)  # NXmx: 0 = good pixel
    assert [(e, f) for e, f, _ in history] == [(0, 0)]  # one configuration epoch, from the first frame
    assert history[0]["toml"].decode() == cfg.effective


async def test_malformed_messages_are_counted_and_skipped(tmp_path, caplog):
    sim = _sim(n_frames=6)
    cfg = config(tmp_path)
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(cfg.source.endpoint)
    good = [native.encode_image(1, i, sim.frame(i)) for i in range(sim.n_frames)]
    header = msgpack.unpackb(good[0][0])
    bad = [
        [b"\xc1 not msgpack", b""],                                               # bad msgpack
        [good[1][0], bytes(good[1][1])[:-2]],                                     # wrong buffer length
        [msgpack.packb({**header, "dtype": "complex64"}), bytes(good[1][1])],     # unknown dtype
        [msgpack.packb({**header, "shape": [48, 71]}), bytes(good[1][1])],        # shape != header
    ]
    caplog.set_level(logging.WARNING)
    try:
        async with running(cfg) as (service, sub):
            messages = [native.encode_start(sim.series_start()), good[0], *bad, *good[1:],
                        native.encode_end(1)]
            for parts in messages:
                await asyncio.to_thread(push.send_multipart, parts)
            end = await sub.wait_for(lambda t, m: t == "series" and m["type"] == "end")
    finally:
        push.close(linger=0)
        ctx.term()
    assert end["bad"] == len(bad)
    assert end["processed"] == end["received"] == sim.n_frames and end["lost"] == 0
    text = caplog.text
    assert "header is not msgpack" in text
    assert "buffer holds 6718 bytes, expected 6720" in text
    assert "unknown dtype 'complex64'" in text
    assert "disagrees with the series header" in text


async def test_lost_duplicate_and_timeout_accounting(tmp_path):
    sim = _sim(n_frames=10)
    cfg = config(tmp_path, source={"end_timeout": 0.3})
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(cfg.source.endpoint)
    sent = [0, 1, 2, 2, 5, 6, 9]  # 3, 4, 7, 8 never sent; 2 twice; no end message
    try:
        async with running(cfg) as (service, sub):
            await asyncio.to_thread(push.send_multipart, native.encode_start(sim.series_start()))
            for i in sent:
                await asyncio.to_thread(push.send_multipart, native.encode_image(1, i, sim.frame(i)))
            end = await sub.wait_for(lambda t, m: t == "series" and m["type"] == "end")
    finally:
        push.close(linger=0)
        ctx.term()
    assert end["reason"] == "timeout"
    assert end["received"] == end["processed"] == 6
    assert end["duplicates"] == 1 and end["lost"] == 4 and end["expected"] == 10
    with h5py.File(end["file"], "r") as f:
        summary = f["entry/livediff/summary"][0]
        assert sorted(f["entry/livediff/frames"]["frame"]) == [0, 1, 2, 5, 6, 9]
    assert summary["lost"] == 4 and summary["reason"] == b"timeout"
    assert summary["complete"] == 0 and summary["incomplete"] == b"reason timeout, lost 4"


async def test_complete_is_1_only_when_every_announced_frame_was_written(tmp_path):
    sim, short = _sim(n_frames=6), _sim(n_frames=6, series=2)
    short.indices = (0, 2, 5)  # what stream_series sends of it
    cfg = config(tmp_path)
    async with running(cfg) as (service, sub):
        await asyncio.to_thread(stream_series, sim, cfg.source.endpoint)
        whole = await sub.wait_for(lambda t, m: t == "series" and m["type"] == "end")
        await asyncio.to_thread(stream_series, short, cfg.source.endpoint)
        cut = await sub.wait_for(lambda t, m: t == "series" and m["type"] == "end" and m["series"] == 2)
    with h5py.File(whole["file"], "r") as f:
        summary = f["entry/livediff/summary"][0]
    assert summary["complete"] == 1 and summary["incomplete"] == b"" and summary["processed"] == 6
    with h5py.File(cut["file"], "r") as f:
        summary = f["entry/livediff/summary"][0]
    assert summary["complete"] == 0 and summary["incomplete"] == b"lost 3" and summary["processed"] == 3


async def test_embedded_default_runs_one_series_and_stops(tmp_path):
    cfg = config(tmp_path, source={"endpoint": None, "bind": False},
                 simulator={"frames": 12, "rate": 0.0, "shape": [40, 56]})
    async with running(cfg) as (service, sub):
        await asyncio.wait_for(service.stopping.wait(), 60)
    (summary,) = service.series_done
    assert summary["processed"] == summary["expected"] == 12 and summary["reason"] == "end"


async def test_unreachable_source_endpoint_is_reported_once(tmp_path, caplog):
    cfg = config(tmp_path, source={"bind": False})  # connect to an endpoint nobody listens on
    caplog.set_level(logging.WARNING)
    async with running(cfg):
        for _ in range(300):
            if "cannot reach" in caplog.text:
                break
            await asyncio.sleep(0.01)
    assert caplog.text.count(f"cannot reach {cfg.source.endpoint}") == 1


async def test_the_last_series_reaches_subscribers_when_the_service_stops_right_after_it(tmp_path):
    """Issue 18, row 11: a large final snapshot and the series end are flushed before the PUB socket closes.

    The subscriber (a thread of its own) starts reading only once the service is closing,
    as a subscriber busy with the large snapshots would; what it has not taken yet must
    still reach it.
    """
    sim = DiffractionSimulator(shape=(1024, 1024), n_frames=3, n_spots=5, seed=11)
    cfg = config(tmp_path, operators={"summary": {}, "stats": {}})
    closing = threading.Event()
    got: list[tuple[str, dict]] = []

    def subscribe(endpoint: str, ready: threading.Event) -> None:
        with Subscriber(endpoint, rcvhwm=1) as sub:
            while sub.recv(timeout=10) is None:
                pass
            ready.set()
            closing.wait(60)
            while (message := sub.recv(timeout=10)) is not None:
                got.append(message)
                if message[0] == "series" and message[1]["type"] == "end":
                    return

    async with running(cfg, max_series=1) as (service, _):
        close = service.writer.close
        service.writer.close = lambda: (close(), closing.set())
        ready = threading.Event()
        reader = threading.Thread(target=subscribe, args=(service.publisher.endpoint, ready))
        reader.start()
        await asyncio.to_thread(ready.wait, 10)
        await asyncio.to_thread(stream_series, sim, cfg.source.endpoint)
        await asyncio.wait_for(service.stopping.wait(), 60)
    closing.set()
    await asyncio.to_thread(reader.join, 30)
    ends = [m for t, m in got if t == "series" and m["type"] == "end"]
    final = [m for t, m in got if t == "image" and m["final"]]
    assert ends and ends[0]["processed"] == 3, f"the series end never arrived ({len(got)} messages did)"
    assert final and final[0]["mean"].shape == (1024, 1024)
