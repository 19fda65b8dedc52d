"""The wire format of what livediff publishes: topics, message layouts, the array codec.

Every published message is a two-part ZeroMQ multipart message: the topic as ASCII
bytes, then one msgpack map with at least ``"v"`` (this module's :data:`VERSION`) and
``"type"``.  Arrays travel as ``{"dtype": "<f4", "shape": [..], "data": <bytes>}``.

:data:`MESSAGES` holds every message's keys; one builder per topic and type
(:func:`series_start`, :func:`series_end`, :func:`stats_frame`, :func:`stats_frames`,
:func:`spots`, :func:`image_snapshot`, :func:`status_heartbeat`) returns the body that
:func:`encode` sends, and :func:`decode` checks what it reads against the same table.
The service, ``livediff.client``, ``livediff inspect`` and the tests all import this
module; no other module knows the layouts.  Bump :data:`VERSION` on any incompatible
change (a key removed or renamed); an added key keeps it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from .model import SeriesStart

VERSION = 1


@dataclass(frozen=True)
class KeySet:
    """The keys of one message type besides ``v`` and ``type``.

    ``keys`` maps each fixed key to a one-line description.  ``open`` is None when the
    message carries exactly ``keys``; otherwise it says what else it carries (keys named
    by the operators in the chain).
    """

    keys: dict[str, str]
    open: str | None = None


#: (topic, type) -> the keys of that message
MESSAGES: dict[tuple[str, str], KeySet] = {
    ("series", "start"): KeySet({
        "series": "series number, as the detector announced it",
        "shape": "[rows, cols] of every frame as received",
        "dtype": "numpy name of the pixel type as received",
        "n_frames": "frames announced, or null when unknown",
        "geometry": "map: beam_center [row, col] px, pixel_size [y, x] m, distance m, wavelength Å (each or null)",
        "scan": "[rows, cols] of the scan grid, or null",
        "count_time": "exposure per frame in s, or null",
        "config_hash": "digest of the service's configuration",
        "file": "HDF5 file the series is written to",
        "epoch": "configuration epoch in force at the series' start (0: the configuration the service started "
                 "with; each live change adds one)",
    }),
    ("series", "end"): KeySet({
        "series": "series number",
        "reason": "end | timeout | interrupted | shutdown",
        "expected": "frames announced (without an announcement: the highest frame number seen + 1)",
        "received": "frames that passed the decoder and the series check",
        "bad": "messages that failed to decode while the series was open",
        "duplicates": "frames whose number had arrived before (the copy is discarded)",
        "stray": "frames of another series, or numbered beyond the announced count",
        "lost": "frames expected that never arrived",
        "processed": "frames the chain processed",
        "failed": "frames whose payload did not decode on their worker, or an operator raised on",
        "dropped": "frames discarded by the drop overflow policy",
        "not_saved": "frames processed but not in the HDF5 file (the writer fell behind, or a write failed)",
        "file": "HDF5 file of the series, or null when it could not be created",
        "map_holes": "scan positions no frame filled (NaN in the maps), or null without scan maps",
        "resent": "frames processed again because the worker holding their contribution was lost (dask executor; "
                  "0 with threads)",
        "epoch": "configuration epoch in force at the series' end",
    }),
    ("stats", "frame"): KeySet({
        "series": "series number",
        "frame": "frame number, from 0",
        "timestamp": "acquisition time (s since the epoch) as the source reported it",
        "received": "when the frame was decoded (s since the epoch)",
        "latency_s": "from decoding to the end of processing, s",
        "epoch": "configuration epoch the frame was processed under",
    }, open="every operator's per-frame columns (the frames table's row), and each operator's per-frame "
            "arrays as a map under the operator's name"),
    ("stats", "frames"): KeySet({
        "series": "series number",
        "n": "number of frames, more than one: the frames a batch carried, in order",
        "frame": "frame numbers, an array of n",
        "timestamp": "acquisition times, an array of n",
        "received": "decoding times, an array of n",
        "latency_s": "latencies, an array of n",
        "epoch": "configuration epochs, an array of n",
    }, open="the stats/frame message of n frames in columns: every per-frame column as an array of n values "
            "(a list with nulls where a frame lacks it), each operator's per-frame arrays stacked (n first) in a "
            "map under the operator's name; livediff.client hands out the n stats/frame messages"),
    ("spots", "spots"): KeySet({
        "series": "series number",
        "frame": "frame whose processing completed the rows (in 3-D mode, the frame whose arrival did)",
        "epoch": "configuration epoch the rows were found under",
        "n": "number of rows",
    }, open="the operator's row columns, one array of n values each"),
    ("image", "snapshot"): KeySet({
        "series": "series number",
        "operator": "operator whose reductions these are",
        "frame": "last frame processed",
        "processed": "frames processed in the series so far",
        "final": "true for the snapshot at series end",
        "epoch": "configuration epoch in force; an operator a live change restarted counts from its first frame",
        "closed": "true for the last values of an epoch, sent when a live change restarts the operator",
    }, open="the operator's reductions and scan maps as arrays, every snapshot_period s and at series end"),
    ("status", "heartbeat"): KeySet({
        "uptime_s": "seconds since the service started",
        "fps": "frames processed per second, over the last 2 s",
        "series": "open series, or null",
        "n_frames": "frames the open series announced, or null",
        "received": "frames received in the open series",
        "processed": "frames processed in the open series",
        "dropped": "frames discarded by the drop overflow policy since start",
        "queue": "events waiting for the processor",
        "total_processed": "frames processed since start",
        "total_failed": "frames that failed (payload did not decode, or an operator raised) since start",
        "batches": "batches of frames taken from the queue since start (frames come in batches when they come "
                   "fast; total_processed / batches is the mean batch)",
        "batch_max": "the most frames taken as one batch since start",
        "messages": "source messages received since start",
        "bad": "source messages that failed to decode since start",
        "orphans": "frames that arrived with no series open",
        "open_series": "series the receiver has open, or null",
        "hdf5_not_saved": "frames processed but not in an HDF5 file since start (the series' not_saved, summed)",
        "hdf5_errors": "HDF5 write errors since start (one per file that failed, and per refused hand-over)",
        "published": "messages published since start",
        "cpu_s": "CPU seconds the service used",
        "peak_rss_mb": "peak resident memory, MiB",
        "ledger_frames": "frames the dask executor keeps to re-send if a worker is lost (0 with threads)",
        "ledger_mb": "MiB those frames and the versions of series-wide state they need hold",
        "epoch": "configuration epoch in force",
        "paused": "true while processing is paused (frames are received and queued up to the queue bound)",
    }),
}

#: topic -> message types it carries
TOPICS: dict[str, tuple[str, ...]] = {
    topic: tuple(type_ for t, type_ in MESSAGES if t == topic) for topic, _ in MESSAGES
}

_ARRAY_KEYS = frozenset(("dtype", "shape", "data"))


class SchemaError(ValueError):
    """A published message does not follow this schema."""


def encode_array(array: np.ndarray) -> dict[str, Any]:
    """Array -> msgpack-able map (little-endian, C order)."""
    a = np.ascontiguousarray(array)
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    return {"dtype": a.dtype.str, "shape": list(a.shape), "data": a.tobytes()}


def decode_array(obj: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`encode_array`; checks the byte count against dtype and shape."""
    dtype = np.dtype(obj["dtype"])
    shape = tuple(int(n) for n in obj["shape"])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(obj["data"]) != expected:
        raise SchemaError(f"array of {dtype} {shape} needs {expected} bytes, got {len(obj['data'])}")
    return np.frombuffer(obj["data"], dtype=dtype).reshape(shape)


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return encode_array(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"cannot put {type(obj).__name__} on the wire")


