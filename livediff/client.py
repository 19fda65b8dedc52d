"""Subscribing to what a livediff service publishes: :class:`Subscriber` and :class:`AsyncSubscriber`.

Both connect a SUB socket, subscribe to some topics (all by default) and hand out
``(topic, message)`` pairs decoded and checked by :func:`livediff.schema.decode`.  A
message that fails the check is counted in ``bad``, logged (truncated) and skipped;
with ``strict=True`` its :class:`~livediff.schema.SchemaError` is raised instead.  A
columnar ``stats``/``frames`` message (a batch of frames) is handed out as the
``stats``/``frame`` messages it carries, one per frame, unless ``columnar=True``.

    with Subscriber("tcp://127.0.0.1:5557", ["stats"]) as sub:
        for topic, msg in sub:
            print(msg["frame"], msg["sum"])

:class:`AsyncSubscriber` is the same on ``zmq.asyncio``: ``await sub.recv()``,
``async for``, ``async with``.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import zmq
import zmq.asyncio

from . import schema

log = logging.getLogger(__name__)

Message = tuple[str, dict[str, Any]]


class _Subscription:
    """The socket, the counters and the decoding both subscribers share."""

    _context_type: type[zmq.Context] = zmq.Context

    def __init__(self, endpoint: str, topics: Iterable[str] = (), *, context: zmq.Context | None = None,
                 strict: bool = False, rcvhwm: int | None = None, idle_timeout: float | None = None,
                 columnar: bool = False) -> None:
        self.endpoint = endpoint
        self.columnar = columnar
        self._unpacked: deque[Message] = deque()  # the per-frame messages of a columnar one, still to hand out
        self.strict = strict
        self.idle_timeout = idle_timeout
        self.received = 0  # messages handed out
        self.bad = 0       # messages skipped (or raised, when strict) as not following the schema
        self._own_context = context is None
        self._context = self._context_type() if context is None else context
        self._sock = self._context.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        if rcvhwm is not None:
            self._sock.setsockopt(zmq.RCVHWM, rcvhwm)
        for topic in list(topics) or [""]:
            self._sock.setsockopt(zmq.SUBSCRIBE, topic.encode("ascii"))
        self._sock.connect(endpoint)

    def _decode(self, parts: list[bytes]) -> Message | None:
        try:
            topic, msg = schema.decode(parts)
        except schema.SchemaError as exc:
            self.bad += 1
            if self.strict:
                raise
            log.warning("%s: message skipped: %.300s", self.endpoint, exc)
            return None
        self.received += 1
        if topic == "stats" and msg["type"] == "frames" and not self.columnar:
            self._unpacked.extend((topic, one) for one in schema.unpack_stats_frames(msg))
            self.received += len(self._unpacked) - 1
            return self._unpacked.popleft()
        return topic, msg

    @staticmethod
    def _deadline(timeout: float | None) -> float | None:
        return None if timeout is None else time.monotonic() + timeout

    @staticmethod
    def _poll_ms(deadline: float | None) -> int | None:
        return None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))

    def close(self) -> None:
        """Close the socket (and the context, when the subscriber made it)."""
        self._sock.close(linger=0)
        if self._own_context:
            self._context.term()

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Subscriber(_Subscription):
    """A blocking subscriber to a livediff service's PUB ``endpoint``.

    Parameters
    ----------
    endpoint : the service's publisher endpoint, e.g. ``tcp://127.0.0.1:5557``.
    topics : topics to subscribe to (default: all).
    context : the ZeroMQ context to use (default: one of its own, terminated by :meth:`close`).
    strict : raise :class:`~livediff.schema.SchemaError` for a bad message instead of skipping it.
    rcvhwm : the socket's receive high-water mark (0: unbounded; default: ZeroMQ's).
    idle_timeout : iteration ends after this many seconds without a message (default: never).
    columnar : hand out ``stats``/``frames`` messages as they came, not a ``stats``/``frame`` per frame.
    """

    def recv(self, timeout: float | None = None) -> Message | None:
        """The next good ``(topic, message)``, or None if none came within ``timeout`` seconds."""
        if self._unpacked:
            return self._unpacked.popleft()
        deadline = self._deadline(timeout)
        while self._sock.poll(self._poll_ms(deadline)):
            got = self._decode(self._sock.recv_multipart())
            if got is not None:
                return got
        return None

    def __iter__(self) -> Iterator[Message]:
        while (got := self.recv(self.idle_timeout)) is not None:
            yield got


class AsyncSubscriber(_Subscription):
    """:class:`Subscriber` for asyncio: ``await recv()``, ``async for``, ``async with``.

    ``context``, if given, must be a ``zmq.asyncio.Context``.
    """

    _context_type = zmq.asyncio.Context

    async def recv(self, timeout: float | None = None) -> Message | None:
        """The next good ``(topic, message)``, or None if none came within ``timeout`` seconds."""
        if self._unpacked:
            return self._unpacked.popleft()
        deadline = self._deadline(timeout)
        while await self._sock.poll(self._poll_ms(deadline)):
            got = self._decode(await self._sock.recv_multipart())
            if got is not None:
                return got
        return None

    async def __aiter__(self) -> AsyncIterator[Message]:
        while (got := await self.recv(self.idle_timeout)) is not None:
            yield got

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()
