"""End-to-end load: does the service keep up with a detector, and if not, how far behind is it?

The service runs as its own process (``livediff serve``) with the user's chain; this
process streams simulated detector frames to it over loopback at the requested rate, in
the requested protocol, and listens to what it publishes.  The report gives the frames
sent and processed (and those processed but not saved: a disk slower than the stream),
sustained frames/s, latency from sending a frame to receiving its
result, the service's CPU use (cores, and µs per frame) and peak memory, the deepest
queue seen, drops, and the batches the run loop took frames in (mean and largest).
``find_max_rate`` raises the rate until frames are dropped (or not saved) and bisects to
the highest rate with none.
"""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

from ..client import Subscriber
from ..config import load
from ..endpoints import free_tcp_endpoint
from ..model import SeriesStart
from ..sources.sender import stream_series
from .web_clients import PageClients, RssSampler

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: name -> (rows, cols, dtype) of common detectors
DETECTORS: dict[str, tuple[int, int, str]] = {
    "eiger2-16m": (4362, 4148, "uint32"),
    "eiger2-4m": (2162, 2068, "uint32"),
    "eiger2-1m": (1062, 1028, "uint32"),
    "small": (256, 320, "uint16"),
}

_POOL = 8  # distinct frames, sent in turn


@dataclass
class LoadSource:
    """A detector series of ``n_frames`` cycling through a few pre-compressed simulated frames.

    Satisfies ``livediff.sources.sender.SeriesSource`` and forwards its bslz4 chunks, so the
    sender spends its time sending, not simulating; it notes when each frame left.
    """

    shape: tuple[int, int]
    dtype: str
    n_frames: int
    series: int = 1
    chunk_encoding: str = "bslz4"

    def __post_init__(self) -> None:
        from simulators import DiffractionSimulator

        from ..sources import codecs

        self._sim = DiffractionSimulator(shape=self.shape, dtype=self.dtype, n_frames=_POOL, series=self.series)
        self._frames = [self._sim.frame(i) for i in range(_POOL)]
        self._chunks = [codecs.encode_bslz4(f) for f in self._frames]
        self.sent_at = np.full(self.n_frames, np.nan)

    def series_start(self) -> SeriesStart:
        return dataclasses.replace(self._sim.series_start(), n_frames=self.n_frames)

    def frame(self, i: int) -> np.ndarray:
        self.sent_at[i] = time.time()
        return self._frames[i % _POOL]

    def chunk(self, i: int) -> bytes:
        self.sent_at[i] = time.time()
        return self._chunks[i % _POOL]


def run_load(*, detector: str = "eiger2-4m", rate: float = 100.0, seconds: float = 10.0,
             config: str | None = None, protocol: str = "native", encoding: str = "bslz4",
             overflow: str | None = None, workers: int | None = None, executor: str | None = None,
             scheduler: str | None = None, web_clients: int = 0, web_stalled: int = 0) -> dict[str, Any]:
    """Stream ``rate`` frames/s for ``seconds`` to a fresh service process; measure it.

    ``workers``, ``executor`` and ``scheduler`` override ``[pipeline]``; with the dask
    executor the CPU reported is the service's (the client's), the workers' excluded.
    ``web_clients`` pages read the live view throughout, ``web_stalled`` never read.
    """
    rows, cols, dtype = DETECTORS[detector]
    source = LoadSource((rows, cols), dtype, max(1, int(round(rate * seconds))))
    pipeline = {k: v for k, v in (("overflow", overflow), ("workers", workers), ("executor", executor),
                                  ("scheduler", scheduler)) if v is not None}
    web: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="livediff-e2e-") as tmp:
        cfg_path, source_ep, publish_ep, http_port = _service_config(Path(tmp), config, protocol, pipeline)
        settings = load(cfg_path).pipeline
        # its log goes to a file, not a pipe: a pipe read only at the end would stop the service at 64 KB of log
        log_path = Path(tmp) / "serve.log"
        with log_path.open("w") as log_file:
            proc = subprocess.Popen([sys.executable, "-m", "livediff", "--log-level", "warning", "serve",
                                     "--config", str(cfg_path), "--max-series", "1", "--no-progress"],
                                    stdout=subprocess.DEVNULL, stderr=log_file)
        listener = _Listener(publish_ep)
        pages = PageClients(http_port, web_clients, web_stalled) if web_clients or web_stalled else None
        try:
            listener.wait_ready(proc, log_path)
            if pages is not None:
                pages.start()
            rss = RssSampler(proc.pid)
            t0, cpu0 = time.perf_counter(), time.thread_time()
            listener.mark()
            sent = stream_series(source, source_ep, rate=rate, protocol=protocol, encoding=encoding)
            send_s, send_cpu = time.perf_counter() - t0, time.thread_time() - cpu0
            end = listener.wait_end(timeout=120 + seconds)
            web["rss_mb"] = rss.stop()
            if pages is not None:
                web.update(pages.stop())
            proc.wait(timeout=120)
        finally:
            listener.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if end is None:
            raise RuntimeError(f"the service did not end the series; its log:\n{_tail(log_path)}")
    latencies = np.array([t - source.sent_at[i] for i, t in listener.done.items()])
    done_times = np.array(sorted(listener.done.values()))
    active = done_times[-1] - done_times[0] if len(done_times) > 1 else np.nan
    return {
        "detector": detector, "shape": [rows, cols], "dtype": dtype, "protocol": protocol, "encoding": encoding,
        "rate": rate, "seconds": seconds, "sent": sent, "sent_fps": sent / send_s,
        "processed": end["processed"], "dropped": end["dropped"], "lost": end["lost"], "bad": end["bad"],
        "not_saved": end["not_saved"],
        "sustained_fps": (len(done_times) - 1) / active if active else None,
        "latency_ms": {f"p{q}": float(np.percentile(latencies, q) * 1e3) if latencies.size else None
                       for q in (50, 95, 99)},
        "first_latency_ms": (listener.done[0] - source.sent_at[0]) * 1e3 if 0 in listener.done else None,
        "executor": settings.executor, "workers": settings.workers,
        "cpu_cores": listener.cpu_cores(),
        "cpu_ms_per_frame": listener.cpu_ms_per_frame(),
        "sender_cpu_ms_per_frame": send_cpu / sent * 1e3 if sent else None,
        "mean_batch": listener.mean_batch(), "batch_max": listener.batch_max,
        "peak_rss_mb": listener.peak_rss_mb,
        "max_queue": listener.max_queue,
        **web,
    }


