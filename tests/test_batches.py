"""Frames in batches: the same series taken a frame at a time or in large batches gives the same tables,
spots, reductions and published rows; accounting stays exact with drops, failures and series ends."""
from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import zmq

from livediff import schema
from livediff.client import Subscriber
from livediff.config import parse
from livediff.executors import ThreadExecutor
from livediff.executors.runloop import STOP, RunLoop
from livediff.model import Frame, SeriesEnd, SeriesStart
from livediff.outputs import FrameOutput
from livediff.queues import EventQueue
from livediff.sinks.hdf5 import HDF5Writer, OutputSettings
from livediff.sinks.publisher import Publisher, PublisherSettings
from simulators import DiffractionSimulator

#: columns that depend on when a frame was processed, not on what it holds
_TIMING = ("received", "latency_s")
_COUNTS = {"bad": 0, "duplicates": 0, "stray": 0, "lost": 0}


class _Run:
    """What one run of the real run loop left: the files, the published messages, the batches, the summaries."""

    def __init__(self) -> None:
        self.published: list[list[bytes]] = []
        self.batches: Counter[int] = Counter()
        self.summaries: list[dict[str, Any]] = []
        self.dropped = 0

    def stats_rows(self) -> list[dict[str, Any]]:
        """Every frame's stats row as a subscriber reads it (a columnar message unpacked)."""
        rows = []
        for parts in self.published:
            topic, msg = schema.decode(parts)
            if topic == "stats":
                rows += schema.unpack_stats_frames(msg) if msg["type"] == "frames" else [msg]
        return rows


def _run(tmp: Path, operators: dict[str, Any], events: list[Any], *, batch_frames: int, workers: int = 2,
         queue_size: int | None = None, overflow: str = "block") -> _Run:
    """Queue ``events`` (series starts, frames, ends) before the run loop starts, then run it to STOP
    with an HDF5 writer in ``tmp`` and a publisher whose messages are kept."""
    cfg = parse({"operators": operators, "output": {"directory": str(tmp)}})
    run = _Run()

    async def main() -> None:
        queue = EventQueue(queue_size or len(events) + 1, overflow, Frame)
        executor = ThreadExecutor(cfg.operators, workers, batch_frames=batch_frames, warm=False)
        context = zmq.Context()
        publisher = Publisher(context, PublisherSettings(endpoint="tcp://127.0.0.1:*", linger_s=0))
        publisher.publish = lambda topic, type_, body: run.published.append(schema.encode(topic, type_, body))
        writer = HDF5Writer(OutputSettings(directory=str(tmp)))
        loop = RunLoop(queue, executor, [writer, publisher], snapshot_period=0, config_text="", config_hash="",
                       on_series_end=run.summaries.append, batch_frames=batch_frames,
                       on_batch=lambda n: run.batches.update((n,)))
        task = asyncio.create_task(loop.run())
        try:
            for event in events:  # the loop runs only when a put waits: frames are queued before it takes any
                await queue.put(event)
            await queue.put(STOP)
            await task
        finally:
            executor.close()
            publisher.close()
            writer.close()
            context.term()
        run.dropped = queue.dropped

    asyncio.run(main())
    return run


def _series(sim: DiffractionSimulator, n: int, series: int = 1) -> list[Any]:
    start = sim.series_start()
    start = SeriesStart(series, start.shape, start.dtype, n_frames=n, mask=start.mask, geometry=start.geometry)
    return [start, *(Frame(series, i, sim.frame(i % sim.n_frames), timestamp=1e9 + i) for i in range(n)),
            SeriesEnd(series, counts={"expected": n, "received": n, **_COUNTS})]


def _file(tmp: Path, series: int = 1) -> dict[str, Any]:
    with h5py.File(tmp / f"series_{series:06d}.h5", "r") as f:
        ld = f["entry/livediff"]
        frames = ld["frames"][:]
        return {"frames": frames[[n for n in frames.dtype.names if n not in _TIMING]],
                "spots": ld["spots"][:] if "spots" in ld else None,
                "reductions": {f"{op}/{k}": ld["reductions"][op][k][...] for op in ld["reductions"]
                               for k in ld["reductions"][op]},
                "written": ld["written"][:]}


