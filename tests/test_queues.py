"""The overflow policy: block loses nothing, drop keeps the newest frames, counts and says so (throttled)."""
from __future__ import annotations

import asyncio
import logging
import time

import numpy as np

from livediff.model import Frame, SeriesEnd, SeriesStart
from livediff.queues import DROP_LOG_PERIOD, EventQueue
from livediff.throttle import Throttle


def _frame(i: int) -> Frame:
    return Frame(1, i, np.zeros((2, 2)))


async def test_drop_evicts_oldest_frames_never_control_events():
    q = EventQueue(3, "drop", Frame)
    await q.put(SeriesStart(1, (2, 2), "uint16"))
    for i in range(6):
        await q.put(_frame(i))
    assert q.dropped == 4 and q.qsize() == 3
    got = [await q.get() for _ in range(3)]
    assert isinstance(got[0], SeriesStart) and [f.index for f in got[1:]] == [4, 5]


async def test_block_waits_for_room_and_loses_nothing():
    q = EventQueue(2, "block", Frame)
    received: list[int] = []

    async def consume():
        for _ in range(10):
            item = await q.get()
            received.append(item.index if isinstance(item, Frame) else -1)
            await asyncio.sleep(0)

    consumer = asyncio.create_task(consume())
    for i in range(9):
        await q.put(_frame(i))
        assert q.qsize() <= 2
    await q.put(SeriesEnd(1))
    await asyncio.wait_for(consumer, 5)
    assert received == [*range(9), -1] and q.dropped == 0


async def test_drop_warns_at_the_first_drop_then_at_most_once_per_period(caplog):
    caplog.set_level(logging.WARNING, logger="livediff.queues")
    q = EventQueue(2, "drop", Frame)
    for i in range(50):
        await q.put(_frame(i))
    assert q.dropped == 48
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("queue full (overflow = 'drop')") and line.endswith("frame was dropped, 1 so far")
    q._log_drops._clock = lambda: time.monotonic() + DROP_LOG_PERIOD   # as if the period had passed
    await q.put(_frame(50))
    assert "49 so far (47 more like it not logged)" in caplog.records[-1].getMessage()
    assert len(caplog.records) == 2


def test_throttle_first_of_each_kind_then_one_per_period_and_a_burst_cap():
    now = [0.0]
    throttle = Throttle(10.0, burst=3, clock=lambda: now[0])
    assert [throttle("a"), throttle("a"), throttle("b"), throttle("a")] == [0, None, 0, None]
    assert throttle("c") == 0 and throttle("d") is None   # 3 lines in this window already
    now[0] = 10.0
    assert [throttle("a"), throttle("d"), throttle("a")] == [2, 1, None]
