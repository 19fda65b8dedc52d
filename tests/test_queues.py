"""The overflow policy: block loses nothing, drop keeps the newest frames and counts."""
from __future__ import annotations

import asyncio

import numpy as np

from livediff.model import Frame, SeriesEnd, SeriesStart
from livediff.queues import EventQueue


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