@pytest.mark.parametrize("workers", [1, 2])
def test_a_series_in_batches_of_one_and_of_many_gives_the_same_tables_spots_reductions_and_rows(tmp_path, workers):
    sim = DiffractionSimulator(shape=(40, 52), n_frames=12, n_spots=5, seed=3)
    operators = {"summary": {}, "stats": {}, "spots": {}, "azimuthal": {"bin_width": 2.0}}
    events = _series(sim, 150)
    one = _run(tmp_path / "one", operators, events, batch_frames=1, workers=workers)
    many = _run(tmp_path / "many", operators, events, batch_frames=64, workers=workers)
    assert set(one.batches) == {1} and max(many.batches) > 16  # queued frames travel together
    a, b = _file(tmp_path / "one"), _file(tmp_path / "many")
    np.testing.assert_array_equal(a["frames"], b["frames"])
    np.testing.assert_array_equal(a["spots"], b["spots"])
    np.testing.assert_array_equal(a["written"], b["written"])
    assert a["reductions"].keys() == b["reductions"].keys()
    for key, value in a["reductions"].items():  # several workers: the partial states split otherwise (Chan merge)
        np.testing.assert_allclose(value, b["reductions"][key], rtol=0 if workers == 1 else 1e-13, err_msg=key)
    assert len(a["spots"]) > 0 and list(a["frames"]["frame"]) == list(range(150))
    # against an independent reference: numpy's sums of the valid pixels and the per-pixel mean
    mask = sim.series_start().mask
    stack = np.stack([sim.frame(i % 12) for i in range(150)]).astype(np.float64)
    np.testing.assert_array_equal(a["frames"]["sum"], stack[:, mask].sum(axis=1))
    np.testing.assert_allclose(a["reductions"]["stats/mean"][mask], stack.mean(axis=0)[mask], rtol=1e-12)
    rows_one, rows_many = one.stats_rows(), many.stats_rows()
    assert any(schema.decode(p)[1]["type"] == "frames" for p in many.published)  # columnar messages were sent
    strip = (lambda rows: [{k: v for k, v in r.items() if k not in _TIMING} for r in rows])
    np.testing.assert_equal(strip(rows_many), strip(rows_one))
    assert [r["frame"] for r in rows_many] == list(range(150))
    assert [r["sum"] for r in rows_many] == list(a["frames"]["sum"])


def test_accounting_is_exact_with_drops_and_a_frame_that_fails_inside_a_batch(tmp_path):
    sim = DiffractionSimulator(shape=(24, 30), n_frames=4, seed=1)
    start, *frames, end = _series(sim, 40)
    frames[33] = Frame(1, 33, np.zeros((24, 31), "uint16"))  # the wrong shape: stats raises on it alone
    run = _run(tmp_path, {"summary": {}, "stats": {}}, [start, *frames, end], batch_frames=64, queue_size=12,
               overflow="drop")
    (summary,) = run.summaries
    kept = list(range(40 - 11, 40))  # the queue kept the newest 11 frames, beside the series start
    assert run.dropped == 29 and summary["dropped"] == 29
    assert summary["processed"] == 10 and summary["failed"] == 1 and summary["not_saved"] == 0
    assert max(run.batches) > 1
    table = _file(tmp_path)
    assert list(table["frames"]["frame"]) == [i for i in kept if i != 33]
    assert [r["frame"] for r in run.stats_rows()] == [i for i in kept if i != 33]
    good = np.stack([sim.frame(i % 4) for i in kept if i != 33]).astype(np.float64)
    mask = start.mask
    np.testing.assert_allclose(table["reductions"]["stats/mean"][mask], good.mean(axis=0)[mask], rtol=1e-12)