def find_max_rate(*, start: float = 50.0, seconds: float = 5.0, steps: int = 4, **kw: Any) -> dict[str, Any]:
    """Highest rate (frames/s) with no frame dropped or left unsaved, with ``overflow = "drop"``."""
    good, bad, runs = 0.0, None, []
    rate = start
    while bad is None and rate < 1e5:
        report = run_load(rate=rate, seconds=seconds, overflow="drop", **kw)
        runs.append(report)
        if _keeps_up(report):
            good, rate = rate, rate * 2
        else:
            bad = rate
    for _ in range(steps if bad is not None else 0):
        rate = (good + bad) / 2
        report = run_load(rate=rate, seconds=seconds, overflow="drop", **kw)
        runs.append(report)
        good, bad = (rate, bad) if _keeps_up(report) else (good, rate)
    return {"max_rate": good, "runs": runs}


def _tail(path: Path, size: int = 2000) -> str:
    """The end of a log file."""
    return path.read_text(errors="replace")[-size:]


def _keeps_up(report: dict[str, Any]) -> bool:
    return (report["dropped"] == 0 and report["not_saved"] == 0 and report["processed"] == report["sent"]
            and report["sent_fps"] >= 0.95 * report["rate"])


def _service_config(tmp: Path, config: str | None, protocol: str,
                    pipeline: dict[str, Any]) -> tuple[Path, str, str, int]:
    """Write the user's config with the source, publisher, output, page port and ``[pipeline]`` overrides the bench needs."""
    table = tomllib.loads(Path(config).read_text()) if config else {}
    source_ep, publish_ep = free_tcp_endpoint(), free_tcp_endpoint()
    http_port = int(free_tcp_endpoint().rsplit(":", 1)[1])
    table["http"] = {**table.get("http", {}), "host": "127.0.0.1", "port": http_port}
    table["control"] = {"endpoint": free_tcp_endpoint()}  # never the default port another service may hold
    table["source"] = {**table.get("source", {}), "protocol": protocol, "endpoint": source_ep, "bind": True,
                       "pattern": "pull"}
    table["publisher"] = {**table.get("publisher", {}), "endpoint": publish_ep, "status_period": 0.2}
    table["output"] = {**table.get("output", {}), "directory": str(tmp / "out")}
    table["pipeline"] = {**table.get("pipeline", {}), **pipeline}
    path = tmp / "e2e.toml"
    path.write_text(tomli_w.dumps(table))
    load(path)  # a config error shows here, in this process, as the usual one line
    return path, source_ep, publish_ep, http_port


