"""``livediff view ENDPOINT``: the live page fed from a running service's PUB socket.

A second machine can watch a service without touching it: the viewer subscribes like any
client (a slow viewer loses messages at its high-water mark; the service never waits),
learns the chain's outputs from the messages themselves (the columns and arrays of
``stats``, the reductions of ``image``, the rows topics) and serves the same page.  The
latest frame's pixels are not published, so the viewer shows its spots without the image
(a ``preview`` operator in the chain publishes a downsampled frame as a reduction).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np

from .. import schema
from ..client import AsyncSubscriber
from .metrics import Metrics
from .server import LiveServer
from .settings import HttpSettings
from .state import Declared, LiveState

log = logging.getLogger(__name__)

_STATS_FIXED = {"v", "type", "series"}
_IMAGE_FIXED = {"v", "type", *schema.MESSAGES["image", "snapshot"].keys}
_ROWS_FIXED = {"v", "type", *schema.MESSAGES["spots", "spots"].keys}
_STATUS_KEYS = tuple(schema.MESSAGES["status", "heartbeat"].keys)
_END_KEYS = tuple(schema.MESSAGES["series", "end"].keys)


def feed(state: LiveState, topic: str, msg: dict[str, Any]) -> None:
    """Apply one decoded message (:func:`livediff.schema.decode`) to ``state``."""
    kind = msg.get("type")
    if topic == "status":
        state.set_status({k: msg.get(k) for k in _STATUS_KEYS})
    elif topic == "series" and kind == "start":
        header = {k: msg.get(k) for k in ("series", "shape", "dtype", "n_frames", "count_time", "file",
                                          "config_hash", "scan")}
        state.start_series(header, Declared())
    elif topic == "series" and kind == "end":
        _join(state, msg["series"])
        state.end_series({k: msg.get(k) for k in _END_KEYS})
    elif topic == "stats":
        _join(state, msg["series"])
        row = {k: v for k, v in msg.items() if k not in _STATS_FIXED and not isinstance(v, dict)}
        arrays = {k: v for k, v in msg.items() if isinstance(v, dict)}
        state.declare(columns={k: _dtype(v) for k, v in row.items()},
                      arrays={lb: {n: list(np.shape(a)) for n, a in d.items()} for lb, d in arrays.items()})
        state.add_frame(int(msg["frame"]), row, arrays, {})
    elif topic == "image" and kind == "snapshot":
        _join(state, msg["series"])
        values = {k: v for k, v in msg.items() if k not in _IMAGE_FIXED}
        state.declare(reductions={msg["operator"]: {k: list(np.shape(v)) for k, v in values.items()}})
        state.add_reductions(msg["operator"], values)
    elif (kind, kind) in schema.MESSAGES and topic not in ("series", "stats", "image", "status"):
        # an operator's rows (spots), on the topic of its label
        _join(state, msg["series"])
        columns = {k: v for k, v in msg.items() if k not in _ROWS_FIXED}
        state.declare(rows={topic: list(columns)})
        state.add_rows(topic, int(msg["frame"]), columns)


def _join(state: LiveState, series: int) -> None:
    """A message of a series whose start the viewer missed (it joined late): open it, header unknown."""
    if state.header is None or state.header.get("series") != series:
        state.start_series({"series": series, "note": "joined while the series ran: header not seen"}, Declared())


def _dtype(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "?"
    if isinstance(value, (int, np.integer)):
        return "i8"
    if isinstance(value, (float, np.floating)):
        return "f8"
    return "O"


async def run(endpoint: str, settings: HttpSettings, stop: asyncio.Event) -> None:
    """Serve the page for ``endpoint`` until ``stop`` is set."""
    metrics = Metrics()
    state = LiveState(settings, source=endpoint, remote=True, on_latency=metrics.latency.observe)
    metrics.watch(state)
    server = LiveServer(settings, state, metrics)
    try:
        await server.start()
    except OSError as exc:
        raise OSError(f"{exc}; choose another --port") from None
    try:
        async with AsyncSubscriber(endpoint, rcvhwm=10_000) as sub:
            log.info("watching %s", endpoint)
            while not stop.is_set():
                got = await sub.recv(timeout=0.2)
                if got is not None:
                    feed(state, *got)
    finally:
        await server.close()
