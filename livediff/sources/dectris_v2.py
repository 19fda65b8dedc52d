"""DECTRIS Stream v2 (one CBOR message per event) -> SeriesStart, Frame, SeriesEnd.

Follows the Stream V2 description of DECTRIS' documentation repository
(``stream_v2/README.md``, SIMPLON API 1.8, releases 2022.1 and later) and its CBOR tag
for compressed byte strings (``cbor/dectris-compression-tag.md``): messages ``start``,
``image`` and ``end``; arrays as tag 40 (row-major multi-dimensional array,
``[[rows, cols], typed array]``) around an RFC 8746 typed array (tags 64-87), whose byte
string may be tag 56500 ``[algorithm, element size, bytes]`` with ``"bslz4"`` or ``"lz4"``
(both in the HDF5 filter framing, :mod:`livediff.sources.codecs`).  An image's compressed
payload is checked (framing) but not decompressed here: it travels on as ``Frame.payload``.

Conversions (DESIGN.md), as for Stream v1: ``image_size_x/y`` -> (rows, cols) =
(y, x); ``pixel_mask`` nonzero = bad -> True = valid; beam centre minus 0.5 px (corner
origin -> pixel-centre origin, see :mod:`livediff.sources.dectris_v1`); pixel size in m,
``incident_wavelength`` in Å, ``count_time`` in s, ``saturation_value`` the saturation
count, ``number_of_images`` the frame count.  Stream v2 has no detector distance: it is
``|detector_translation[2]|`` (m), unless a sender adds ``detector_distance`` (m).

The schema (anything else is a :class:`~livediff.errors.DecodeError`, one bad message):
``series_id`` an integer in 0..2**63 - 1; ``image_size_x/y`` in 1..2**20 - 1 and within
the receiver's :class:`~livediff.sources.fields.Limits` (the byte limit is checked with
the first image's pixel type, which refuses the series when exceeded); ``channels`` a
list of names; ``number_of_images`` an integer in 0..2**31; ``beam_center_x/y`` finite;
``pixel_size_x/y`` positive finite; ``detector_distance`` (or ``|detector_translation[2]|``)
and ``incident_wavelength`` positive finite, 0 meaning not set; ``count_time`` finite
>= 0; ``saturation_value`` an integer >= 0; ``sensor_material``, ``detector_description``,
``detector_serial_number`` strings of at most 256 characters; ``sensor_thickness`` and
``frame_time`` positive finite (0 = not set); ``goniometer`` a map of axis ->
``{start, increment}`` (finite, degrees); ``detector_translation`` three finite numbers (m);
``image_id`` in 0..2**31 - 1; every array's shape two sides in 1..2**20 - 1 within the
limits, checked before it is decompressed.  The pixel mask's flags are kept as received
(:attr:`livediff.model.Instrument.pixel_flags`, uint32) beside the boolean mask.

Multi-channel (multi-threshold) images: one channel is processed, by default the first
of the start message's ``channels``, else the one configured (``source.channel``).

The start message does not say the pixel type, which comes with each image's typed
array, so a series start is passed on with the first image of its series (or, when the
series ends with no image, with the end, its pixel type inferred from
``saturation_value``).  Senders differ: the start message may lack the self-describe
tag 55799; tagged messages decode to immutable mappings (never mutated here); the
fixture's ``pixel_mask`` is a 4-byte placeholder, not an array (ignored, with a
warning); Jungfraujoch adds message types and keys, which are ignored.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import cbor2
import numpy as np

from ..errors import DecodeError
from ..model import FRAME_DTYPES, Frame, Geometry, Instrument, SeriesEnd, SeriesStart
from ..throttle import Throttle
from . import cbor_views, codecs
from .dectris_common import Event, beam_center, goniometer_v2, pixel_flags, valid_mask
from .fields import (Limits, check_fits, frame_count, frame_index, integer, number, positive, scalars, show, side,
                     sides, text, vector)

log = logging.getLogger(__name__)
_WARN = Throttle()  # a stream may repeat a tolerated oddity thousands of times: warnings throttled by kind

PROTOCOL = "dectris-stream2"

#: RFC 8746 typed-array tags livediff reads (little-endian, and bytes).
TYPED_ARRAYS = {64: "uint8", 69: "uint16", 70: "uint32", 71: "uint64", 77: "int16", 78: "int32", 85: "float32"}
_MULTI_DIM, _COMPRESSED = 40, 56500
_META_KEYS = ("series_unique_id", "incident_energy", "countrate_correction_enabled",
              "flatfield_enabled", "pixel_mask_enabled", "virtual_pixel_interpolation_enabled")


@dataclass
class _Pending:
    """A start message waiting for its first image (which gives the pixel type)."""

    series: int
    unique_id: str | None
    shape: tuple[int, int]
    channel: str
    fields: dict[str, Any]  # SeriesStart keyword arguments but dtype

    def start(self, dtype: str) -> SeriesStart:
        return SeriesStart(series=self.series, shape=self.shape, dtype=dtype, **self.fields)


class StreamV2Decoder:
    """Decode the Stream v2 messages of one stream (like :class:`~.dectris_v1.StreamV1Decoder`).

    Parameters
    ----------
    channel : name of the channel (threshold) to process; None = the first announced.
    limits : the largest frame accepted, checked before anything is decoded: a start beyond
        the pixel limit is refused, and so is a start whose first image's pixel type takes
        it beyond the byte limit (its frames are then refused one by one).

    Calling it returns the events a message completes: ``[]`` for a start (it waits for
    its first image), ``[start, frame]`` or ``[start, DecodeError]`` for that image,
    ``[frame]``, ``[end]`` or ``[start, end]``; ``[]`` for a message type it does not know.

    Raises
    ------
    DecodeError
        With a one-line reason, when nothing in the message decodes.
    """

    def __init__(self, *, channel: str | None = None, limits: Limits = Limits()) -> None:
        self.channel = channel
        self.limits = limits
        self._pending: _Pending | None = None

    def __call__(self, parts: list[Any], *, series: SeriesStart | None = None) -> list[Event | DecodeError]:
        if len(parts) != 1:
            raise DecodeError(f"{PROTOCOL}: a message is one part, got {len(parts)}")
        msg = _loads(parts[0])
        kind = msg.get("type")
        if kind == "start":
            self._pending = self._start(msg)
            return []
        if kind == "image":
            return self._image(msg, series)
        if kind == "end":
            return self._end(msg)
        if isinstance(kind, str):
            log.debug("%s: message type %r ignored", PROTOCOL, kind)
            return []
        raise DecodeError(f"{PROTOCOL}: 'type' must be a string, got {show(kind)}")

    # ------------------------------------------------------------------ messages
    def _start(self, msg: Mapping[str, Any]) -> _Pending:
        series_no = integer(msg, "series_id", PROTOCOL)
        where = f"{PROTOCOL}: start of series {series_no}"
        shape = (side(msg, "image_size_y", where), side(msg, "image_size_x", where))
        self.limits.check(shape, None, f"{where} refused")
        channels = msg.get("channels")
        if not isinstance(channels, (list, tuple)) or not channels or not all(isinstance(c, str) for c in channels):
            raise DecodeError(f"{where}: 'channels' must be a list of names, got {show(channels)}")
        channel = channels[0] if self.channel is None else self.channel
        if channel not in channels:
            raise DecodeError(f"{where}: channel {channel!r} (source.channel) is not one of {list(channels)}")
        n_frames = frame_count(msg, "number_of_images", where)
        pixel = (positive(msg, "pixel_size_y", where), positive(msg, "pixel_size_x", where))
        meta = {"protocol": PROTOCOL, "channel": channel, "channels": list(channels),
                **scalars(msg, _META_KEYS), **_threshold(msg, channel, where)}
        epoch = _date(msg.get("arm_date"))
        if epoch is not None:
            meta["arm_epoch"] = epoch
        flags = _pixel_mask(msg, channel, shape, where, self.limits)
        return _Pending(series_no, _unique_id(msg, where), shape, channel, {
            "n_frames": n_frames, "mask": None if flags is None else valid_mask(flags),
            "geometry": Geometry(
                beam_center=beam_center(number(msg, "beam_center_x", where), number(msg, "beam_center_y", where)),
                pixel_size=None if None in pixel else pixel, distance=_distance(msg, where),
                wavelength=positive(msg, "incident_wavelength", where, zero_unset=True)),
            "count_time": number(msg, "count_time", where, minimum=0),
            "saturation": integer(msg, "saturation_value", where, required=False), "meta": meta,
            "instrument": Instrument(
                sensor_material=text(msg, "sensor_material", where),
                sensor_thickness=positive(msg, "sensor_thickness", where, zero_unset=True),
                frame_time=positive(msg, "frame_time", where, zero_unset=True),
                description=text(msg, "detector_description", where),
                serial_number=text(msg, "detector_serial_number", where),
                goniometer=goniometer_v2(msg, where),
                detector_translation=vector(msg, "detector_translation", where), pixel_flags=flags),
        })

    def _image(self, msg: Mapping[str, Any], series: SeriesStart | None) -> list[Event | DecodeError]:
        series_no, index = integer(msg, "series_id", PROTOCOL), frame_index(msg, "image_id", PROTOCOL)
        where = f"{PROTOCOL}: frame {index}"
        unique_id = _unique_id(msg, where)
        data = msg.get("data")
        if not isinstance(data, Mapping) or not data:
            raise DecodeError(f"{where}: 'data' must be a map of channel -> array, got {show(data)}")
        events: list[Event | DecodeError] = []
        pending = self._pending
        if pending is not None and pending.series == series_no and unique_id in (None, pending.unique_id):
            channel = pending.channel
            dtype = _pixel_type(_typed_array(data.get(channel), f"{where}: channel {channel!r}")[1], where)
            self._pending = None
            self.limits.check(pending.shape, dtype, f"{PROTOCOL}: series {series_no} refused")
            series = pending.start(dtype.name)
            events.append(series)
        else:
            if series is not None and series.series != series_no:
                series = None
            channel = series.meta.get("channel") if series is not None else None
            channel = channel or self.channel or next(iter(data))
        try:
            if series is not None and unique_id not in (None, series.meta.get("series_unique_id", unique_id)):
                raise DecodeError(f"{where}: series unique id {unique_id!r}, the open series is "
                                  f"{series.meta.get('series_unique_id')!r}")
            frame = _frame(series_no, index, data.get(channel), f"{where}: channel {channel!r}", series,
                           self.limits)
        except DecodeError as exc:
            if not events:
                raise
            return [*events, exc]
        frame.timestamp = _timestamp(msg.get("series_date"), msg.get("start_time"))
        return [*events, frame]

    def _end(self, msg: Mapping[str, Any]) -> list[Event | DecodeError]:
        series_no = integer(msg, "series_id", PROTOCOL)
        pending, events = self._pending, []
        if pending is not None and pending.series == series_no:
            self._pending = None
            saturation = pending.fields["saturation"]
            dtype = "uint32" if saturation is None or saturation >= 1 << 16 else (
                "uint16" if saturation >= 1 << 8 else "uint8")
            _WARN.log(log, "imageless", "%s: series %d ended before any image: its pixel type is taken as %s",
                      PROTOCOL, series_no, dtype)
            events.append(pending.start(dtype))
        return [*events, SeriesEnd(series_no)]


# ---------------------------------------------------------------------- arrays
def _typed_array(value: Any, where: str, limits: Limits | None = None) -> tuple[tuple[int, int], np.dtype, Any, str]:
    """(shape, dtype, payload, encoding) of a tag-40 [[rows, cols], typed array] value, within ``limits`` if given."""
    if not isinstance(value, cbor2.CBORTag) or value.tag != _MULTI_DIM:
        raise DecodeError(f"{where}: expected a tag-40 multi-dimensional array, got {_kind(value)}")
    body = value.value
    if not isinstance(body, (list, tuple)) or len(body) != 2:
        raise DecodeError(f"{where}: tag 40 must hold [shape, typed array], got {_kind(body)}")
    dims, typed = body
    shape = sides(dims)
    if shape is None:
        raise DecodeError(f"{where}: array shape must be [rows, cols] of positive integers, got {show(dims)}")
    if not isinstance(typed, cbor2.CBORTag) or typed.tag not in TYPED_ARRAYS:
        raise DecodeError(f"{where}: expected a typed array (RFC 8746 tag, little-endian: "
                          f"{sorted(TYPED_ARRAYS)}), got {_kind(typed)}")
    dtype = np.dtype(TYPED_ARRAYS[typed.tag])
    if limits is not None:
        limits.check(shape, dtype, where)
    payload = typed.value
    if isinstance(payload, (bytes, memoryview)):
        return shape, dtype, payload, "raw"
    if not isinstance(payload, cbor2.CBORTag) or payload.tag != _COMPRESSED:
        raise DecodeError(f"{where}: typed array must hold bytes or tag {_COMPRESSED}, got {_kind(payload)}")
    spec = payload.value
    if not isinstance(spec, (list, tuple)) or len(spec) != 3 or not isinstance(spec[2], (bytes, memoryview)):
        raise DecodeError(f"{where}: tag {_COMPRESSED} must hold [algorithm, element size, bytes]")
    algorithm, elem_size, blob = spec
    if algorithm not in ("bslz4", "lz4"):
        raise DecodeError(f"{where}: compression {show(algorithm)} is not supported (expected 'bslz4' or 'lz4')")
    if algorithm == "bslz4" and elem_size != dtype.itemsize:
        raise DecodeError(f"{where}: bslz4 element size {show(elem_size)} != {dtype.itemsize} of {dtype.name}")
    return shape, dtype, blob, algorithm


def _frame(series_no: int, index: int, value: Any, where: str, series: SeriesStart | None,
           limits: Limits) -> Frame:
    shape, dtype, blob, encoding = _typed_array(value, where, limits)
    _pixel_type(dtype, where)
    check_fits(series, shape, dtype, where)
    try:
        data, payload = codecs.accept(blob, encoding, shape, dtype)
    except DecodeError as exc:
        raise DecodeError(f"{where}: {exc}") from None
    return Frame(series_no, index, data, payload=payload)


def _pixel_type(dtype: np.dtype, where: str) -> np.dtype:
    if dtype.name not in FRAME_DTYPES:
        raise DecodeError(f"{where}: pixel type {dtype.name}, expected one of {', '.join(FRAME_DTYPES)}")
    return dtype


def _pixel_mask(msg: Mapping[str, Any], channel: str, shape: tuple[int, int], where: str,
                limits: Limits) -> np.ndarray | None:
    """The channel's pixel mask flags (uint32, 0 = good), or None."""
    masks = msg.get("pixel_mask")
    value = masks.get(channel) if isinstance(masks, Mapping) else None
    if value is None:
        return None
    if not isinstance(value, cbor2.CBORTag):
        _WARN.log(log, "mask", "%s: pixel_mask of channel %r is %s, not an array: no mask", where, channel,
                  _kind(value))
        return None
    mask_shape, dtype, blob, encoding = _typed_array(value, f"{where}: pixel_mask", limits)
    if mask_shape != shape:
        raise DecodeError(f"{where}: pixel_mask shape {mask_shape} != image shape {shape}")
    if dtype.kind not in "ui":
        raise DecodeError(f"{where}: pixel_mask must be integers, got {dtype.name}")
    try:
        return pixel_flags(codecs.decode(blob, encoding, shape, dtype))
    except DecodeError as exc:
        raise DecodeError(f"{where}: pixel_mask: {exc}") from None


