"""Sustained load: back-pressure loses nothing, dropping is counted exactly, memory stays bounded,
a subscriber that never reads does not slow the pipeline.  No wall-clock assertions."""
from __future__ import annotations

import asyncio
import dataclasses
import resource
import time

import pytest
import zmq

from harness import config, running
from livediff.operators import REGISTRY, BaseOperator, param
from livediff.sources.sender import stream_series
from simulators import DiffractionSimulator


@dataclasses.dataclass(frozen=True)
class SleepyParams:
    seconds: float = param(0.004, ge=0)


class Sleepy(BaseOperator):
    """Stands in for an expensive operator: the pipeline is slower than the sender."""

    kind = "sleepy"
    Params = SleepyParams

    def process(self, frame):
        time.sleep(self.params.seconds)
        return frame


@pytest.fixture(autouse=True)
def sleepy(monkeypatch):
    monkeypatch.setitem(REGISTRY, "sleepy", Sleepy)


def _chain(seconds: float = 0.004) -> dict:
    return {"sleepy": {"seconds": seconds}, "summary": {}}


async def test_block_loses_nothing_when_the_sender_outruns_the_pipeline(tmp_path):
    sim = DiffractionSimulator(shape=(32, 48), n_frames=150, n_spots=2)
    cfg = config(tmp_path, pipeline={"overflow": "block", "queue_size": 4}, source={"rcvhwm": 2},
                 operators=_chain())
    depths = []
    async with running(cfg) as (service, sub):
        sender = asyncio.create_task(asyncio.to_thread(stream_series, sim, cfg.source.endpoint, sndhwm=2))
        while not sender.done():
            depths.append(service.queue.qsize())
            await asyncio.sleep(0.005)
        end = await sub.wait_for(lambda t, m: t == "series" and m["type"] == "end")
    assert await sender == sim.n_frames
    assert end["processed"] == end["received"] == sim.n_frames and end["dropped"] == 0 and end["lost"] == 0
    assert max(depths) <= 4 and max(depths) >= 3  # the queue did fill: the sender really was faster


async def test_drop_counts_every_frame_it_discards(tmp_path):
    sim = DiffractionSimulator(shape=(32, 48), n_frames=300, n_spots=2)
    cfg = config(tmp_path, pipeline={"overflow": "drop", "queue_size": 3}, operators=_chain(0.01))
    async with running(cfg) as (service, sub):
        sent = await asyncio.to_thread(stream_series, sim, cfg.source.endpoint)
        end = await sub.wait_for(lambda t, m: t == "series" and m["type"] == "end")
    frames = sorted(m["frame"] for m in sub.of("stats"))
    assert sent == end["received"] == sim.n_frames and end["lost"] == 0
    assert end["dropped"] > 0 and end["processed"] + end["dropped"] == end["received"]
    assert len(frames) == end["processed"] and frames[-1] == sim.n_frames - 1  # the newest frames are kept
    assert service.queue.dropped == end["dropped"]


async def test_memory_stays_bounded_while_a_fast_sender_streams(tmp_path):
    # 400 frames of 1 MiB each: an unbounded queue anywhere would hold hundreds of MiB
    sim = DiffractionSimulator(shape=(512, 1024), dtype="uint16", n_frames=40, n_spots=2)
    frames = [sim.frame(i) for i in range(sim.n_frames)]

    class Cycle:
        series, n_frames = 1, 400

        def series_start(self):
            return dataclasses.replace(sim.series_start(), n_frames=self.n_frames)

        def frame(self, i):
            return frames[i % len(frames)]

    cfg = config(tmp_path, pipeline={"overflow": "drop", "queue_size": 8}, operators=_chain(0.02))
    async with running(cfg) as (service, sub):
        await asyncio.to_thread(stream_series, Cycle(), cfg.source.endpoint, sndhwm=4)
        start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        end = await sub.wait_for(lambda t, m: t == "series" and m["type"] == "end")
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert end["received"] == 400 and end["dropped"] > 100
    assert max(m["queue"] for m in sub.of("status")) <= 8
    assert peak_rss - start_rss < 100  # MiB; the frames sent were 400 MiB


async def test_a_subscriber_that_never_reads_does_not_slow_the_pipeline(tmp_path):
    sim = DiffractionSimulator(shape=(64, 96), n_frames=300, n_spots=2)
    cfg = config(tmp_path, publisher={"sndhwm": 2}, operators={"summary": {}})
    ctx = zmq.Context()
    stuck = ctx.socket(zmq.SUB)
    stuck.setsockopt(zmq.SUBSCRIBE, b"")
    stuck.setsockopt(zmq.RCVHWM, 1)
    stuck.setsockopt(zmq.RCVBUF, 4096)
    try:
        async with running(cfg) as (service, sub):
            stuck.connect(service.publisher.endpoint)
            await asyncio.to_thread(stream_series, sim, cfg.source.endpoint)
            await asyncio.wait_for(_until(lambda: service.series_done), 60)
    finally:
        stuck.close(linger=0)
        ctx.term()
    (summary,) = service.series_done
    assert summary["processed"] == sim.n_frames and summary["dropped"] == 0


async def _until(predicate) -> None:
    while not predicate():
        await asyncio.sleep(0.01)
