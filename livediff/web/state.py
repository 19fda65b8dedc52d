"""The latest state of the series the page shows, and the page's parts rendered from it.

:class:`LiveState` keeps only what the page needs, latest-only: the series header and
the outputs the chain declared, the counts, a bounded history of the per-frame columns
(:mod:`.history`), the latest frame (a reference, no copy), the latest per-frame arrays
and rows (spots), and the latest reductions.  Every update is O(1) on the event loop;
nothing grows with the number of frames.  It is fed by :class:`~livediff.web.sink.LiveView`
inside the service, or from the PUB socket by ``livediff view`` (:mod:`.view`).

:meth:`LiveState.collect` hands out the parts that changed since the last call, each as
a function building its JSON-ready payload, to run off the event loop.  A part is a
panel of the page: ``header``, ``counts``, ``latest``, ``banners``, ``image:frame`` (the
latest frame with its spots), ``image:LABEL.NAME`` (2-D reductions and per-frame arrays),
``profile:LABEL`` (1-D ones, against ``q`` or ``radius`` when the operator has them) and
``values:LABEL`` (reductions of a few numbers).  The per-frame columns travel separately,
as rows since what a client already has (:attr:`LiveState.history`).
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .history import History
from .render import finite_list, image_payload, scalar
from .settings import HttpSettings

#: a drop, bad message or failure this recent (s) keeps its banner up
RECENT_S = 10.0
#: the status counters whose rise raises a banner
_TROUBLE = ("dropped", "bad", "total_failed")
#: an open series with no frame for this long (s) raises the "stream stopped" banner
STALL_S = 5.0
#: livediff view: no heartbeat for this long (s) raises the "service silent" banner
SILENT_S = 5.0
#: spots drawn over the latest frame, at most
MAX_SPOTS = 5000
#: a reduction of at most this many values is shown as numbers, not a plot
FEW_VALUES = 8
#: columns every frame has that are not worth a plot
NOT_PLOTTED = ("frame", "timestamp", "received", "epoch")
#: 1-D reductions that are an axis for the operator's other 1-D outputs, preferred first
AXES = (("q", "q (1/Å)"), ("radius", "radius (px)"))


@dataclass
class Declared:
    """The outputs a chain declared for a series, as the page lays them out.

    ``owners`` maps each frames-table column to its operator label ("" for livediff's own
    columns); ``arrays``, ``reductions`` map label -> name -> shape; ``rows`` label -> columns.
    """

    columns: dict[str, str] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)
    arrays: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    reductions: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    rows: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def of(cls, layout: Any) -> Declared:
        """From a :class:`~livediff.outputs.Layout`; scan maps show as reductions of the scan's shape."""
        reductions = {lb: {n: list(s) for n, (s, _) in d.items()} for lb, d in layout.reductions.items()}
        scan = getattr(layout, "scan", None)
        for label, names in (getattr(layout, "maps", None) or {}).items():
            if scan is not None:
                reductions.setdefault(label, {}).update({n: list(scan.shape) for n in names})
        return cls(columns=dict(layout.columns), owners={c: layout.owners.get(c, ("",))[0] for c in layout.columns},
                   arrays={lb: {n: list(s) for n, (s, _) in d.items()} for lb, d in layout.arrays.items()},
                   reductions=reductions, rows={lb: list(d) for lb, d in layout.rows.items()})

    def plotted(self) -> list[str]:
        """Numeric columns worth a plot over the series."""
        return [c for c, dtype in self.columns.items() if c not in NOT_PLOTTED and dtype[:1] in "iuf?b"]

    def as_json(self) -> dict[str, Any]:
        groups: dict[str, list[str]] = {}
        for column in self.columns:
            groups.setdefault(self.owners.get(column, ""), []).append(column)
        return {"columns": groups, "arrays": self.arrays, "reductions": self.reductions, "rows": self.rows}


