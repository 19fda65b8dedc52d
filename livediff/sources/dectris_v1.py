"""DECTRIS SIMPLON Stream v1 ("legacy" JSON multipart) -> SeriesStart, Frame, SeriesEnd.

Follows the stream interface of the SIMPLON API 1.8 (EIGER, EIGER2, PILATUS4):
``dheader-1.0`` (``header_detail`` "all" | "basic" | "none": the detector configuration,
then ``dflatfield-1.0``, ``dpixelmask-1.0``, ``dcountrate_table-1.0`` parts each followed by
its data), ``dimage-1.0`` + ``dimage_d-1.0`` + data + ``dconfig-1.0`` (encodings ``<``,
``lz4<``, ``bs8-lz4<``, ``bs16-lz4<``, ``bs32-lz4<``) and ``dseries_end-1.0``.

Conversions happen here and nowhere else (DESIGN.md): ``shape`` [x, y] -> array (y, x);
``pixel_mask`` nonzero = bad -> True = valid; the beam centre, which DECTRIS (like NXmx)
counts in pixels from the outer corner of the first pixel (dxtbx's EIGER stream formats
place the beam at ``beam_center_x * x_pixel_size`` from the detector corner, the first
pixel's centre being at 0.5 px), minus 0.5 px for livediff's pixel-centre origin; pixel
size and ``detector_distance`` in m, ``wavelength`` in Å, ``count_time`` in s;
``countrate_correction_count_cutoff`` is the saturation; ``n_frames`` = nimages x ntrigger.

Senders differ (``protocols.md``), so the decoder tolerates a header whose configuration
and array parts come as separate messages, ``flatfield-1.0`` for ``dflatfield-1.0``, an
appendix part after a header or an image, a ``hash`` that is no md5 (never checked), and
``header_detail = "none"``, whose series start is made from the first image.  A header is
passed on once complete for its detail level, else with the first image or end of its
series.  So the decoder has state: each receiver owns one :class:`StreamV1Decoder`.  The
conversions shared with :mod:`livediff.sources.dectris_v2` are in
:mod:`livediff.sources.dectris_common`, the field readers in :mod:`livediff.sources.fields`.

The schema of the detector configuration is in :func:`_start`; an image's ``series`` is
an integer in 0..2**63 - 1, its ``frame`` in 0..2**31 - 1, its ``shape`` two sides in
1..2**20 - 1 within the receiver's :class:`~livediff.sources.fields.Limits` (as are the
header's arrays), checked before anything is decompressed.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from ..errors import DecodeError
from ..model import FRAME_DTYPES, Frame, Geometry, Instrument, SeriesEnd, SeriesStart
from ..throttle import Throttle
from . import codecs
from .dectris_common import Event, beam_center, goniometer_v1, pixel_flags, valid_mask
from .fields import (MAX_FRAMES, Limits, check_fits, frame_index, integer, is_int, number, positive, scalars, show,
                     side, sides, text)

log = logging.getLogger(__name__)
_WARN = Throttle()  # a stream may repeat a tolerated oddity thousands of times: warnings throttled by kind

PROTOCOL = "dectris-stream1"

_ARRAY_PARTS = {"dflatfield-1.0": "flatfield", "flatfield-1.0": "flatfield",
                "dpixelmask-1.0": "pixel_mask", "dcountrate_table-1.0": "countrate_table"}
_BIT_DEPTHS = {8: "uint8", 16: "uint16", 32: "uint32"}
_META_KEYS = ("software_version", "photon_energy", "data_collection_date")


@dataclass
class _Header:
    """A series header being put together, possibly from several messages."""

    series: int
    detail: str
    config: dict[str, Any] | None = None
    pixel_mask: np.ndarray | None = None
    flatfield: bool = False

    @property
    def complete(self) -> bool:
        if self.detail == "basic":
            return self.config is not None
        if self.detail == "all":
            return self.config is not None and self.pixel_mask is not None and self.flatfield
        return False  # "none": only the first image tells the shape


class StreamV1Decoder:
    """Decode Stream v1 messages of one stream; call it like ``native.decode``.

    Calling it with a message's parts (and the open series, to check frames against)
    returns the events the message completes, in order: none for a header still
    incomplete, ``[start]``, ``[frame]``, ``[start, frame]`` for the first image after
    an incomplete header, ``[end]`` or ``[start, end]``.  When that first image is bad,
    the start still counts: the list ends with the :class:`DecodeError` instead of the
    frame, so that the receiver opens the series before it counts the bad frame.

    Raises
    ------
    DecodeError
        With a one-line reason, when nothing in the message decodes; the decoder stays
        usable.
    """

    def __init__(self, *, limits: Limits = Limits()) -> None:
        self.limits = limits
        self._pending: _Header | None = None
        self._extras_ok = False  # header parts may still trail a header already passed on

    def __call__(self, parts: list[Any], *, series: SeriesStart | None = None) -> list[Event | DecodeError]:
        if not parts:
            raise DecodeError(f"{PROTOCOL}: empty message")
        first = _json(parts[0], "part 1")
        htype = first.get("htype")
        if htype is not None and not isinstance(htype, str):
            raise DecodeError(f"{PROTOCOL}: 'htype' must be a string, got {show(htype)}")
        if htype == "dheader-1.0":
            return self._header(first, parts)
        if htype == "dimage-1.0":
            return self._image(first, parts, series)
        if htype == "dseries_end-1.0":
            if len(parts) != 1:
                raise DecodeError(f"{PROTOCOL}: dseries_end-1.0 message needs 1 part, got {len(parts)}")
            return self._end(integer(first, "series", PROTOCOL))
        if htype is None or htype in _ARRAY_PARTS:
            return self._continuation(parts)
        raise DecodeError(f"{PROTOCOL}: unknown htype {show(htype)} (expected dheader-1.0, dimage-1.0, "
                          "dseries_end-1.0 or a header part)")

    def _header(self, first: dict[str, Any], parts: list[Any]) -> list[Event | DecodeError]:
        series_no = integer(first, "series", PROTOCOL)
        detail = first.get("header_detail", "basic")
        if detail not in ("all", "basic", "none"):
            raise DecodeError(f"{PROTOCOL}: header_detail {show(detail)}, expected 'all', 'basic' or 'none'")
        header = _Header(series_no, detail)
        _absorb(header, parts[1:], self.limits)
        self._drop_pending("another header came")
        self._pending = header
        return self._emit_if_complete()

    def _continuation(self, parts: list[Any]) -> list[Event | DecodeError]:
        if self._pending is None:
            if self._extras_ok:
                log.debug("%s: header part after the header was complete: ignored", PROTOCOL)
                return []
            raise DecodeError(f"{PROTOCOL}: header part (detector configuration or array) "
                              "with no dheader-1.0 before it")
        _absorb(self._pending, parts, self.limits)
        return self._emit_if_complete()

    def _image(self, first: dict[str, Any], parts: list[Any],
               series: SeriesStart | None) -> list[Event | DecodeError]:
        if len(parts) not in (4, 5):
            raise DecodeError(f"{PROTOCOL}: dimage-1.0 message needs 4 parts (5 with an appendix), "
                              f"got {len(parts)}")
        series_no, index = integer(first, "series", PROTOCOL), frame_index(first, "frame", PROTOCOL)
        where = f"{PROTOCOL}: frame {index}"
        info = _json(parts[1], "part 2")
        if info.get("htype") != "dimage_d-1.0":
            raise DecodeError(f"{where}: part 2 htype {show(info.get('htype'))}, expected 'dimage_d-1.0'")
        shape, dtype = _shape(info, where), _dtype(info.get("type"), where)
        self.limits.check(shape, dtype, where)
        timing = _json(parts[3], "part 4")
        if timing.get("htype") != "dconfig-1.0":
            raise DecodeError(f"{where}: part 4 htype {show(timing.get('htype'))}, expected 'dconfig-1.0'")
        events: list[Event | DecodeError] = []
        if self._pending is not None and self._pending.series == series_no:
            header, self._pending = self._pending, None
            series = _start(header, self.limits, shape, dtype.name)
            events.append(series)
        self._extras_ok = False
        if series is not None and series.series != series_no:
            series = None
        try:
            check_fits(series, shape, dtype, where)
            frame = _frame(series_no, index, info, parts[2], shape, dtype, where)
        except DecodeError as exc:
            if not events:
                raise
            return [*events, exc]
        frame.timestamp = _timestamp(series, timing.get("start_time"))
        return [*events, frame]

    def _end(self, series_no: int) -> list[Event | DecodeError]:
        events: list[Event | DecodeError] = []
        if self._pending is not None and self._pending.series == series_no:
            header, self._pending = self._pending, None
            start = _start(header, self.limits)
            if start is None:
                _WARN.log(log, "shapeless", "%s: series %d ended before its header said what its frames look like",
                          PROTOCOL, series_no)
            else:
                events.append(start)
        self._extras_ok = False
        return [*events, SeriesEnd(series_no)]

    def _emit_if_complete(self) -> list[Event | DecodeError]:
        if self._pending is None or not self._pending.complete:
            return []
        try:
            start = _start(self._pending, self.limits)
        except DecodeError:
            self._pending = None
            raise
        if start is None:  # a configuration without the image size: the first image will tell
            return []
        self._pending, self._extras_ok = None, True
        return [start]

    def _drop_pending(self, why: str) -> None:
        if self._pending is not None:
            _WARN.log(log, "incomplete", "%s: incomplete header of series %d dropped: %s", PROTOCOL,
                      self._pending.series, why)
            self._pending = None


# ---------------------------------------------------------------------- header
def _absorb(header: _Header, parts: list[Any], limits: Limits) -> None:
    """Take the detector configuration and the array parts from ``parts``; the rest is appendix."""
    i = 0
    while i < len(parts):
        obj = _try_json(parts[i])
        htype = obj.get("htype") if obj is not None else None
        if isinstance(htype, str) and htype in _ARRAY_PARTS:
            if i + 1 == len(parts):
                raise DecodeError(f"{PROTOCOL}: {htype} part without its data part")
            _header_array(header, _ARRAY_PARTS[htype], obj, parts[i + 1], limits)
            i += 2
            continue
        if obj is not None and "htype" not in obj and header.config is None and header.detail != "none":
            header.config = obj
        i += 1


def _header_array(header: _Header, kind: str, info: dict[str, Any], data: Any, limits: Limits) -> None:
    if kind == "countrate_table":
        return  # not used by livediff
    where = f"{PROTOCOL}: series {header.series}: {kind}"
    shape, dtype = _shape(info, where), _dtype(info.get("type"), where, kinds=("uint32", "float32"))
    limits.check(shape, dtype, where)
    try:
        array = codecs.decode(data, "raw", shape, dtype)
    except DecodeError as exc:
        raise DecodeError(f"{where}: {exc}") from None
    if kind == "pixel_mask":
        header.pixel_mask = array
    else:
        header.flatfield = True  # checked, not kept: SeriesStart has no flat-field slot


def _start(header: _Header, limits: Limits, shape: tuple[int, int] | None = None,
           dtype: str | None = None) -> SeriesStart | None:
    """The series start ``header`` describes; the first image's shape and type fill gaps.

    The configuration's schema: ``x/y_pixels_in_detector`` in 1..2**20 - 1 within
    ``limits``; ``bit_depth_image`` 8, 16 or 32; ``nimages`` and ``ntrigger`` integers
    >= 0, their product at most 2**31; ``x/y_pixel_size`` positive finite; ``beam_center_x/y``
    finite; ``detector_distance`` and ``wavelength`` positive finite (0 = not set: unknown);
    ``count_time`` finite >= 0; ``countrate_correction_count_cutoff`` an integer >= 0;
    ``sensor_material``, ``description``, ``detector_number`` strings (256 characters at
    most); ``sensor_thickness`` and ``frame_time`` positive finite (0 = not set);
    ``<axis>_start`` and ``<axis>_increment`` (omega, phi, chi, kappa, two_theta) finite; each
    may be absent.  A beam centre or pixel size with one coordinate absent is unknown.
    """
    where = f"{PROTOCOL}: series {header.series}"
    config = header.config or {}
    if "x_pixels_in_detector" in config or "y_pixels_in_detector" in config:
        shape = (side(config, "y_pixels_in_detector", where), side(config, "x_pixels_in_detector", where))
    if "bit_depth_image" in config:
        depth = config["bit_depth_image"]
        if not is_int(depth) or depth not in _BIT_DEPTHS:
            raise DecodeError(f"{where}: bit_depth_image {show(depth)}, expected 8, 16 or 32")
        dtype = _BIT_DEPTHS[depth]
    if shape is None or dtype is None:
        if shape is not None:
            limits.check(shape, None, f"{where} refused")
        return None
    limits.check(shape, dtype, f"{where} refused")
    mask = flags = None
    if header.pixel_mask is not None:
        if header.pixel_mask.shape != shape:
            raise DecodeError(f"{where}: pixel mask shape {header.pixel_mask.shape} != image shape {shape}")
        mask, flags = valid_mask(header.pixel_mask), pixel_flags(header.pixel_mask)
    nimages = integer(config, "nimages", where, required=False)
    n_frames = None if nimages is None else nimages * (integer(config, "ntrigger", where, required=False) or 1)
    if n_frames is not None and n_frames > MAX_FRAMES:
        raise DecodeError(f"{where}: nimages x ntrigger = {n_frames}, more than {MAX_FRAMES} frames")
    pixel = (positive(config, "y_pixel_size", where), positive(config, "x_pixel_size", where))
    epoch = _epoch(config.get("data_collection_date"))
    return SeriesStart(
        series=header.series, shape=shape, dtype=dtype, mask=mask, n_frames=n_frames,
        geometry=Geometry(
            beam_center=beam_center(number(config, "beam_center_x", where), number(config, "beam_center_y", where)),
            pixel_size=None if None in pixel else pixel,
            distance=positive(config, "detector_distance", where, zero_unset=True),
            wavelength=positive(config, "wavelength", where, zero_unset=True)),
        count_time=number(config, "count_time", where, minimum=0),
        saturation=integer(config, "countrate_correction_count_cutoff", where, required=False),
        instrument=Instrument(
            sensor_material=text(config, "sensor_material", where),
            sensor_thickness=positive(config, "sensor_thickness", where, zero_unset=True),
            frame_time=positive(config, "frame_time", where, zero_unset=True),
            description=text(config, "description", where), serial_number=text(config, "detector_number", where),
            goniometer=goniometer_v1(config, where), pixel_flags=flags),
        meta={"protocol": PROTOCOL, "header_detail": header.detail, **scalars(config, _META_KEYS),
              **({} if epoch is None else {"series_epoch": epoch})},
    )


# ---------------------------------------------------------------------- image
def _frame(series_no: int, index: int, info: dict[str, Any], blob: Any, shape: tuple[int, int],
           dtype: np.dtype, where: str) -> Frame:
    encoding = info.get("encoding")
    size = info.get("size")
    nbytes = memoryview(blob).nbytes
    if isinstance(size, int) and not isinstance(size, bool) and size != nbytes:
        raise DecodeError(f"{where}: data part holds {nbytes} bytes, dimage_d-1.0 says size {size}")
    try:
        if encoding == "<":
            return Frame(series_no, index, codecs.decode(blob, "raw", shape, dtype))
        if encoding == "lz4<":
            chunk = codecs.lz4_block_to_h5(blob, shape[0] * shape[1] * dtype.itemsize)
            if chunk is None:  # a block the HDF5 framing cannot express: decoded here, the rare exception
                return Frame(series_no, index, codecs.decode_lz4_block(blob, shape, dtype))
            data, payload = codecs.accept(chunk, "lz4", shape, dtype)
            return Frame(series_no, index, data, payload=payload)
        if encoding in ("bs8-lz4<", "bs16-lz4<", "bs32-lz4<"):
            if encoding != f"bs{8 * dtype.itemsize}-lz4<":
                raise DecodeError(f"encoding {encoding!r} does not suit type {dtype.name}")
            data, payload = codecs.accept(blob, "bslz4", shape, dtype)
            return Frame(series_no, index, data, payload=payload)
    except DecodeError as exc:
        raise DecodeError(f"{where}: {exc}") from None
    raise DecodeError(f"{where}: unknown encoding {encoding!r} (expected '<', 'lz4<', 'bs8-lz4<', "
                      "'bs16-lz4<' or 'bs32-lz4<')")


def _timestamp(series: SeriesStart | None, start_ns: Any) -> float:
    """Acquisition start of a frame, s since the epoch, when the header gave the series date."""
    epoch = None if series is None else series.meta.get("series_epoch")
    if epoch is None or not isinstance(start_ns, int) or isinstance(start_ns, bool) or abs(start_ns) >= 1 << 63:
        return 0.0
    return float(epoch) + start_ns * 1e-9


def _epoch(date: Any) -> float | None:
    if not isinstance(date, str):
        return None
    try:
        return datetime.fromisoformat(date).timestamp()
    except (ValueError, OverflowError, OSError):
        _WARN.log(log, "date", "%s: data_collection_date %s is not an ISO 8601 date: frame times unknown", PROTOCOL,
                  show(date))
        return None


# ---------------------------------------------------------------------- parsing
def _try_json(part: Any) -> dict[str, Any] | None:
    try:
        obj = json.loads(bytes(part))
    except (ValueError, RecursionError, TypeError):
        return None
    return obj if isinstance(obj, dict) else None


def _json(part: Any, what: str) -> dict[str, Any]:
    obj = _try_json(part)
    if obj is None:
        raise DecodeError(f"{PROTOCOL}: {what} is not a JSON object")
    return obj


def _shape(info: Mapping[str, Any], where: str) -> tuple[int, int]:
    """DECTRIS ``shape`` [x, y] -> (rows, cols) = (y, x)."""
    shape = sides(info.get("shape"))
    if shape is None:
        raise DecodeError(f"{where}: 'shape' must be [x, y] of positive integers, got {show(info.get('shape'))}")
    return (shape[1], shape[0])


def _dtype(name: Any, where: str, *, kinds: tuple[str, ...] = FRAME_DTYPES) -> np.dtype:
    if not isinstance(name, str) or name not in kinds:
        raise DecodeError(f"{where}: type {show(name)}, expected one of {', '.join(kinds)}")
    return np.dtype(name)
