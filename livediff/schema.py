"""The wire format of what livediff publishes: topics, message layouts, the array codec.

Every published message is a two-part ZeroMQ multipart message: the topic as ASCII
bytes, then one msgpack map with at least ``"v"`` (this module's :data:`VERSION`) and
``"type"``.  Arrays travel as ``{"dtype": "<f4", "shape": [..], "data": <bytes>}``.

Sinks, ``livediff inspect`` and the tests all import this module; no other module
knows the layouts.  Bump :data:`VERSION` on any incompatible change.
"""
from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

from .model import SeriesStart

VERSION = 1

#: topic -> message types it carries
TOPICS: dict[str, tuple[str, ...]] = {
    "series": ("start", "end"),
    "stats": ("frame",),
    "spots": ("spots",),
    "image": ("snapshot",),
    "status": ("heartbeat",),
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
    """Build the multipart message ``[topic, msgpack map]`` for ``topic``/``type_``."""
    if type_ not in TOPICS.get(topic, ()):
        raise SchemaError(f"topic {topic!r} carries no message type {type_!r}")
    payload = {"v": VERSION, "type": type_, **body}
    return [topic.encode("ascii"), msgpack.packb(payload, default=_default, use_bin_type=True)]


def decode(parts: list[bytes]) -> tuple[str, dict[str, Any]]:
    """Parse a published multipart message into ``(topic, message)``; arrays become numpy arrays.

    Raises
    ------
    SchemaError
        When the message is not two parts, not msgpack, or of another schema version.
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
    return topic, msg


def series_start(start: SeriesStart, *, config_hash: str, file: str | None) -> dict[str, Any]:
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
    }
