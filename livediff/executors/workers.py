"""Worker threads that take jobs from one FIFO queue, each thread with a chain of its own.

A worker that finishes a job takes the next one itself: no trip through the event loop
between jobs (with a pool and an asyncio hand-off, a worker idled while the loop was busy
receiving or emitting, and at thousands of small frames a second that was half its time).
"""
from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any

_STOP = object()


class ChainWorkers:
    """``n`` threads; :meth:`submit` queues ``fn(worker, *args)`` for the first free one, ``worker``
    being its number (0 to n - 1: the caller keeps a chain per number).

    Jobs start in the order they were submitted, so with one worker it sees them in that order.

    Parameters
    ----------
    n : number of threads.
    name : thread name prefix (threads are ``name_0``, ``name_1``, ...).
    """

    def __init__(self, n: int, name: str = "livediff-worker") -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, args=(i,), name=f"{name}_{i}", daemon=True)
                         for i in range(n)]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        """Queue ``fn(worker, *args)``; the future (of the running loop) gets its result or exception."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put((loop, future, fn, args))
        return future

    def _work(self, worker: int) -> None:
        while (job := self._jobs.get()) is not _STOP:
            loop, future, fn, args = job
            if future.cancelled():
                continue
            try:
                result = fn(worker, *args)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, as a pool would
                _settle(loop, future, exc, failed=True)
            else:
                _settle(loop, future, result, failed=False)

    def close(self) -> None:
        """Drop the jobs not started (their futures never resolve), let running ones finish, stop the threads."""
        while True:
            try:
                self._jobs.get_nowait()
            except queue.Empty:
                break
        for _ in self._threads:
            self._jobs.put(_STOP)
        for thread in self._threads:
            thread.join()


def _settle(loop: asyncio.AbstractEventLoop, future: asyncio.Future, value: Any, *, failed: bool) -> None:
    def settle() -> None:
        if not future.done():  # cancelled meanwhile
            (future.set_exception if failed else future.set_result)(value)
    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the loop is closed: nobody waits any more
        pass
