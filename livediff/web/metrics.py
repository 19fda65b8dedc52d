"""``/metrics``: the Prometheus text format, written by ``prometheus_client``.

Counters (``livediff_frames_{received,processed,dropped,bad,lost,failed}_total``) and
gauges (``livediff_queue_depth``, ``livediff_frames_per_second``) are read from the live
state and the service's status when scraped (a custom collector: the counts live in the
service, not here); ``livediff_frame_latency_seconds`` is a histogram of each frame's
latency from decoding to the end of processing.  Each service has a registry of its own.

- received: frames that reached the pipeline, over every series (the open one included);
- processed: frames the chain processed; failed: frames whose payload did not decode on their
  worker, or an operator raised on;
- dropped: frames the ``drop`` overflow policy discarded; bad: source messages that
  failed to decode;
- lost: frames a series announced that never arrived, counted when the series ends.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .state import LiveState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: per-frame latency buckets, s
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)

_COUNTERS = {
    "received": "frames that reached the pipeline",
    "processed": "frames the chain processed",
    "dropped": "frames discarded by the drop overflow policy",
    "bad": "source messages that failed to decode",
    "lost": "frames announced that never arrived (counted at series end)",
    "failed": "frames whose payload did not decode on their worker, or an operator raised on",
}


class Metrics:
    """The registry ``/metrics`` exposes.

    Parameters
    ----------
    status : the service's status now (``Service.status``), or None to use the last
        heartbeat the state received (``livediff view``).
    """

    def __init__(self, status: Callable[[], dict[str, Any]] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.latency = Histogram("livediff_frame_latency_seconds", "per-frame latency, decoding to end of processing",
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self._status = status
        self._state: LiveState | None = None
        self._shown: dict[str, float] = dict.fromkeys(_COUNTERS, 0)

    def watch(self, state: LiveState) -> None:
        """Read the counts from ``state`` (and register the collector)."""
        self._state = state
        self.registry.register(self)

    def collect(self) -> Iterator[Metric]:
        """Called by ``prometheus_client`` on each scrape."""
        state = self._state
        status = self._status() if self._status is not None else (state.status or {})
        open_received = 0
        if state.header is not None and state.summary is None and status.get("series") == state.header.get("series"):
            open_received = status.get("received") or 0
        values = {
            "received": state.totals["received"] + open_received,
            "processed": state.frames_total,
            "dropped": status.get("dropped", state.totals["dropped"]),
            "bad": status.get("bad", state.totals["bad"]),
            "lost": state.totals["lost"],
            "failed": status.get("total_failed", state.totals["failed"]),
        }
        for name, help_ in _COUNTERS.items():
            self._shown[name] = max(self._shown[name], float(values[name]))  # a counter never goes down
            yield CounterMetricFamily(f"livediff_frames_{name}", help_, value=self._shown[name])
        yield GaugeMetricFamily("livediff_queue_depth", "events waiting for the processor",
                                value=float(status.get("queue") or 0))
        yield GaugeMetricFamily("livediff_frames_per_second", "frames processed per second, over the last 2 s",
                                value=float(status.get("fps") or 0.0))

    def describe(self) -> list[Metric]:
        return []

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
