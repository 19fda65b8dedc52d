"""``livediff report FILE``: the per-image table of a series file, in the spirit of DIALS' per-image analysis.

Reads the frames table of a livediff series file (``/entry/livediff/frames``), finished
or still being written (SWMR), and gives one row per frame, in frame order: the ``mx``
operator's figures (``n_spots_total``, ``n_spots_no_ice``, ``n_spots_4A``,
``total_intensity``, ``estimated_d_min``, ``hit``) where the chain had one, else the
``spots`` operator's ``n_spots``.  The summary counts frames and hits and names the
frame with the best (smallest) estimated d_min.  Frames are numbered from 0, as
everywhere in livediff (DIALS' table numbers images from 1).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import h5py
import numpy as np

#: (figure, heading, format) in table order
FIGURES = (("n_spots_total", "#spots", "{:d}"), ("n_spots_no_ice", "#spots_no_ice", "{:d}"),
           ("n_spots_4A", "#spots_4A", "{:d}"), ("total_intensity", "total_intensity", "{:.0f}"),
           ("estimated_d_min", "d_min", "{:.2f}"), ("hit", "hit", "{:d}"))


def load_report(path: str | Path) -> dict[str, Any]:
    """The per-image figures of the series file at ``path``.

    Returns
    -------
    dict: ``file``, ``ended`` (the series ended and the file was closed; False while it is
    written), ``complete`` and ``incomplete`` (the file's summary: every announced frame
    received, processed and written, else what is missing), ``columns``
    (the figures present), ``frames`` (one dict per frame: ``frame`` and the figures;
    NaN -> None) and ``summary`` (``frames``, ``hits`` and ``hit_rate`` when hits are
    known, ``best_d_min`` and ``best_frame`` when a d_min was estimated).

    Raises
    ------
    OSError
        If the file cannot be opened.
    ValueError
        If it is not a livediff series file, or its chain produced no per-image figures.
    """
    with h5py.File(path, "r", swmr=True) as f:
        if "entry/livediff/frames" not in f:
            raise ValueError(f"{path}: not a livediff series file (no /entry/livediff/frames)")
        table = f["entry/livediff/frames"][:]
        ended = "entry/end_time" in f and bool(f["entry/end_time"][()])
        summary_row = f["entry/livediff/summary"][0]
    complete = ended and bool(summary_row["complete"])
    incomplete = summary_row["incomplete"].decode() if "incomplete" in summary_row.dtype.names else ""
    names = table.dtype.names
    found = {figure: column for figure, column in ((fig, _column(names, fig)) for fig, _, _ in FIGURES) if column}
    if not found:
        spots = _column(names, "n_spots")
        if spots is None:
            raise ValueError(f"{path}: no per-image figures: the chain had neither an mx nor a spots operator")
        found = {"n_spots_total": spots}
    table = np.sort(table, order="frame")
    frames = [{"frame": int(row["frame"]), **{fig: _plain(row[col]) for fig, col in found.items()}} for row in table]
    summary: dict[str, Any] = {"frames": len(frames)}
    if "hit" in found:
        hits = int(np.sum(table[found["hit"]]))
        summary.update(hits=hits, hit_rate=hits / len(frames) if frames else None)
    if "estimated_d_min" in found:
        d = table[found["estimated_d_min"]]
        if np.isfinite(d).any():
            best = int(np.nanargmin(d))
            summary.update(best_d_min=float(d[best]), best_frame=int(table["frame"][best]))
    return {"file": str(path), "ended": ended, "complete": complete, "incomplete": incomplete if ended else "",
            "columns": list(found), "frames": frames, "summary": summary}


def format_report(report: dict[str, Any]) -> str:
    """The report as an aligned text table with a summary line."""
    shown = [(fig, head, fmt) for fig, head, fmt in FIGURES if fig in report["columns"]]
    lines = [["frame", *(head for _, head, _ in shown)]]
    for row in report["frames"]:
        lines.append([str(row["frame"]), *("" if row[fig] is None else fmt.format(row[fig]) for fig, _, fmt in shown)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    text = ["  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    s = report["summary"]
    parts = [f"{s['frames']} frames"]
    if "hits" in s:
        parts.append(f"{s['hits']} hits ({100 * s['hit_rate']:.1f} %)" if s["frames"] else "0 hits")
    if "best_d_min" in s:
        parts.append(f"best d_min {s['best_d_min']:.2f} Å (frame {s['best_frame']})")
    state = (" (still being written, or not closed)" if not report["ended"]
             else f" (incomplete: {report['incomplete']})" if report["incomplete"] else "")
    text.append(f"{report['file']}: {', '.join(parts)}{state}")
    return "\n".join(text)


def _column(names: tuple[str, ...], figure: str) -> str | None:
    """The frames-table column of ``figure``: its plain name, or the first ``LABEL.figure``."""
    if figure in names:
        return figure
    return next((n for n in names if n.endswith("." + figure)), None)


def _plain(value: Any) -> Any:
    value = value.item()
    return None if isinstance(value, float) and math.isnan(value) else value
