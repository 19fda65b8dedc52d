"""Latest-only fan-out of the page's parts to any number of clients.

The hub holds the latest encoded version of every part (:mod:`.state`), each stamped
with the update that made it.  A client is sent, when it is ready for more, the parts
whose stamp differs from the one it last received, so a client that falls behind skips
the versions it missed instead of queueing them: nothing is kept per client but a table
of stamps, and a slow or stuck client costs the hub nothing.  The per-frame columns go
as the rows added since the last update when the client has every row before them, and
as the whole bounded history otherwise (it joined late, or fell behind).
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Client:
    """What one client has been sent."""

    sent: dict[str, int] = field(default_factory=dict)  # part -> stamp
    epoch: int = -1
    rows: int | None = None  # the series rows it has, up to (exclusive)
    version: int = -1        # the hub update it last saw


def encode(payload: Any) -> str:
    """Compact JSON; NaN and infinities are refused (the parts turn them into null)."""
    return json.dumps(payload, separators=(",", ":"), allow_nan=False)


class Hub:
    """The latest parts and the wake-up for clients waiting for the next update.

    Parameters
    ----------
    rows : ``rows(start, end)`` returns the per-frame rows from ``start`` to ``end`` of the
        current series (:meth:`livediff.web.history.History.since`).
    """

    def __init__(self, rows: Callable[[int, int], dict[str, Any]]) -> None:
        self._rows = rows
        self.epoch = 0
        self.version = 0
        self._parts: dict[str, tuple[int, str]] = {}
        self._rows_start = 0
        self._rows_end = 0
        self._delta: str | None = None
        self._full: tuple[int, str] | None = None  # (version, json), made when a client needs it
        self._updated = asyncio.Event()

    def publish(self, epoch: int, parts: dict[str, str], rows_end: int) -> None:
        """A new update: ``parts`` (key -> JSON) changed; the series has ``rows_end`` rows."""
        if epoch != self.epoch:
            self.epoch = epoch
            self._parts.clear()
            self._rows_end = 0
        self.version += 1
        for key, text in parts.items():
            self._parts[key] = (self.version, text)
        self._rows_start, self._rows_end = self._rows_end, rows_end
        self._delta = None
        if rows_end > self._rows_start:
            self._delta = encode({"mode": "append", **self._rows(self._rows_start, rows_end)})
        self._updated.set()
        self._updated = asyncio.Event()

    def compose(self, client: Client) -> str | None:
        """The message bringing ``client`` up to date, or None when it is."""
        client.version = self.version
        reset = client.epoch != self.epoch
        if reset:
            client.sent.clear()
            client.rows = 0  # the page drops its rows on a reset
            client.epoch = self.epoch
        parts = []
        for key, (stamp, text) in self._parts.items():
            if client.sent.get(key) != stamp:
                client.sent[key] = stamp
                parts.append(f"{encode(key)}:{text}")
        rows = None
        if client.rows != self._rows_end:
            rows = self._delta if client.rows == self._rows_start and self._delta is not None else self._full_rows()
            client.rows = self._rows_end
        if not parts and rows is None and not reset:
            return None
        head = f'{{"epoch":{self.epoch},"reset":{"true" if reset else "false"},"parts":{{{",".join(parts)}}}'
        return head + ("}" if rows is None else ',"rows":' + rows + "}")

    def _full_rows(self) -> str:
        if self._full is None or self._full[0] != self.version:
            self._full = (self.version, encode({"mode": "full", **self._rows(0, self._rows_end)}))
        return self._full[1]

    async def wait(self, client: Client) -> None:
        """Return once there is an update ``client`` has not seen."""
        if client.version == self.version:
            await self._updated.wait()
