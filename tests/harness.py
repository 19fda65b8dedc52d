"""Test harness for networked tests: loopback endpoints, a running service, a subscriber.

Follows pyzmq's own test habits: ports chosen by the OS, linger 0, every socket closed,
readiness awaited (a heartbeat received), never a fixed sleep.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from livediff.client import AsyncSubscriber
from livediff.config import Config, parse
from livediff.endpoints import free_tcp_endpoint
from livediff.executors import ThreadExecutor
from livediff.executors.runloop import STOP, RunLoop
from livediff.model import Frame, SeriesEnd, SeriesStart
from livediff.pipeline import OperatorSpec
from livediff.queues import EventQueue
from livediff.service import Service


def free_endpoint() -> str:
    """A loopback TCP endpoint nobody listens on (see :mod:`livediff.endpoints`)."""
    return free_tcp_endpoint()


def send_messages(endpoint: str, messages: list[list[bytes]]) -> None:
    """PUSH ``messages`` (multipart, as they are) to ``endpoint``; waits up to 5 s for delivery."""
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 5000)
    push.connect(endpoint)
    try:
        for parts in messages:
            push.send_multipart(parts)
    finally:
        push.close()
        ctx.term()


def table(tmp_path: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """A config table writing into ``tmp_path``, fast heartbeats, with ``sections`` merged in."""
    table: dict[str, Any] = {
        "source": {"endpoint": free_endpoint(), "bind": True, "end_timeout": 5.0},
        "publisher": {"endpoint": "tcp://127.0.0.1:*", "status_period": 0.05},
        "output": {"directory": str(tmp_path / "out"), "flush_seconds": 0.1},
        "http": {"port": 0},
        "control": {"endpoint": "tcp://127.0.0.1:*"},
    }
    for name, values in sections.items():
        table[name] = {**table.get(name, {}), **values}
    return table


def config(tmp_path: Path, **sections: dict[str, Any]) -> Config:
    """The config of :func:`table`."""
    values = table(tmp_path, **sections)
    return parse(values, text=repr(values), origin="test")


class Collector:
    """Subscribes to a service's PUB socket and keeps every message; one off the schema fails the test."""

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.sub = AsyncSubscriber(endpoint, context=ctx, strict=True)
        self._new = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            async for topic, msg in self.sub:
                self.messages.append((topic, msg))
                self._new.set()
        finally:
            self._new.set()  # wake wait_for, which re-raises the SchemaError

    async def wait_for(self, predicate, timeout: float = 30.0) -> dict[str, Any]:
        """Wait for a message with ``predicate(topic, msg)`` true; return it."""
        async def scan() -> dict[str, Any]:
            seen = 0
            while True:
                for topic, msg in self.messages[seen:]:
                    if predicate(topic, msg):
                        return msg
                seen = len(self.messages)
                if self._task.done():
                    self._task.result()
                self._new.clear()
                await self._new.wait()
        return await asyncio.wait_for(scan(), timeout)

    def of(self, topic: str) -> list[dict[str, Any]]:
        return [m for t, m in self.messages if t == topic]

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.sub.close()


@contextlib.asynccontextmanager
async def running(cfg: Config, **kwargs: Any) -> AsyncIterator[tuple[Service, Collector]]:
    """Start a service and a subscriber that already receives (a heartbeat came through)."""
    service = Service(cfg, **kwargs)
    task = asyncio.create_task(service.run())
    ctx = zmq.asyncio.Context()
    collector = None
    try:
        await asyncio.wait_for(_first_ready(service, task), 30)
        collector = Collector(ctx, service.publisher.endpoint)
        await collector.wait_for(lambda t, m: t == "status")
        yield service, collector
    finally:
        service.stopping.set()
        await asyncio.wait_for(task, 60)
        if collector is not None:
            await collector.close()
        ctx.destroy(linger=0)


async def _first_ready(service: Service, task: asyncio.Task) -> None:
    ready = asyncio.create_task(service.ready.wait())
    done, _ = await asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        ready.cancel()
        task.result()
        raise RuntimeError("service stopped before it was ready")


class Recorder:
    """A sink keeping the layout, every frames-table row, the final reductions and maps, and the summary."""

    def start_series(self, series):
        self.layout, self.rows = series.layout, []
        return {}

    def add_frame(self, out):
        self.rows.append((out.index, out.row))

    def add_rows(self, series, index, rows, epoch):
        pass

    def write_reductions(self, reductions):
        if reductions.final:
            self.final = reductions

    def end_series(self, summary):
        self.summary = summary
        return {}

    def close(self):
        pass


def run_series(specs: list[OperatorSpec], start: SeriesStart, frames: list[Frame], workers: int = 2) -> Recorder:
    """Run ``frames`` (in this order) through the real run loop and a thread executor; return what a sink got."""
    async def main() -> Recorder:
        queue = EventQueue(8, "block", Frame)
        executor = ThreadExecutor(specs, workers)
        sink = Recorder()
        loop = RunLoop(queue, executor, [sink], snapshot_period=0, config_text="", config_hash="",
                       on_series_end=lambda summary: None)
        task = asyncio.create_task(loop.run())
        await queue.put(start)
        for frame in frames:
            await queue.put(frame)
        await queue.put(SeriesEnd(start.series, counts={"received": len(frames)}))
        await queue.put(STOP)
        await task
        executor.close()
        return sink
    return asyncio.run(main())