def test_a_series_end_between_queued_frames_ends_the_batch(tmp_path):
    sim = DiffractionSimulator(shape=(24, 30), n_frames=4, seed=2)
    events = [*_series(sim, 10, series=1), *_series(sim, 7, series=2)]
    run = _run(tmp_path, {"summary": {}}, events, batch_frames=64)
    assert [(s["series"], s["processed"], s["dropped"]) for s in run.summaries] == [(1, 10, 0), (2, 7, 0)]
    assert sorted(run.batches.elements()) == [7, 10]  # every frame of a series in one batch, none across
    for series, n in ((1, 10), (2, 7)):
        assert list(_file(tmp_path, series)["frames"]["frame"]) == list(range(n))
    rows = run.stats_rows()
    assert [(r["series"], r["frame"]) for r in rows] == [(1, i) for i in range(10)] + [(2, i) for i in range(7)]


def test_a_columnar_stats_message_carries_exactly_the_per_frame_messages():
    rng = np.random.default_rng(4)
    rows = [{"frame": i, "timestamp": 1e9 + i, "received": 2e9 + i, "latency_s": 0.5 * i, "epoch": 2,
             "sum": float(rng.random()), "n_spots": int(rng.integers(9)), "aligned": bool(i % 2),
             **({"shift_y": -1.5 * i} if i != 1 else {})} for i in range(4)]
    arrays = [{"azimuthal": {"profile": rng.random((3, 5)).astype("f4")}} for _ in range(4)]
    _, msg = schema.decode(schema.encode("stats", "frames", schema.stats_frames(series=7, rows=rows, arrays=arrays)))
    assert msg["n"] == 4 and msg["sum"].shape == (4,) and msg["azimuthal"]["profile"].shape == (4, 3, 5)
    expected = [schema.decode(schema.encode("stats", "frame", schema.stats_frame(series=7, row=r, arrays=a)))[1]
                for r, a in zip(rows, arrays)]
    unpacked = schema.unpack_stats_frames(msg)
    assert [list(m) for m in unpacked] == [list(m) for m in expected]  # the same keys in the same order
    np.testing.assert_equal(unpacked, expected)
    assert [type(m["n_spots"]) for m in unpacked] == [int] * 4 and "shift_y" not in unpacked[1]
    # frames whose operators carry different arrays cannot be stacked: the caller sends them one by one
    assert schema.stats_frames(series=7, rows=rows[:2], arrays=[arrays[0], {}]) is None


def test_a_subscriber_reads_a_batch_of_frames_as_one_message_per_frame():
    context = zmq.Context()
    publisher = Publisher(context, PublisherSettings(endpoint="tcp://127.0.0.1:*", linger_s=0))
    outs = [FrameOutput(series=3, index=i, epoch=0, row={"frame": i, "timestamp": 1.0 * i, "received": 2.0,
                                                         "latency_s": 0.1, "epoch": 0, "sum": 10.0 * i},
                        arrays={}, rows={}, received=np.zeros((2, 2))) for i in range(5)]
    try:
        with Subscriber(publisher.endpoint, ["stats"], strict=True) as sub:
            while sub.recv(timeout=0.05) is None:  # until the subscription is through (PUB drops before it)
                publisher.add_frame(FrameOutput(series=0, index=0, epoch=0, row=outs[0].row, arrays={}, rows={},
                                                received=outs[0].received))
            while sub.recv(timeout=0.2) is not None:
                pass
            sent = publisher.sent
            publisher.add_frames(outs)
            assert publisher.sent == sent + 1  # one message for the batch
            got = [sub.recv(timeout=5) for _ in range(5)]
            assert sub.recv(timeout=0.2) is None
        assert [(t, m["type"], m["series"], m["frame"], m["sum"]) for t, m in got] == \
               [("stats", "frame", 3, i, 10.0 * i) for i in range(5)]
    finally:
        publisher.close()
        context.term()


@pytest.mark.parametrize("bad", ["batch_frames = 0", "batch_mb = 0"])
def test_the_config_checks_the_batch_bounds(bad):
    from livediff.config import ConfigError
    import tomllib

    with pytest.raises(ConfigError, match=f"pipeline.{bad.split()[0]}"):
        parse(tomllib.loads(f"[pipeline]\n{bad}\n"))
