"""The dask executor on loopback: the answer of one thread, a worker killed mid-series, frames out of order.

A scheduler and two workers run as processes of their own (:mod:`dask_cluster`) for the
whole module; a test that kills a worker starts another for the next.
"""
from __future__ import annotations

import asyncio
import dataclasses
import os
import signal

import h5py
import numpy as np
import pytest

pytest.importorskip("distributed")

from dask_cluster import DaskProcesses  # noqa: E402
from harness import config, running  # noqa: E402
from livediff.executors.dask_cluster import Slot  # noqa: E402
from livediff.pipeline import OperatorSpec  # noqa: E402
from livediff.sources.sender import stream_series  # noqa: E402
from simulators import DiffractionSimulator  # noqa: E402
from slow_operator import Slow  # noqa: E402

#: series-wide state (hot pixels, a live dark, a running-mean reference), reductions and 3-D spots
CHAIN = {"hot_pixels": {"window": 5}, "flatfield": {"dark_frames": 3},
         "align": {"reference": "mean", "update_every": 3, "max_shift": 8.0},
         "stats": {}, "spots": {"mode": "3d"}}
TIMING = ("timestamp", "received", "latency_s")


@pytest.fixture(scope="module")
def dask(tmp_path_factory):
    cluster = DaskProcesses(tmp_path_factory.mktemp("dask"), workers=2)
    yield cluster
    cluster.close()


def _simulator(n_frames: int) -> DiffractionSimulator:
    return DiffractionSimulator(shape=(56, 83), n_frames=n_frames, n_spots=20, background=30.0, drift=0.8,
                                pattern="fixed", n_hot=3, seed=21)


async def _run(tmp_path, name, pipeline, *, n_frames=23, rate=0.0, operators=CHAIN, extra=(), during=None,
               output=None):
    """Stream a series through a service with ``pipeline``; returns (series end, file contents, service)."""
    sim = _simulator(n_frames)
    cfg = config(tmp_path / name, pipeline={"snapshot_period": 0, **pipeline}, operators=operators,
                 output={"save_corrected": True, **(output or {})})
    if extra:
        cfg = dataclasses.replace(cfg, operators=(*cfg.operators, *extra))
    async with running(cfg) as (service, sub):
        sending = asyncio.create_task(asyncio.to_thread(stream_series, sim, cfg.source.endpoint, rate=rate))
        if during is not None:
            await during(service, sub)
        await sending
        end = await sub.wait_for(lambda t, m: t == "series" and m["type"] == "end", timeout=120)
        stats = [m["frame"] for m in sub.of("stats")]
        ledger = max(m["ledger_frames"] for m in sub.of("status"))
    return end, _contents(end["file"]), service, stats, ledger


def _contents(path):
    with h5py.File(path, "r") as f:
        ld = f["entry/livediff"]
        stats = ld.get("reductions/stats", {})
        return {"frames": ld["frames"][:], "spots": ld["spots"][:] if "spots" in ld else None,
                "corrected": ld["corrected"][:], "stats": {k: stats[k][:] for k in stats}}


def _same(got, ref, n_frames):
    """Identical per-frame tables (timing aside), spots and corrected frames; reductions to 1e-12."""
    frames, expected = got["frames"], ref["frames"]
    np.testing.assert_array_equal(frames["frame"], np.arange(n_frames))  # each frame once, in order
    for column in expected.dtype.names:
        if column not in TIMING:
            np.testing.assert_array_equal(frames[column], expected[column], err_msg=column)
    np.testing.assert_array_equal(got["spots"], ref["spots"])
    np.testing.assert_array_equal(got["corrected"], ref["corrected"])
    for name, value in ref["stats"].items():  # partial sums merged in another order: equal to rounding
        scale = np.nanmax(np.abs(value)) if value.size else 0.0
        np.testing.assert_allclose(got["stats"][name], value, rtol=1e-12, atol=1e-12 * scale, equal_nan=True,
                                   err_msg=name)


async def test_threads_and_dask_with_1_and_2_workers_give_the_same_tables_and_reductions(dask, tmp_path):
    dask.ensure(2)
    runs = {}
    for executor, workers in (("threads", 1), ("threads", 2), ("dask", 1), ("dask", 2)):
        pipeline = {"executor": executor, "workers": workers}
        if executor == "dask":  # a ledger of a few frames: partial states are pulled while the series runs
            pipeline.update(scheduler=dask.address, ledger_mb=0.05)
        runs[executor, workers] = await _run(tmp_path, f"{executor}{workers}", pipeline)
    ref = runs["threads", 1][1]
    assert len(ref["spots"]) > 20 and ref["frames"]["aligned"].sum() > 10
    for key, (end, got, service, _, _) in runs.items():
        assert (end["processed"], end["failed"], end["resent"]) == (23, 0, 0), key
        _same(got, ref, 23)
    assert runs["dask", 2][2].executor.checkpoints > 0  # the ledger filled: states pulled mid-series, same answer