def _object_hook(obj: dict[str, Any]) -> Any:
    if obj.keys() == _ARRAY_KEYS and isinstance(obj["data"], bytes):
        return decode_array(obj)
    return obj


def encode(topic: str, type_: str, body: dict[str, Any]) -> list[bytes]:
    """Build the multipart message ``[topic, msgpack map]`` for ``topic``/``type_``.

    ``topic`` is one of :data:`TOPICS` carrying ``type_``, or an operator's label carrying
    the rows of its kind (``spots``) when one kind appears under several labels.
    """
    if type_ not in TOPICS.get(topic, ()) and (topic in TOPICS or _layout_of(type_) is None):
        raise SchemaError(f"topic {topic!r} carries no message type {type_!r}")
    payload = {"v": VERSION, "type": type_, **body}
    return [topic.encode("ascii"), msgpack.packb(payload, default=_default, use_bin_type=True)]


def decode(parts: list[bytes]) -> tuple[str, dict[str, Any]]:
    """Parse a published multipart message into ``(topic, message)``; arrays become numpy arrays.

    A message on a topic of :data:`TOPICS` must be of a type that topic carries and have
    every key :data:`MESSAGES` lists for it; keys beyond those are accepted, and so is
    any message on another topic (both for clients older than the service).

    Raises
    ------
    SchemaError
        When the message is not two parts, not msgpack, of another schema version, of a
        type its topic does not carry, or lacks keys.
    """
    if len(parts) != 2:
        raise SchemaError(f"expected 2 parts (topic, body), got {len(parts)}")
    topic = bytes(parts[0]).decode("ascii", "replace")
    try:
        msg = msgpack.unpackb(parts[1], object_hook=_object_hook, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise SchemaError(f"topic {topic!r}: body is not msgpack ({exc})") from exc
    if not isinstance(msg, dict) or msg.get("v") != VERSION:
        v = msg.get("v") if isinstance(msg, dict) else None
        raise SchemaError(f"topic {topic!r}: schema version {v!r}, this client reads {VERSION}")
    if topic in TOPICS:
        if msg.get("type") not in TOPICS[topic]:
            raise SchemaError(f"topic {topic!r} carries no message type {msg.get('type')!r} "
                              f"(it carries {', '.join(TOPICS[topic])})")
        _require((topic, msg["type"]), msg)
    elif (layout := _layout_of(msg.get("type"))) is not None:  # an operator label's topic
        _require(layout, msg)
    return topic, msg


def _layout_of(type_: Any) -> tuple[str, str] | None:
    """The (topic, type) of the one layout with type ``type_`` that a label's topic may carry (rows)."""
    return (type_, type_) if (type_, type_) in MESSAGES and MESSAGES[type_, type_].open else None


def _require(key: tuple[str, str], body: dict[str, Any]) -> None:
    missing = [k for k in MESSAGES[key].keys if k not in body]
    if missing:
        raise SchemaError(f"{key[0]}/{key[1]} message lacks {', '.join(missing)}")


def _fixed(key: tuple[str, str], values: dict[str, Any]) -> dict[str, Any]:
    """The fixed keys of ``key``'s message, in :data:`MESSAGES` order, taken from ``values``."""
    return {k: values[k] for k in MESSAGES[key].keys}


def _extend(key: tuple[str, str], body: dict[str, Any], extra: dict[str, Any], what: str) -> dict[str, Any]:
    """``body`` with ``extra`` added; an ``extra`` key that ``body`` has already is an error."""
    clash = body.keys() & extra.keys()
    if clash:
        raise ValueError(f"{key[0]}/{key[1]} message: {what} {', '.join(sorted(clash))} would overwrite "
                         f"keys of the message; rename them")
    return {**body, **extra}


def series_start(start: SeriesStart, *, config_hash: str, file: str | None, epoch: int) -> dict[str, Any]:
    """Body of the ``series``/``start`` message."""
    return {
        "series": start.series,
        "shape": list(start.shape),
        "dtype": start.dtype,
        "n_frames": start.n_frames,
        "geometry": start.geometry.to_dict(),
        "scan": list(start.scan.shape) if start.scan else None,
        "count_time": start.count_time,
        "config_hash": config_hash,
        "file": file,
        "epoch": epoch,
    }


def series_end(*, series: int, reason: str, expected: int, received: int, bad: int, duplicates: int, stray: int,
               lost: int, processed: int, failed: int, dropped: int, not_saved: int, file: str | None,
               map_holes: int | None, resent: int, epoch: int) -> dict[str, Any]:
    """Body of the ``series``/``end`` message (the series' summary); keys as in :data:`MESSAGES`."""
    return _fixed(("series", "end"), locals())


def stats_frame(*, series: int, row: dict[str, Any], arrays: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """Body of the ``stats``/``frame`` message.

    ``row`` is the frame's frames-table row (``frame``, ``timestamp``, ``received``,
    ``latency_s`` and every operator's scalar columns); ``arrays`` maps an operator's
    name to its per-frame arrays (``{"azimuthal": {"profile": ...}}``).
    """
    key = ("stats", "frame")
    body = _extend(key, {"series": series}, row, "columns")
    _require(key, body)
    return _extend(key, body, arrays, "operators with arrays")


def stats_frames(*, series: int, rows: Sequence[dict[str, Any]],
                 arrays: Sequence[dict[str, dict[str, np.ndarray]]]) -> dict[str, Any] | None:
    """Body of the ``stats``/``frames`` message: the :func:`stats_frame` messages of a batch of
    frames (``rows`` and ``arrays``, one per frame, in order) in columns.

    Returns None when the frames' operators do not all carry the same per-frame arrays
    (they cannot be stacked): send a :func:`stats_frame` per frame then.
    """
    names = {name: None for row in rows for name in row}
    layout = {label: tuple(found) for label, found in arrays[0].items()}
    if any({label: tuple(found) for label, found in a.items()} != layout for a in arrays):
        return None
    key = ("stats", "frames")
    columns = {}
    for name in names:
        values = [row.get(name) for row in rows]
        columns[name] = values if None in values else np.asarray(values)
    body = _extend(key, {"series": series, "n": len(rows)}, columns, "columns")
    _require(key, body)
    stacked = {label: {name: np.stack([a[label][name] for a in arrays]) for name in found}
               for label, found in layout.items()}
    return _extend(key, body, stacked, "operators with arrays")


def unpack_stats_frames(msg: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``stats``/``frame`` messages a ``stats``/``frames`` message ``msg`` carries, in order
    (scalars as Python numbers, a frame's arrays as views of the stacked ones)."""
    fixed = {"v", "type", "series", "n"}
    out = []
    for i in range(msg["n"]):
        one: dict[str, Any] = {"v": msg["v"], "type": "frame", "series": msg["series"]}
        for name, value in msg.items():
            if name in fixed:
                continue
            if isinstance(value, dict):
                one[name] = {k: v[i] for k, v in value.items()}
            elif value[i] is not None:
                one[name] = value[i].item() if isinstance(value, np.ndarray) else value[i]
        out.append(one)
    return out


def spots(*, series: int, frame: int, epoch: int, columns: dict[str, np.ndarray]) -> dict[str, Any]:
    """Body of a rows message: ``spots``/``spots``, or any operator's rows on the topic of its name.

    ``columns`` are the operator's row columns, one array each, all of one length ``n``.
    """
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise ValueError("row columns must have one length, got "
                         + ", ".join(f"{k} {len(v)}" for k, v in columns.items()))
    n = lengths.pop() if lengths else 0
    return _extend(("spots", "spots"), {"series": series, "frame": frame, "epoch": epoch, "n": n}, columns, "columns")


def image_snapshot(*, series: int, operator: str, frame: int, processed: int, final: bool, epoch: int,
                   closed: bool, values: dict[str, np.ndarray]) -> dict[str, Any]:
    """Body of the ``image``/``snapshot`` message: ``operator``'s reductions ``values`` so far."""
    key = ("image", "snapshot")
    return _extend(key, _fixed(key, locals()), values, "reductions")


def status_heartbeat(*, uptime_s: float, fps: float, series: int | None, n_frames: int | None, received: int,
                     processed: int, dropped: int, queue: int, total_processed: int, total_failed: int,
                     batches: int, batch_max: int, messages: int, bad: int, orphans: int, open_series: int | None, hdf5_not_saved: int,
                     hdf5_errors: int, published: int, cpu_s: float, peak_rss_mb: float, ledger_frames: int,
                     ledger_mb: float, epoch: int, paused: bool) -> dict[str, Any]:
    """Body of the ``status``/``heartbeat`` message; keys as in :data:`MESSAGES`."""
    return _fixed(("status", "heartbeat"), locals())
