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


async def test_get_many_takes_the_frames_that_arrived_up_to_its_bounds_never_across_a_series_boundary():
    q = EventQueue(20, "block", Frame)
    await q.put(SeriesStart(1, (2, 2), "uint16"))
    for i in range(7):
        await q.put(_frame(i))
    await q.put(SeriesEnd(1))
    await q.put(_frame(7))
    size = (lambda f: f.data.nbytes)  # 32 bytes a frame
    (start,) = await q.get_many(5, 1e9, size)  # a series start alone, whatever the bound
    assert isinstance(start, SeriesStart)
    assert [f.index for f in await q.get_many(3, 1e9, size)] == [0, 1, 2]       # the frame bound
    assert [f.index for f in await q.get_many(10, 2 * 32, size)] == [3, 4]      # the byte bound
    assert [f.index for f in await q.get_many(10, 1, size)] == [5]              # the first frame goes anyway
    assert [f.index for f in await q.get_many(10, 1e9, size)] == [6]            # up to the series end
    (end,) = await q.get_many(10, 1e9, size)
    assert isinstance(end, SeriesEnd)
    assert [f.index for f in await q.get_many(10)] == [7]
