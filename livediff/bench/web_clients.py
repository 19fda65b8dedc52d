"""Page clients for ``livediff bench --e2e --web-clients N``: load the service's live page while it runs.

Each reading client holds a WebSocket to ``/ws`` and takes every update, as a browser
does (without drawing); a stalled client opens the WebSocket and then never reads, like a
frozen tab.  They run on an event loop of their own in a thread of the bench process.
:func:`rss_mb` reads the service's resident memory now, for the "memory stays flat" check.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from typing import Any

import aiohttp

_HANDSHAKE = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


class PageClients:
    """``reading`` clients that take every update and ``stalled`` ones that never read, on ``port``."""

    def __init__(self, port: int, reading: int, stalled: int = 0) -> None:
        self.port = port
        self.reading = reading
        self.stalled = stalled
        self.messages = 0
        self.bytes = 0
        self.connected = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True, name="page-clients")

    def start(self, timeout: float = 30.0) -> None:
        """Connect them all (returns once connected)."""
        self._ready = threading.Event()
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"page clients could not connect to port {self.port}: {self.errors}")

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(30)
        for s in self._sockets:
            s.close()
        return {"web_clients": self.reading, "web_stalled": self.stalled, "web_messages": self.messages,
                "web_mb": self.bytes / 1e6}

    async def _run(self) -> None:
        url = f"http://127.0.0.1:{self.port}/ws"
        async with aiohttp.ClientSession() as http:
            try:
                sockets = [await http.ws_connect(url, max_msg_size=0) for _ in range(self.reading)]
                for _ in range(self.stalled):
                    s = socket.socket()
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                    s.connect(("127.0.0.1", self.port))
                    s.sendall(_HANDSHAKE)
                    self._sockets.append(s)
            except (aiohttp.ClientError, OSError) as exc:
                self.errors.append(str(exc))
                return
            self.connected = len(sockets) + self.stalled
            self._ready.set()
            readers = [asyncio.create_task(self._read(ws)) for ws in sockets]
            while not self._stop.is_set():
                await asyncio.sleep(0.1)
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            for ws in sockets:
                with contextlib.suppress(Exception):
                    await ws.close()

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.messages += 1
                self.bytes += len(msg.data)


class RssSampler:
    """Samples the resident memory of process ``pid`` (Linux ``/proc``) every ``period`` s in a thread."""

    def __init__(self, pid: int, period: float = 0.2) -> None:
        self.samples: list[float] = []
        self._pid = pid
        self._period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            rss = rss_mb(self._pid)
            if rss is not None:
                self.samples.append(rss)

    def stop(self) -> dict[str, float | None]:
        """RSS (MB) when sampling began, at its end, and the highest seen."""
        self._stop.set()
        self._thread.join()
        s = self.samples
        return {"first": s[0] if s else None, "last": s[-1] if s else None, "max": max(s) if s else None}


def rss_mb(pid: int) -> float | None:
    """Resident memory of process ``pid`` now, MB (Linux; None elsewhere)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6
