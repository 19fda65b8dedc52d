"""Service-level fuzzing, the run: a service in this process, fed batches of :mod:`.fuzz` messages.

:class:`FuzzRun` runs a service on a thread of its own, sends batches into it and, after
each, a good series, then lists what is wrong (:meth:`FuzzRun.check`): the service
stopped, memory grew beyond a bound, a message or an event not accounted for exactly, or
a good series unlike a clean run.  ``tests/test_fuzz_service.py`` drives it with
hypothesis (a few thousand messages in CI); ``livediff bench --fuzz N`` sends N messages
per protocol (:func:`run`).
"""
from __future__ import annotations

import asyncio
import resource
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from ..config import parse
from .fuzz import GOOD_FRAMES, PROTOCOLS, Fuzzer, Message, fixture_messages

_TIMING = ("timestamp", "received", "latency_s")   # wall-clock columns, different on every run


class FuzzRun:
    """A service running in this process on a thread, fed through one PUSH socket (in order).

    Parameters
    ----------
    protocol : the service's ``source.protocol``.
    directory : where its HDF5 files go.
    rss_limit_mb : how far the resident set may grow above its size at the start.
    """

    def __init__(self, protocol: str, directory: Path, *, rss_limit_mb: float = 1024.0) -> None:
        from ..service import Service

        self.protocol = protocol
        self.rss_limit_mb = rss_limit_mb
        self.config = parse({
            "source": {"protocol": protocol, "endpoint": "tcp://127.0.0.1:*", "bind": True, "end_timeout": 30.0,
                       "max_frame_pixels": 1 << 25, "max_frame_mb": 64},
            "publisher": {"endpoint": "tcp://127.0.0.1:*", "status_period": 1.0},
            "output": {"directory": str(directory), "flush_seconds": 0.5},
            "operators": {"flatfield": {}, "summary": {}},
        }, origin="fuzz")
        self.service = Service(self.config)
        self.sent = 0
        self.good_number = 10**6
        self.reference: np.ndarray | None = None
        self._crash: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._serve, name="fuzzed-service", daemon=True)
        self._ctx = zmq.Context()
        self._push = self._ctx.socket(zmq.PUSH)
        self._rss0 = _rss_mb()

    def __enter__(self) -> FuzzRun:
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self.service.ready.is_set():
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the service did not start: {self._crash!r}")
            time.sleep(0.01)
        self._warm_up()
        self._push.setsockopt(zmq.SNDHWM, 1000)
        self._push.connect(self.service.receiver.endpoint_bound)
        return self

    def _warm_up(self) -> None:
        """Compile the chain for every pixel type, with and without a mask, before the fuzzing: the
        executor warms up once per (pixel type, mask), so the batches' timing does not depend on
        which fuzzed header first brings a new pixel type."""
        from ..model import FRAME_DTYPES, SeriesStart

        for dtype in FRAME_DTYPES:
            for mask in (None, np.ones((16, 16), bool)):
                start = SeriesStart(0, (16, 16), dtype, mask=mask)
                asyncio.run_coroutine_threadsafe(self.service.executor.warm_up(start), self._loop).result(300)

    def __exit__(self, *exc: Any) -> None:
        self._push.close(linger=0)
        self._ctx.term()
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self.service.stopping.set)
        self._thread.join(60)

    def _serve(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            await self.service.run()
        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - reported by check(): the service must not die
            self._crash = exc

    def send(self, messages: list[Message]) -> None:
        for parts in messages:
            self._push.send_multipart(parts)
        self.sent += len(messages)

    def good_series(self, fuzzer: Fuzzer, timeout: float = 60.0) -> dict[str, Any]:
        """Send the good series and wait for its end; the first one is the clean reference."""
        self.good_number += 1
        self.send(fuzzer.good(self.good_number))
        deadline = time.monotonic() + timeout
        while True:
            done = [s for s in list(self.service.series_done) if s["series"] == self.good_number]
            if done:
                summary = done[-1]
                break
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise AssertionError(f"{self.protocol}: good series {self.good_number} never ended "
                                     f"(service alive: {self._thread.is_alive()}, crash: {self._crash!r})")
            time.sleep(0.01)
        rows = _frame_rows(summary["file"])
        if self.reference is None:
            self.reference = rows
        return summary

    def check(self, good: dict[str, Any]) -> list[str]:
        """What is wrong after a batch and its good series (empty: nothing).

        Checks that the service runs; the peak and current resident set grew less than
        ``rss_limit_mb``; ``sent = messages = bad + silent + decoded``; every event has
        one fate (``events = starts + ends + ends_ignored + received + duplicates + stray
        + orphans``); ``bad = bad in a series + bad outside one``; every series started
        has ended once (``starts = closed`` = series ends handed to the sinks); the
        series ends add up to the tracker's received, bad, duplicates and stray; no frame
        was dropped, and none failed but for a payload that did not decode on its worker
        (well framed, corrupt inside); and the good series is complete with the clean rows.
        """
        problems = []
        if not self._thread.is_alive() or self.service.stopping.is_set():
            problems.append(f"the service stopped: {self._crash!r}")
        grew = max(_peak_rss_mb() - self._rss0, _rss_mb() - self._rss0)
        if grew > self.rss_limit_mb:
            problems.append(f"memory grew by {grew:.0f} MB (limit {self.rss_limit_mb:.0f} MB)")
        a = self.service.receiver.accounting()
        t = {k: a.get(k, 0) for k in ("starts", "ends", "ends_ignored", "received", "duplicates", "stray", "orphans",
                                      "bad_in_series", "bad_outside", "closed")}
        ended = list(self.service.series_done)
        identities = {
            "sent = messages": (self.sent, a["messages"]),
            "messages = bad + silent + decoded": (a["messages"], a["bad"] + a["silent"] + a["decoded"]),
            "events = starts + ends + ends_ignored + received + duplicates + stray + orphans":
                (a["events"], sum(t[k] for k in ("starts", "ends", "ends_ignored", "received", "duplicates", "stray",
                                                 "orphans"))),
            "bad = bad in a series + bad outside one": (a["bad"], t["bad_in_series"] + t["bad_outside"]),
            "starts = series closed (none open)": (t["starts"], t["closed"]),
            "series closed = series ends written": (t["closed"], len(ended)),
            **{f"tracker {k} = sum of series ends' {end}": (t[k], sum(s[end] for s in ended))
               for k, end in (("received", "received"), ("bad_in_series", "bad"), ("duplicates", "duplicates"),
                              ("stray", "stray"))},
            "frames processed + failed = received":
                (sum(s["processed"] + s["failed"] for s in ended), t["received"]),
            # a payload whose framing checks out at the receiver may still be corrupt inside: its worker
            # fails that frame alone; no frame fails for any other reason
            "frames failed = frames whose payload did not decode":
                (sum(s["failed"] for s in ended), self.service.run_loop.totals["undecodable"]),
        }
        problems += [f"{name}: {left} != {right}" for name, (left, right) in identities.items() if left != right]
        if (good["received"], good["processed"], good["expected"], good["bad"], good["lost"], good["reason"]) != (
                GOOD_FRAMES, GOOD_FRAMES, GOOD_FRAMES, 0, 0, "end"):
            problems.append(f"good series {good['series']} not complete: {good}")
        differ = _differences(_frame_rows(good["file"]), self.reference)
        if differ:
            problems.append(f"good series {good['series']}: frames table differs from the clean run: {differ}")
        return problems


def _frame_rows(path: str, timeout: float = 30.0) -> np.ndarray:
    """The frames table of the series file ``path`` once its summary is written (the writer is a thread)."""
    import h5py

    deadline = time.monotonic() + timeout
    while True:
        try:
            with h5py.File(path, "r", swmr=True) as f:
                if f["entry/livediff/summary"][0]["reason"]:
                    return f["entry/livediff/frames"][:]
        except (OSError, KeyError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: no summary written within {timeout:g} s")
        time.sleep(0.02)


def _differences(rows: np.ndarray, reference: np.ndarray) -> str:
    """Which columns (but the wall-clock ones) of two frames tables differ, and how; empty if none."""
    if rows.dtype.names != reference.dtype.names or len(rows) != len(reference):
        return f"columns {rows.dtype.names}, {len(rows)} rows; clean: {reference.dtype.names}, {len(reference)} rows"
    return "; ".join(f"{c} {rows[c].tolist()} != {reference[c].tolist()}" for c in reference.dtype.names
                     if c not in _TIMING and not np.array_equal(rows[c], reference[c],
                                                                equal_nan=rows[c].dtype.kind == "f"))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mb() -> float:
    """The resident set now (Linux ``/proc``), else the peak."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return _peak_rss_mb()
    return pages * resource.getpagesize() / (1 << 20)


# ---------------------------------------------------------------------- livediff bench --fuzz N
def run(n: int, *, seed: int = 0, batch: int = 200, protocols: tuple[str, ...] = PROTOCOLS) -> int:
    """Send ``n`` random and mutated messages per protocol into a service, ``batch`` at a time, a
    good series after each batch; print one line per protocol.  Returns the number of problems."""
    problems = 0
    for protocol in protocols:
        fuzzer = Fuzzer(protocol, seed, fixtures=fixture_messages(protocol))
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp, FuzzRun(protocol, Path(tmp)) as fuzz:
            fuzz.good_series(fuzzer)
            sent = 0
            while sent < n:
                messages = fuzzer.batch(min(batch, n - sent))
                fuzz.send(messages)
                sent += len(messages)
                found = fuzz.check(fuzz.good_series(fuzzer))
                for line in found:
                    print(f"{protocol}: after {sent} messages: {line}", flush=True)
                problems += len(found)
                if found:
                    break
            a = fuzz.service.receiver.accounting()
        print(f"{protocol}: {sent} messages ({a['bad']} bad, {a['silent']} silent, {a['decoded']} decoded; "
              f"{a.get('closed', 0)} series) in {time.perf_counter() - t0:.1f} s, peak RSS {_peak_rss_mb():.0f} MB: "
              f"{'ok' if not problems else 'FAILED'}", flush=True)
    return problems
