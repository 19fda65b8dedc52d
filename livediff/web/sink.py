"""The live page as a sink of the service: :class:`LiveView`."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ..outputs import FrameOutput, Reductions, SeriesContext
from .metrics import Metrics
from .server import LiveServer
from .settings import HttpSettings
from .state import Declared, LiveState


class LiveView:
    """A :class:`~livediff.sinks.base.Sink` keeping the page's state, and the server showing it.

    Every sink call is O(1) and keeps references only (the latest frame is not copied):
    all rendering happens in the server's throttled ticker, off the event loop.

    Parameters
    ----------
    settings : the ``[http]`` settings.
    status : the service's status now (``Service.status``, the heartbeat's content).
    protocol : the source's protocol, shown in the series header.
    control : runs a live-control request (see :class:`~.server.LiveServer`), or None.
    """

    # The preview shows the output frame when the executor has it in this process and the
    # received frame otherwise: shipping every output frame back from Dask workers for a
    # throttled preview would cost more than the preview is worth.
    wants_output = False

    def __init__(self, settings: HttpSettings, *, status: Callable[[], dict[str, Any]], protocol: str,
                 control: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]] | None = None) -> None:
        self._status = status
        self._protocol = protocol
        self.metrics = Metrics(status)
        self.state = LiveState(settings, source="the service", on_latency=self.metrics.latency.observe)
        self.metrics.watch(self.state)
        self.server = LiveServer(settings, self.state, self.metrics, status=status, control=control)

    async def start(self) -> None:
        """Serve the page.

        A port in use stops the service (OSError, one line): a service running without the
        page its users expect is easily missed, and the page they would open might be another
        service's on that port.
        """
        try:
            await self.server.start()
        except OSError as exc:
            raise OSError(f"{exc}; set [http] port to a free port, or run without the page (--no-http)") from None

    async def stop(self) -> None:
        await self.server.close()

    # ------------------------------------------------------------------ the sink
    def start_series(self, series: SeriesContext) -> dict[str, Any]:
        start, layout = series.start, series.layout
        output = layout.output or start
        header = {"series": start.series, "protocol": self._protocol, "shape": list(start.shape),
                  "dtype": start.dtype, "n_frames": start.n_frames, "count_time": start.count_time,
                  "file": series.facts.get("file"), "config_hash": series.config_hash,
                  "scan": list(start.scan.shape) if start.scan else None, "meta": dict(start.meta)}
        self.state.set_status(self._status())  # the counts of this series start from here
        self.state.start_series(header, Declared.of(layout), output.mask)
        return {}

    def add_frame(self, out: FrameOutput) -> None:
        # the pixels as received when no output frame is here; decoded only if the page renders them
        image = out.output if out.output is not None else out.received if out.received is not None else out.pixels
        self.state.add_frame(out.index, out.row, out.arrays, out.rows, image)

    def add_rows(self, series: int, index: int, rows: dict[str, dict[str, Any]], epoch: int) -> None:
        for label, columns in rows.items():
            self.state.add_rows(label, index, columns)

    def write_reductions(self, reductions: Reductions) -> None:
        for label in {**reductions.values, **reductions.maps}:
            self.state.add_reductions(label, {**reductions.values.get(label, {}), **reductions.maps.get(label, {})})

    def end_series(self, summary: dict[str, Any]) -> dict[str, Any]:
        self.state.end_series(summary)
        return {}

    def close(self) -> None:
        """Nothing to flush: the server stops with :meth:`stop` (it needs the event loop)."""
