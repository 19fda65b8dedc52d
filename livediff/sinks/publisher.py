"""The PUB socket live clients subscribe to; messages are built by :mod:`livediff.schema`.

:class:`Publisher` is a sink (:class:`~livediff.sinks.base.Sink`) for the series
messages, per-frame statistics (a batch of more than one frame in one columnar
``stats``/``frames`` message), operator rows and snapshots, and publishes the service's
heartbeat too.  PUB never blocks: a subscriber that cannot keep up loses messages at its
high-water mark, and the pipeline never waits for it.  Messages the socket refuses are
counted.  Closing is the exception: what was published before :meth:`close` (a series'
large final snapshots, its end) still goes out, for up to ``linger_s`` seconds.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import zmq

from .. import schema
from ..endpoints import check_endpoint
from ..outputs import FrameOutput, Reductions, SeriesContext
from ..params import param

log = logging.getLogger(__name__)

_END_KEYS = tuple(schema.MESSAGES["series", "end"].keys)


@dataclass(frozen=True)
class PublisherSettings:
    """The msgpack PUB socket clients subscribe to (``[publisher]``)."""

    endpoint: str = "tcp://127.0.0.1:5557"
    sndhwm: int = param(1000, ge=1)
    status_period: float = param(1.0, gt=0, doc="seconds between status heartbeats")
    linger_s: float = param(5.0, ge=0, doc="at shutdown, seconds to let subscribers take what was published")

    def __post_init__(self) -> None:
        check_endpoint(self.endpoint)


class Publisher:
    """Owns the PUB socket; :meth:`publish` encodes and sends without blocking."""

    wants_output = False  # it publishes rows and reductions, never the frames

    def __init__(self, context: zmq.Context, config: PublisherSettings) -> None:
        self.sent = 0
        self.refused = 0
        self._kinds: dict[str, str] = {}
        self._linger_ms = int(config.linger_s * 1000)
        self._sock = context.socket(zmq.PUB)
        self._sock.setsockopt(zmq.SNDHWM, config.sndhwm)
        self._sock.setsockopt(zmq.LINGER, 0)
        try:
            self._sock.bind(config.endpoint)
        except zmq.ZMQError as exc:
            self._sock.close(linger=0)
            raise OSError(f"cannot publish on {config.endpoint}: {exc.strerror}") from None
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        log.info("publishing on %s", self.endpoint)

    def publish(self, topic: str, type_: str, body: dict[str, Any]) -> None:
        try:
            self._sock.send_multipart(schema.encode(topic, type_, body), flags=zmq.NOBLOCK, copy=False)
            self.sent += 1
        except zmq.Again:
            self.refused += 1

    # ------------------------------------------------------------------ the sink
    def start_series(self, series: SeriesContext) -> dict[str, Any]:
        self._kinds = series.layout.kinds
        for label in series.layout.rows:
            if self._kind_of_rows(label) is None:
                log.warning("operator %r emits rows but no topic carries its kind: written to HDF5 only", label)
        self.publish("series", "start", schema.series_start(series.start, config_hash=series.config_hash,
                                                            file=series.facts.get("file"), epoch=series.epoch))
        return {}

    def add_frame(self, out: FrameOutput) -> None:
        self.publish("stats", "frame", schema.stats_frame(series=out.series, row=out.row, arrays=out.arrays))
        self.add_rows(out.series, out.index, out.rows, out.epoch)

    def add_frames(self, outs: Sequence[FrameOutput]) -> None:
        """A batch: one columnar ``stats``/``frames`` message when it holds several frames (and
        their arrays stack), then each frame's rows."""
        body = schema.stats_frames(series=outs[0].series, rows=[out.row for out in outs],
                                   arrays=[out.arrays for out in outs]) if len(outs) > 1 else None
        if body is None:
            for out in outs:
                self.add_frame(out)
            return
        self.publish("stats", "frames", body)
        for out in outs:
            self.add_rows(out.series, out.index, out.rows, out.epoch)

    def add_rows(self, series: int, index: int, rows: dict[str, dict[str, Any]], epoch: int) -> None:
        for label, columns in rows.items():
            kind = self._kind_of_rows(label)
            if kind is not None:
                self.publish(label, kind, schema.spots(series=series, frame=index, epoch=epoch, columns=columns))

    def write_reductions(self, reductions: Reductions) -> None:
        for label in {**reductions.values, **reductions.maps}:
            values = {**reductions.values.get(label, {}), **reductions.maps.get(label, {})}
            self.publish("image", "snapshot", schema.image_snapshot(
                series=reductions.series, operator=label, frame=reductions.frame, processed=reductions.processed,
                final=reductions.final, epoch=reductions.epoch, closed=reductions.closed, values=values))

    def end_series(self, summary: dict[str, Any]) -> dict[str, Any]:
        self.publish("series", "end", schema.series_end(**{k: summary[k] for k in _END_KEYS}))
        return {}

    def _kind_of_rows(self, label: str) -> str | None:
        """The message type of an operator's rows, published on the topic named by its label:
        its kind, when the schema has a topic for that kind (``spots``), else None."""
        kind = self._kinds.get(label, label)
        return kind if kind in schema.TOPICS else None

    def close(self) -> None:
        """Close the socket; terminating the context then waits up to ``linger_s`` for what is queued."""
        self._sock.close(linger=self._linger_ms)