class LiveState:
    """The latest state of the open (or last) series.

    Parameters
    ----------
    settings : the ``[http]`` settings (history length, image size, contrast, hit threshold).
    source : where the data comes from, for the banners (the service, or the PUB endpoint).
    remote : True when fed from a PUB socket: a missing heartbeat raises a banner.
    on_latency : called with each frame's ``latency_s`` (the metrics' histogram).
    """

    def __init__(self, settings: HttpSettings, *, source: str, remote: bool = False,
                 on_latency: Callable[[float], None] | None = None, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.source = source
        self.remote = remote
        self.on_latency = on_latency
        self.clock = clock
        self.epoch = 0
        self.history = History(settings.history, settings.hit_min_spots)
        self.status: dict[str, Any] | None = None
        self.status_at: float | None = None
        self.frames_total = 0  # frames processed, every series
        self.totals = dict.fromkeys(("received", "lost", "dropped", "bad", "failed", "processed"), 0)
        self._samples: dict[str, deque[tuple[float, float]]] = {k: deque() for k in _TROUBLE}  # (when, value)
        self._reset(None, Declared(), None)

    def _reset(self, header: dict[str, Any] | None, declared: Declared, mask: np.ndarray | None) -> None:
        self.header = header
        self.declared = declared
        self.mask = mask
        self.history.reset(declared.plotted())
        self.summary: dict[str, Any] | None = None
        self.processed = 0
        self.last_frame: int | None = None
        self.started_at = self.last_frame_at = self.clock()
        self.latest_row: dict[str, Any] = {}
        self.latest_arrays: dict[str, dict[str, np.ndarray]] = {}
        self.latest_rows: dict[str, tuple[int, dict[str, np.ndarray]]] = {}
        self.image: tuple[int, np.ndarray | Callable[[], np.ndarray], np.ndarray | None] | None = None
        self.reductions: dict[str, dict[str, np.ndarray]] = {}
        self._dirty: set[str] = {"header", "counts", "latest"}

    # ------------------------------------------------------------------ updates (on the event loop)
    def start_series(self, header: dict[str, Any], declared: Declared, mask: np.ndarray | None = None) -> None:
        """A series starts: forget the last one.  ``mask`` (True = valid) applies to the frames shown."""
        self.epoch += 1
        self._reset(dict(header), declared, mask)

    def declare(self, *, columns: dict[str, str] | None = None, arrays: dict[str, dict[str, list[int]]] | None = None,
                reductions: dict[str, dict[str, list[int]]] | None = None,
                rows: dict[str, list[str]] | None = None) -> None:
        """Add outputs seen in messages but not declared (``livediff view`` learns the layout so)."""
        d = self.declared
        columns, arrays, reductions, rows = columns or {}, arrays or {}, reductions or {}, rows or {}
        new = [c for c in columns if c not in d.columns]
        for c in new:
            d.columns[c] = columns[c]
            d.owners[c] = c.rpartition(".")[0]
        for mine, theirs in ((d.arrays, arrays), (d.reductions, reductions)):
            for label, names in theirs.items():
                for name, shape in names.items():
                    if mine.setdefault(label, {}).get(name) != shape:
                        mine[label][name] = shape
                        self._dirty.add("header")
        for label, cols in rows.items():
            if label not in d.rows:
                d.rows[label] = list(cols)
                self._dirty.add("header")
        if new:
            self.history.add_columns([c for c in new if c in d.plotted()])
            self._dirty.add("header")

    def add_frame(self, index: int, row: dict[str, Any], arrays: dict[str, dict[str, np.ndarray]],
                  rows: dict[str, dict[str, np.ndarray]],
                  image: np.ndarray | Callable[[], np.ndarray] | None = None) -> None:
        """One processed frame: its row, per-frame arrays, rows and (in the service) its pixels, or
        what gives them (called when the page renders, off the event loop: it may decode the frame)."""
        self.processed += 1
        self.frames_total += 1
        self.last_frame = index
        self.last_frame_at = self.clock()
        self.latest_row = row
        self.history.append(index, row)
        if arrays:
            self.latest_arrays = arrays
            self._dirty.update(self._array_parts(arrays))
        for label, columns in rows.items():
            self.add_rows(label, index, columns)
        if image is not None:
            self.image = (index, image, self.mask)
            self._dirty.add("image:frame")
        latency = row.get("latency_s")
        if self.on_latency is not None and isinstance(latency, (int, float)):
            self.on_latency(latency)
        self._dirty.update(("counts", "latest"))

    def add_rows(self, label: str, index: int, columns: dict[str, np.ndarray]) -> None:
        """Rows (spots) an operator completed with frame ``index``."""
        self.latest_rows[label] = (index, columns)
        self._dirty.update(("latest", "image:frame"))

    def add_reductions(self, label: str, values: dict[str, Any]) -> None:
        """An operator's running (or final) reductions."""
        self.reductions[label] = values
        self._dirty.update(self._reduction_parts(label, values))

    def end_series(self, summary: dict[str, Any]) -> None:
        """The series ended with ``summary`` (the ``series``/``end`` message's counts)."""
        self.summary = dict(summary)
        for key in self.totals:
            value = summary.get(key)
            self.totals[key] += value if isinstance(value, int) else 0
        self._dirty.update(("counts", "header"))

    def set_status(self, status: dict[str, Any]) -> None:
        """The service's latest status (its heartbeat's content)."""
        now = self.clock()
        for key, samples in self._samples.items():
            value = status.get(key)
            if isinstance(value, (int, float)):
                samples.append((now, value))
                while len(samples) > 1 and samples[1][0] <= now - RECENT_S:
                    samples.popleft()
        self.status = status
        self.status_at = now
        self._dirty.add("counts")

    # ------------------------------------------------------------------ what the page shows
    def counts(self) -> dict[str, Any]:
        """Frames received / processed / dropped / bad / lost / failed, rate, queue, uptime."""
        st = self.status or {}
        s = self.summary
        running = self.header is not None and s is None
        series = None if self.header is None else self.header.get("series")
        same = running and st.get("series") == series
        # while a series runs, dropped / bad / failed are the service's since it started (the receiver runs
        # ahead of the pipeline, so a per-series split would be a guess); the series' own once it ended
        out = {"state": "running" if running else "ended" if s else "idle", "series": series,
               "n_frames": None if self.header is None else self.header.get("n_frames"),
               "processed": self.processed, "last_frame": self.last_frame,
               "received": st.get("received") if same else None, "dropped": st.get("dropped"),
               "bad": st.get("bad"), "failed": st.get("total_failed"), "lost": None, "scope": "since start",
               "fps": st.get("fps"), "queue": st.get("queue"), "uptime_s": st.get("uptime_s")}
        if s is not None:
            out.update({k: s.get(k) for k in ("received", "processed", "dropped", "bad", "lost", "failed", "reason",
                                              "expected")}, scope="series")
        return out

    def banners(self) -> list[dict[str, str]]:
        """What needs attention now, most severe first: ``{"level": error|warning|info|ok, "text"}``."""
        now = self.clock()
        out: list[dict[str, str]] = []
        if self.remote and (self.status_at is None or now - self.status_at > SILENT_S):
            out.append(_banner("error", f"no heartbeat from {self.source}" if self.status_at is None else
                               f"no heartbeat from {self.source} for {now - self.status_at:.0f} s: "
                               f"is the service running?"))
        running = self.header is not None and self.summary is None
        if running and now - self.last_frame_at > STALL_S:
            out.append(_banner("warning", f"no frame for {now - self.last_frame_at:.0f} s: "
                                          f"has the stream stopped?"))
        recent = {k: self._increase(k) for k in self._samples}
        if recent["bad"]:
            out.append(_banner("error", f"malformed input: {recent['bad']:.0f} messages failed to decode in the last "
                                        f"{RECENT_S:.0f} s (see the service log)"))
        if recent["total_failed"]:
            out.append(_banner("error", f"an operator failed on {recent['total_failed']:.0f} frames in the last "
                                        f"{RECENT_S:.0f} s (see the service log)"))
        if recent["dropped"]:
            out.append(_banner("warning", f"dropping frames: {recent['dropped']:.0f} dropped in the last "
                                          f"{RECENT_S:.0f} s (the chain does not keep up)"))
        s = self.summary
        if s is not None:
            trouble = [f"{s[k]} {k}" for k in ("lost", "dropped", "bad", "failed") if s.get(k)]
            text = (f"series {s.get('series')} ended ({s.get('reason')}): {s.get('processed')} of "
                    f"{s.get('expected')} frames processed" + (f", {', '.join(trouble)}" if trouble else ""))
            out.append(_banner("warning" if trouble or s.get("reason") != "end" else "ok", text))
        elif self.header is None:
            out.append(_banner("info", f"waiting for a series from {self.source}"))
        return out

    def _increase(self, key: str) -> float:
        """How much a status counter rose over the last :data:`RECENT_S` seconds (its samples)."""
        samples = self._samples[key]
        return samples[-1][1] - samples[0][1] if len(samples) > 1 else 0

    def latest(self) -> dict[str, Any]:
        rows = {label: {"frame": f, "n": _length(cols)} for label, (f, cols) in self.latest_rows.items()}
        return {"frame": self.last_frame, "values": {k: scalar(v) for k, v in self.latest_row.items()},
                "rows": rows, "hit_rates": self.history.hit_rates()}

    def header_part(self) -> dict[str, Any]:
        h = dict(self.header or {})
        h["meta"] = {str(k): _text(v) for k, v in (h.get("meta") or {}).items()}
        return {"series": h, "declared": self.declared.as_json(), "source": self.source,
                "hit_min_spots": self.settings.hit_min_spots, "history": self.settings.history}

    # ------------------------------------------------------------------ handing out the changed parts
    def collect(self) -> dict[str, Callable[[], Any]]:
        """The parts changed since the last call: key -> builder of its JSON-ready payload.

        Call on the event loop; the builders hold references to what they need (arrays
        are never written once handed over) and may run on any thread.  ``counts`` and
        ``banners`` are always included.
        """
        dirty, self._dirty = self._dirty, set()
        parts: dict[str, Callable[[], Any]] = {}
        counts, banners = self.counts(), self.banners()
        parts["counts"] = lambda: counts
        parts["banners"] = lambda: banners
        if "header" in dirty:
            header = self.header_part()
            parts["header"] = lambda: header
        if "latest" in dirty:
            latest = self.latest()
            parts["latest"] = lambda: latest
        settings = self.settings
        for key in dirty:
            kind, _, name = key.partition(":")
            if key == "image:frame":
                parts[key] = self._frame_builder()
            elif kind == "image":
                label, _, array = name.partition(".")
                value, source = self._array(label, array)
                if value is not None:
                    parts[key] = _image_builder(value, None, settings, source)
            elif kind == "profile":
                parts[key] = _profile_builder(name, self.latest_arrays.get(name, {}), self.reductions.get(name, {}))
            elif kind == "values":
                values = self.reductions.get(name, {})
                parts[key] = lambda values=values: {n: finite_list(v) for n, v in values.items()
                                                    if np.ndim(v) <= 1 and np.size(v) <= FEW_VALUES}
        return parts

    def series_rows(self, since: int) -> dict[str, Any]:
        """The per-frame columns from row ``since`` of the series (all of them the history holds: 0)."""
        return self.history.since(since)

    def _frame_builder(self) -> Callable[[], Any]:
        image = self.image
        spots = {}
        for label, (index, columns) in self.latest_rows.items():
            if "x" in columns and "y" in columns and (image is None or index == image[0]):
                spots[label] = {"frame": index, "x": columns["x"][:MAX_SPOTS], "y": columns["y"][:MAX_SPOTS],
                                "n": _length(columns)}
        shape = None if self.header is None else self.header.get("shape")
        settings = self.settings

        def build() -> dict[str, Any]:
            out: dict[str, Any] = {"frame": None if image is None else image[0], "image": None, "shape": shape,
                                   "spots": {lb: {"frame": s["frame"], "n": s["n"], "x": finite_list(s["x"]),
                                                  "y": finite_list(s["y"])} for lb, s in spots.items()}}
            if image is not None:
                pixels = image[1]() if callable(image[1]) else image[1]
                mask = image[2] if image[2] is not None and image[2].shape == pixels.shape else None
                out["image"] = image_payload(pixels, mask, max_side=settings.image_size, contrast=settings.contrast)
                out["shape"] = list(pixels.shape)
            return out
        return build

    def _array(self, label: str, name: str) -> tuple[np.ndarray | None, str]:
        if name in self.reductions.get(label, {}):
            return self.reductions[label][name], "reduction"
        return self.latest_arrays.get(label, {}).get(name), "latest frame"

    def _array_parts(self, arrays: dict[str, dict[str, Any]]) -> set[str]:
        keys = set()
        for label, values in arrays.items():
            for name, v in values.items():
                if np.ndim(v) == 1:
                    keys.add(f"profile:{label}")
                elif np.ndim(v) == 2:
                    keys.add(f"image:{label}.{name}")
        return keys

    def _reduction_parts(self, label: str, values: dict[str, Any]) -> set[str]:
        keys = set()
        for name, v in values.items():
            if np.size(v) <= FEW_VALUES:
                keys.add(f"values:{label}")
            elif np.ndim(v) == 1:
                keys.add(f"profile:{label}")
            elif np.ndim(v) == 2:
                keys.add(f"image:{label}.{name}")
        return keys


def _image_builder(value: np.ndarray, mask: np.ndarray | None, settings: HttpSettings,
                   source: str) -> Callable[[], Any]:
    return lambda: {"source": source, **image_payload(value, mask, max_side=settings.image_size,
                                                      contrast=settings.contrast)}


def _profile_builder(label: str, latest: dict[str, Any], reductions: dict[str, Any]) -> Callable[[], Any]:
    """1-D outputs of one operator on one plot: the latest frame's and the running ones."""
    def build() -> dict[str, Any]:
        axis = next(((name, title) for name, title in AXES if np.ndim(reductions.get(name)) == 1), None)
        x = None if axis is None else reductions[axis[0]]
        traces = []
        for source, values in (("latest", latest), ("running", reductions)):
            for name, v in values.items():
                if np.ndim(v) != 1 or np.size(v) <= FEW_VALUES or (axis and name in dict(AXES)):
                    continue
                if np.issubdtype(np.asarray(v).dtype, np.integer) and source == "running":
                    continue  # counts of the running reduction: not on the intensity scale
                xs = x if x is not None and len(x) == len(v) else np.arange(len(v))
                traces.append({"name": f"{name} ({source})", "x": finite_list(xs), "y": finite_list(v)})
        return {"label": label, "x_title": axis[1] if axis else "bin", "traces": traces}
    return build


def _banner(level: str, text: str) -> dict[str, str]:
    return {"level": level, "text": text}


def _length(columns: dict[str, Any]) -> int:
    return len(next(iter(columns.values()))) if columns else 0


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 500 else text[:497] + "..."