async def test_a_worker_killed_mid_series_the_series_completes_with_the_same_answer(dask, tmp_path):
    dask.ensure(2)
    n = 120
    ref = (await _run(tmp_path, "ref", {"executor": "threads", "workers": 1}, n_frames=n))[1]
    victim = dask.workers[0]
    joined = []

    async def kill_then_add_a_worker(service, sub):
        await sub.wait_for(lambda t, m: t == "stats" and m["frame"] >= 15, timeout=60)
        chains = service.executor._cluster.slots
        before = {s.address for s in chains}
        os.kill(victim.pid, signal.SIGKILL)
        dask.add_worker()  # a chain is created on it, started on the series, sent the versions with its frames
        # hold the rest of the series until the new worker is in (a worker process may take
        # seconds to start on a loaded machine), so that it takes frames mid-series
        await service.run_loop.pause()

        async def new_chain():
            while not any(s.address not in before for s in chains):
                await asyncio.sleep(0.05)
            return next(s for s in chains if s.address not in before)

        joined.append(await asyncio.wait_for(new_chain(), 60))
        await service.run_loop.resume()

    pipeline = {"executor": "dask", "workers": 2, "scheduler": dask.address}
    end, got, _, stats, ledger = await _run(tmp_path, "killed", pipeline, n_frames=n, rate=30.0,
                                            during=kill_then_add_a_worker)
    assert victim.wait(10) == -signal.SIGKILL
    assert (end["processed"], end["failed"], end["dropped"]) == (n, 0, 0)
    assert end["resent"] > 0  # the killed worker's contributions were processed again elsewhere
    assert ledger > 0  # the status said how many frames were kept for that
    assert joined[0].sent > 0  # the new worker's chain took frames mid-series
    assert stats == list(range(n))  # published once each, in order
    _same(got, ref, n)


async def test_slow_frames_finish_out_of_order_and_are_still_published_and_written_in_order(dask, tmp_path):
    dask.ensure(2)
    slow = OperatorSpec("slow", Slow, Slow.Params(every=4, seconds=0.3))
    end, got, _, stats, _ = await _run(tmp_path, "slow", {"executor": "dask", "workers": 2, "scheduler": dask.address},
                                    n_frames=12, rate=40.0, operators={"summary": {}}, extra=(slow,))
    done = got["frames"]["done"]
    assert end["processed"] == 12
    assert stats == list(range(12))
    np.testing.assert_array_equal(got["frames"]["frame"], np.arange(12))
    assert np.any(np.diff(done) < 0)  # some frame was done before an earlier one


class _Calls:
    """Stands for the cluster: two chains ready on the series, calls recorded and answered by the test."""

    def __init__(self, context):
        self.context, self.starting = context, []
        self.slots = [Slot(f"tcp://w{i}", None, None) for i in range(2)]
        for slot in self.slots:
            slot.context = context
        self.calls = []

    def call(self, slot, method, records, versions, timeout):
        future = asyncio.get_running_loop().create_future()
        self.calls.append((slot, records, future))
        return future


async def test_frames_wait_for_a_credit_and_then_travel_together_up_to_batch_mb():
    from livediff.config import parse
    from livediff.executors.dask import DaskExecutor
    from livediff.executors.dask_actor import FrameResult
    from livediff.model import Frame, SeriesStart
    from livediff.sources import codecs

    series = SeriesStart(1, (64, 64), "uint16")
    executor = DaskExecutor(parse({"operators": {"summary": {}}}).operators, 2, decode=codecs.decode, credits=2,
                            batch_mb=5 * 64 * 64 * 2 / 2**20)  # five raw frames a call
    try:
        executor._series = series
        executor._local.start(series)
        executor._inorder.start(series, executor._local.inputs)
        executor._cluster = calls = _Calls((series, False))
        jobs = [job for i in range(16) for job in executor.process([Frame(1, i, np.full((64, 64), i, "u2"))])]
        assert [len(r) for _, r, _ in calls.calls] == [1, 1, 1, 1]  # a free credit: at once, alone
        assert {s.inflight for s in calls.slots} == {2}  # then no worker has more than its credits
        slot, records, future = calls.calls[0]
        future.set_result([FrameResult(r.seq, {"summary": {"sum": 1.0}}, {}) for r in records])
        await asyncio.sleep(0)
        assert [len(r) for _, r, _ in calls.calls[4:]] == [5]  # the credit back: the waiting frames, five a call
        assert calls.calls[4][0] is slot and slot.inflight == 2
        assert jobs[0].future.done() and not jobs[1].future.done()
        assert executor.status()["ledger_frames"] == 16  # every frame kept until its worker's state is pulled
    finally:
        executor._fold_pool.shutdown()