class _Listener:
    """Subscribes to the service: readiness, per-frame completion times, queue depth, the series end."""

    def __init__(self, endpoint: str) -> None:
        self.done: dict[int, float] = {}
        self.max_queue = 0
        self.peak_rss_mb = 0.0
        self.batch_max = 0
        self._batches: list[tuple[int, int]] = []  # (total_processed, batches) of heartbeats since mark()
        self._cpu: list[tuple[float, float, int]] = []  # (uptime_s, cpu_s, processed) of heartbeats since mark()
        self._marked = False
        self.end: dict[str, Any] | None = None
        self._ready = threading.Event()
        self._ended = threading.Event()
        self._stop = threading.Event()
        self._endpoint = endpoint
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with Subscriber(self._endpoint, rcvhwm=0) as sub:
            while not self._stop.is_set():
                got = sub.recv(timeout=0.1)
                if got is None:
                    continue
                topic, msg = got
                now = time.time()
                if topic == "stats":
                    self.done[msg["frame"]] = now
                elif topic == "status":
                    self.max_queue = max(self.max_queue, msg["queue"])
                    self.peak_rss_mb = max(self.peak_rss_mb, msg["peak_rss_mb"])
                    if self._marked and self.end is None:
                        self._cpu.append((msg["uptime_s"], msg["cpu_s"], msg["total_processed"]))
                        self._batches.append((msg["total_processed"], msg["batches"]))
                        self.batch_max = max(self.batch_max, msg["batch_max"])
                    self._ready.set()
                elif topic == "series" and msg["type"] == "end":
                    self.end = msg
                    self._ended.set()

    def wait_ready(self, proc: subprocess.Popen, log_path: Path, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.2):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the service did not start: {_tail(log_path)}")

    def mark(self) -> None:
        """Streaming starts now: CPU use counts from the next heartbeat."""
        self._marked = True

    def cpu_cores(self) -> float | None:
        """Cores the service kept busy while the series ran (CPU seconds per second)."""
        if len(self._cpu) < 2:
            return None
        (t0, c0, _), (t1, c1, _) = self._cpu[0], self._cpu[-1]
        return (c1 - c0) / (t1 - t0)

    def cpu_ms_per_frame(self) -> float | None:
        """The service's CPU per processed frame, ms, from the first heartbeat after frames started
        to come out to the one that saw the last (series start and end left out)."""
        samples = [s for s in self._cpu if s[2] > self._cpu[0][2]] if self._cpu else []
        if len(samples) < 2:
            return None
        last = next(s for s in samples if s[2] == samples[-1][2])
        (_, c0, p0), (_, c1, p1) = samples[0], last
        return (c1 - c0) / (p1 - p0) * 1e3 if p1 > p0 else None

    def mean_batch(self) -> float | None:
        """Frames per batch the run loop took while the series ran."""
        if len(self._batches) < 2:
            return None
        (p0, b0), (p1, b1) = self._batches[0], self._batches[-1]
        return (p1 - p0) / (b1 - b0) if b1 > b0 else None

    def wait_end(self, timeout: float) -> dict[str, Any] | None:
        self._ended.wait(timeout)
        return self.end

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def format_report(r: dict[str, Any]) -> str:
    lat = r["latency_ms"]
    fmt = (lambda v, spec=".1f": "-" if v is None else format(v, spec))
    return (f"{r['detector']} {r['shape'][0]}x{r['shape'][1]} {r['dtype']}, {r['protocol']}/{r['encoding']}, "
            f"{r['executor']} x {r['workers']}, requested {r['rate']:.1f} fr/s for {r['seconds']:.0f} s\n"
            f"  sent {r['sent']} ({r['sent_fps']:.1f} fr/s)  processed {r['processed']}  dropped {r['dropped']}  "
            f"lost {r['lost']}  bad {r['bad']}  not saved {r['not_saved']}\n"
            f"  sustained {fmt(r['sustained_fps'])} fr/s  latency p50/p95/p99 {fmt(lat['p50'])}/{fmt(lat['p95'])}/"
            f"{fmt(lat['p99'])} ms (first frame {fmt(r['first_latency_ms'])} ms)  cpu {fmt(r['cpu_cores'])} cores, "
            f"{fmt(None if r['cpu_ms_per_frame'] is None else r['cpu_ms_per_frame'] * 1e3, '.0f')} us/frame "
            f"(sender thread {fmt(None if r.get('sender_cpu_ms_per_frame') is None else r['sender_cpu_ms_per_frame'] * 1e3, '.0f')} us/frame)  "
            f"peak RSS {r['peak_rss_mb']:.0f} MB  max queue {r['max_queue']}\n"
            f"  batches: mean {fmt(r['mean_batch'])} frames, largest {r['batch_max']}" + _format_web(r))


def _format_web(r: dict[str, Any]) -> str:
    rss = r.get("rss_mb") or {}
    line = ""
    if rss.get("first") is not None:
        line = f"\n  service RSS {rss['first']:.0f} -> {rss['last']:.0f} MB (max {rss['max']:.0f}) over the run"
    if r.get("web_clients") or r.get("web_stalled"):
        line += (f"\n  page clients: {r['web_clients']} reading ({r['web_messages']} updates, {r['web_mb']:.1f} MB), "
                 f"{r['web_stalled']} never reading")
    return line

