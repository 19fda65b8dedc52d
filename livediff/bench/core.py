"""Side-by-side timing of our kernels and their peers, on the same frames in one process.

A benchmark family (``livediff/bench/<family>.py``) exposes ``cases(quick: bool) ->
list[Case]``.  For each case the runner first calls ``check`` (outputs of ours and the
peer must agree, else the row reports the disagreement instead of a speed), then times
both and reports frames/s and the ratio ours / peer.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Case:
    """One comparison: our implementation against one peer on the same input.

    Attributes
    ----------
    operator : what is measured, e.g. ``"running SEM"``.
    shape, dtype : of the input frames.
    ours : one call processes ``frames`` frames.
    peer : the peer's name (``"npstreams.isem"``); ``peer_fn`` runs it like ``ours``.
    check : compares the outputs of ours and the peer; raises AssertionError if they disagree.
    threads : threads ours uses.
    skipped : why the peer cannot run (e.g. not installed); ours is still timed.
    """

    operator: str
    shape: tuple[int, int]
    dtype: str
    ours: Callable[[], Any]
    peer: str
    peer_fn: Callable[[], Any] | None = None
    check: Callable[[], None] | None = None
    threads: int = 1
    frames: int = 1
    skipped: str | None = None


def frames_per_second(fn: Callable[[], Any], frames: int, min_seconds: float) -> float:
    """Median throughput of ``fn`` over repeated calls lasting at least ``min_seconds`` in all."""
    fn()  # warm-up: compilation, caches, allocations
    times: list[float] = []
    t_end = time.perf_counter() + min_seconds
    while len(times) < 3 or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return frames / statistics.median(times)


def run_case(case: Case, min_seconds: float) -> dict[str, Any]:
    """Check, then time, one case; returns a row of the benchmark table (DESIGN.md)."""
    row: dict[str, Any] = {"operator": case.operator, "shape": list(case.shape), "dtype": case.dtype,
                           "threads": case.threads, "ours_fps": None, "peer": case.peer, "peer_fps": None,
                           "ratio": None, "skipped": case.skipped}
    if case.check is not None and case.skipped is None:
        try:
            case.check()
        except AssertionError as exc:
            row["skipped"] = f"outputs disagree: {str(exc).strip().splitlines()[0][:200]}"
            return row
    row["ours_fps"] = frames_per_second(case.ours, case.frames, min_seconds)
    if case.peer_fn is not None and case.skipped is None:
        row["peer_fps"] = frames_per_second(case.peer_fn, case.frames, min_seconds)
        row["ratio"] = row["ours_fps"] / row["peer_fps"]
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    """Rows as an aligned text table."""
    head = ("operator", "frame", "dtype", "thr", "ours fr/s", "peer", "peer fr/s", "ratio")
    lines = [head]
    for r in rows:
        lines.append((
            r["operator"], "x".join(map(str, r["shape"])), r["dtype"], str(r["threads"]),
            "-" if r["ours_fps"] is None else f"{r['ours_fps']:.1f}", r["peer"],
            r["skipped"] if r["skipped"] else ("-" if r["peer_fps"] is None else f"{r['peer_fps']:.1f}"),
            "-" if r["ratio"] is None else f"{r['ratio']:.2f}x",
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


def skipped_peer(module: str) -> str:
    """The ``skipped`` text for a peer whose module is not installed."""
    return f"{module} not installed (pip install -e '.[bench]')"