# ---------------------------------------------------------------------- fields
def _loads(part: Any) -> Mapping[str, Any]:
    try:
        msg = cbor_views.loads(part)  # the pixels stay a view of the message
    except Exception as exc:  # noqa: BLE001 - cbor2 on untrusted bytes: any failure means "not CBOR"
        raise DecodeError(f"{PROTOCOL}: not a CBOR message ({type(exc).__name__}: {str(exc)[:80]})") from None
    if not isinstance(msg, Mapping):
        raise DecodeError(f"{PROTOCOL}: message must be a CBOR map, got {type(msg).__name__}")
    return msg


def _unique_id(msg: Mapping[str, Any], where: str) -> str | None:
    value = msg.get("series_unique_id")
    if value is not None and not isinstance(value, str):
        raise DecodeError(f"{where}: 'series_unique_id' must be a string, got {show(value)}")
    return value


def _distance(msg: Mapping[str, Any], where: str) -> float | None:
    if msg.get("detector_distance") is not None:
        return positive(msg, "detector_distance", where, zero_unset=True)
    translation = msg.get("detector_translation")
    if translation is None:
        return None
    if not isinstance(translation, (list, tuple)) or len(translation) != 3:
        raise DecodeError(f"{where}: 'detector_translation' must be [x, y, z] in m, got {show(translation)}")
    z = number({"z": translation[2]}, "z", f"{where}: detector_translation")
    return abs(z) or None  # 0: not set


def _threshold(msg: Mapping[str, Any], channel: str, where: str) -> dict[str, float]:
    energies = msg.get("threshold_energy")
    if not isinstance(energies, Mapping) or energies.get(channel) is None:
        return {}
    return {"threshold_energy": number(energies, channel, f"{where}: threshold_energy")}


def _date(value: Any) -> float | None:
    """Seconds since the epoch of a CBOR date (tag 0, decoded by cbor2, or a plain string)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    try:
        return value.timestamp()
    except (OverflowError, OSError, ValueError):
        return None


def _timestamp(series_date: Any, start_time: Any) -> float:
    """Acquisition start of an image, s since the epoch: ``series_date`` + ``start_time`` (a rational)."""
    epoch = _date(series_date)
    if (epoch is None or not isinstance(start_time, (list, tuple)) or len(start_time) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and abs(v) < 1 << 63 for v in start_time)
            or start_time[1] <= 0):
        return 0.0
    return epoch + start_time[0] / start_time[1]


def _kind(value: Any) -> str:
    if isinstance(value, cbor2.CBORTag):
        return f"tag {value.tag}"
    if isinstance(value, (bytes, str, list, tuple)):
        return f"{type(value).__name__} of {len(value)}"
    return type(value).__name__
