"""DECTRIS Stream v1 and v2 encoders: what an EIGER2 / PILATUS4 detector would send.

The inverse of the decoders beside them, :mod:`livediff.sources.dectris_v1` and
:mod:`livediff.sources.dectris_v2`, written from the same descriptions (SIMPLON API 1.8
stream interface; DECTRIS' ``stream_v2/README.md`` and ``cbor/dectris-compression-tag.md``),
converting livediff's conventions to DECTRIS' ones: shapes as [x, y], ``pixel_mask``
nonzero = bad (the series' own flags when it has them), beam centre from the corner of the
first pixel (+0.5 px), distance in m, wavelength in Å.  Like a real EIGER they send the
sensor (material, thickness), the detector's description and serial number, the frame
time and the goniometer (``omega_start``, ``omega_increment``, ... in Stream v1;
``goniometer`` {axis: {start, increment}} in Stream v2), the series' own values where it
has them (:class:`livediff.model.Instrument`), else a silicon sensor of 450 µm and every
axis at 0.

Each encoder serves one stream (it remembers when the series was armed, for the frame
times) and has the interface :func:`livediff.sources.sender.stream_series` uses:
``start(series_start)``, ``image(series, index, data, timestamp=None, blob=None)``,
``end(series)``, each returning the parts of one ZeroMQ message; ``blob`` is the frame
already encoded (a stored chunk being replayed), sent without recompressing.
``encoding`` is one of livediff's payload encodings: ``"raw"`` (v1 ``<``), ``"bslz4"``
(v1 ``bsN-lz4<``, v2 tag 56500 ``"bslz4"``) or ``"lz4"`` (v1 ``lz4<``, one bare LZ4
block; v2 tag 56500 ``"lz4"``).
"""
from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timezone
from typing import Any

import cbor2
import numpy as np

from ..model import SeriesStart
from . import codecs

#: numpy dtype name -> RFC 8746 typed-array tag (little-endian).
TYPED_ARRAY_TAGS = {"uint8": 64, "uint16": 69, "uint32": 70, "int32": 78, "float32": 85}
_SELF_DESCRIBE, _MULTI_DIM, _COMPRESSED = 55799, 40, 56500
_HC_KEV_ANGSTROM = 12.398419843320026  # h c in keV Å (CODATA 2018)
#: the goniometer axes an EIGER is told about, each sent at 0 when the series has none
_AXES = ("omega", "phi", "chi", "kappa", "two_theta")


class StreamV1Encoder:
    """Stream v1 multipart messages (JSON + binary parts).

    Parameters
    ----------
    encoding : "raw", "bslz4" or "lz4".
    header_detail : "all" (configuration, flat field, pixel mask, count-rate table),
        "basic" (configuration only) or "none" (no configuration).
    """

    def __init__(self, *, encoding: str = "raw", header_detail: str = "all") -> None:
        if encoding not in codecs.ENCODINGS:
            raise ValueError(f"encoding must be one of {', '.join(codecs.ENCODINGS)}, got {encoding!r}")
        if header_detail not in ("all", "basic", "none"):
            raise ValueError(f"header_detail must be 'all', 'basic' or 'none', got {header_detail!r}")
        self.encoding = encoding
        self.header_detail = header_detail
        self._armed = time.time()

    def start(self, start: SeriesStart) -> list[bytes]:
        """The ``dheader-1.0`` message for ``start``, parts as its header detail asks."""
        self._armed = time.time()
        parts = [_json({"htype": "dheader-1.0", "series": start.series, "header_detail": self.header_detail})]
        if self.header_detail == "none":
            return parts
        parts.append(_json(self.configuration(start)))
        if self.header_detail == "all":
            xy = [start.shape[1], start.shape[0]]
            flat = np.ones(start.shape, dtype="<f4")
            table = np.array([[0, 1000, 2000, 3000], [0, 1010, 2050, 3120]], dtype="<f4")
            parts += [_json({"htype": "dflatfield-1.0", "shape": xy, "type": "float32"}), flat.tobytes(),
                      _json({"htype": "dpixelmask-1.0", "shape": xy, "type": "uint32"}),
                      pixel_mask(start).astype("<u4").tobytes(),
                      _json({"htype": "dcountrate_table-1.0", "shape": [4, 2], "type": "float32"}),
                      table.tobytes()]
        return parts

    def configuration(self, start: SeriesStart) -> dict[str, Any]:
        """The detector configuration part (SIMPLON ``detector/api/config`` keys and units)."""
        g = start.geometry
        ins = start.instrument
        config: dict[str, Any] = {
            "description": ins.description or "livediff simulator", "detector_number": ins.serial_number or "SIM-0001",
            "sensor_material": ins.sensor_material or "Si", "sensor_thickness": ins.sensor_thickness or 450e-6,
            "x_pixels_in_detector": start.shape[1], "y_pixels_in_detector": start.shape[0],
            "bit_depth_image": 8 * np.dtype(start.dtype).itemsize, "nimages": start.n_frames or 1,
            "ntrigger": 1, "data_collection_date": datetime.fromtimestamp(self._armed, timezone.utc).isoformat(),
        }
        if g.beam_center is not None:
            config["beam_center_x"], config["beam_center_y"] = g.beam_center[1] + 0.5, g.beam_center[0] + 0.5
        if g.pixel_size is not None:
            config["y_pixel_size"], config["x_pixel_size"] = g.pixel_size
        for axis, first, step in goniometer(start):
            config[f"{axis}_start"], config[f"{axis}_increment"] = first, step
        optional = {"detector_distance": g.distance, "wavelength": g.wavelength, "count_time": start.count_time,
                    "frame_time": ins.frame_time or start.count_time,
                    "countrate_correction_count_cutoff": start.saturation}
        return config | {k: v for k, v in optional.items() if v is not None}

    def image(self, series: int, index: int, data: np.ndarray, *, timestamp: float | None = None,
              blob: bytes | None = None) -> list[bytes]:
        """The ``dimage-1.0`` message carrying frame ``index``.

        ``blob``, when given, is the frame already encoded as :attr:`encoding` (for
        ``"lz4"`` one bare LZ4 block, as Stream v1 sends it): sent as is, ``data`` then
        only gives the shape and dtype.
        """
        wire = {"raw": "<", "bslz4": f"bs{8 * data.dtype.itemsize}-lz4<", "lz4": "lz4<"}[self.encoding]
        if blob is None:
            data = np.ascontiguousarray(data)
            blob = codecs.encode_lz4_block(data) if self.encoding == "lz4" else codecs.encode(data, self.encoding)
        start_ns = round(((time.time() if timestamp is None else timestamp) - self._armed) * 1e9)
        return [
            _json({"htype": "dimage-1.0", "series": series, "frame": index, "hash": hashlib.md5(blob).hexdigest()}),
            _json({"htype": "dimage_d-1.0", "shape": [data.shape[1], data.shape[0]], "type": data.dtype.name,
                   "encoding": wire, "size": len(blob)}),
            blob,
            _json({"htype": "dconfig-1.0", "start_time": start_ns, "stop_time": start_ns + 1_000_000,
                   "real_time": 1_000_000}),
        ]

    def end(self, series: int) -> list[bytes]:
        """The ``dseries_end-1.0`` message."""
        return [_json({"htype": "dseries_end-1.0", "series": series})]


class StreamV2Encoder:
    """Stream v2 CBOR messages, one part each.

    Parameters
    ----------
    encoding : "raw", "bslz4" or "lz4" (images and pixel mask).
    channels : channel names; every image carries each of them.  Channel k > 0 holds
        the frame divided by k + 1, so that a test can tell which channel it got.
    """

    def __init__(self, *, encoding: str = "raw", channels: tuple[str, ...] = ("threshold_1",)) -> None:
        if encoding not in codecs.ENCODINGS:
            raise ValueError(f"encoding must be one of {', '.join(codecs.ENCODINGS)}, got {encoding!r}")
        if not channels:
            raise ValueError("at least one channel is needed")
        self.encoding = encoding
        self.channels = tuple(channels)
        self._armed = datetime.now(timezone.utc)

    def unique_id(self, series: int) -> str:
        """``series_unique_id`` of ``series`` as armed last."""
        return f"LIVEDIFF-SIM-{series:06d}-{self._armed.timestamp():.6f}"

    def start(self, start: SeriesStart) -> list[bytes]:
        """The ``start`` message, without the self-describe tag (as real detectors send it)."""
        self._armed = datetime.now(timezone.utc)
        g, ins = start.geometry, start.instrument
        msg: dict[str, Any] = {
            "type": "start", "series_id": start.series, "series_unique_id": self.unique_id(start.series),
            "arm_date": self._armed, "channels": list(self.channels),
            "image_size_x": start.shape[1], "image_size_y": start.shape[0],
            "number_of_images": start.n_frames or 1,
            "detector_description": ins.description or "livediff simulator",
            "detector_serial_number": ins.serial_number or "SIM-0001",
            "pixel_mask": {c: self._array(pixel_mask(start).astype("<u4")) for c in self.channels},
            "pixel_mask_enabled": True, "sensor_material": ins.sensor_material or "Si",
            "sensor_thickness": ins.sensor_thickness or 450e-6,
            "goniometer": {axis: {"start": first, "increment": step} for axis, first, step in goniometer(start)},
            "threshold_energy": {c: 6000.0 * (k + 1) for k, c in enumerate(self.channels)},
        }
        if g.beam_center is not None:
            msg["beam_center_x"], msg["beam_center_y"] = g.beam_center[1] + 0.5, g.beam_center[0] + 0.5
        if g.pixel_size is not None:
            msg["pixel_size_y"], msg["pixel_size_x"] = g.pixel_size
        if ins.detector_translation is not None:
            msg["detector_translation"] = list(ins.detector_translation)
        elif g.distance is not None:
            bx, by = msg.get("beam_center_x", 0.0), msg.get("beam_center_y", 0.0)
            py, px = g.pixel_size or (0.0, 0.0)
            msg["detector_translation"] = [bx * px, by * py, -g.distance]
        if g.wavelength is not None:
            msg["incident_wavelength"] = g.wavelength
            msg["incident_energy"] = 1000 * _HC_KEV_ANGSTROM / g.wavelength
        optional = {"count_time": start.count_time, "frame_time": ins.frame_time or start.count_time,
                    "saturation_value": start.saturation}
        msg |= {k: v for k, v in optional.items() if v is not None}
        return [cbor2.dumps(msg)]

    def image(self, series: int, index: int, data: np.ndarray, *, timestamp: float | None = None,
              blob: bytes | None = None) -> list[bytes]:
        """The ``image`` message carrying frame ``index`` in every channel.

        ``blob``, when given, is the frame already encoded as :attr:`encoding` (HDF5
        filter chunk layout, as :func:`livediff.sources.codecs.encode` writes it): sent as
        is, ``data`` then only gives the shape and dtype.

        Raises
        ------
        ValueError
            ``blob`` given to an encoder of more than one channel (the others would need
            the pixels).
        """
        if blob is not None and len(self.channels) > 1:
            raise ValueError(f"a precompressed frame fills one channel, this encoder has {len(self.channels)}")
        if blob is None:
            data = np.ascontiguousarray(data)
        t_ns = round(((time.time() if timestamp is None else timestamp) - self._armed.timestamp()) * 1e9)
        channels = {c: self._array(data if k == 0 else data // (k + 1), blob) for k, c in enumerate(self.channels)}
        return [cbor2.dumps(cbor2.CBORTag(_SELF_DESCRIBE, {
            "type": "image", "series_id": series, "series_unique_id": self.unique_id(series), "image_id": index,
            "start_time": [t_ns, 1_000_000_000], "stop_time": [t_ns + 1_000_000, 1_000_000_000],
            "real_time": [1_000_000, 1_000_000_000], "series_date": self._armed, "data": channels,
        }))]

    def end(self, series: int) -> list[bytes]:
        """The ``end`` message."""
        return [cbor2.dumps(cbor2.CBORTag(_SELF_DESCRIBE, {
            "type": "end", "series_id": series, "series_unique_id": self.unique_id(series)}))]

    def _array(self, data: np.ndarray, blob: bytes | None = None) -> cbor2.CBORTag:
        """Tag 40 [[rows, cols], typed array], the bytes compressed as ``encoding`` (tag 56500);
        ``blob``: those bytes, already encoded."""
        payload: Any = codecs.encode(data, self.encoding) if blob is None else blob
        if self.encoding != "raw":
            element = data.dtype.itemsize if self.encoding == "bslz4" else 0
            payload = cbor2.CBORTag(_COMPRESSED, [self.encoding, element, payload])
        return cbor2.CBORTag(_MULTI_DIM, [list(data.shape), cbor2.CBORTag(TYPED_ARRAY_TAGS[data.dtype.name], payload)])


def pixel_mask(start: SeriesStart) -> np.ndarray:
    """NXmx/DECTRIS pixel mask of ``start``: its detector's flags when it has them, else 0 = good and
    1 (the "gap" bit) = not valid."""
    flags = start.instrument.pixel_flags
    if flags is not None and flags.shape == tuple(start.shape):
        return flags
    if start.mask is None:
        return np.zeros(start.shape, dtype=np.uint32)
    return (~start.mask).astype(np.uint32)


def goniometer(start: SeriesStart) -> tuple[tuple[str, float, float], ...]:
    """``(axis, start, increment)`` of each axis to send: the series' own, else every axis an EIGER
    knows at 0 (a still)."""
    return start.instrument.goniometer or tuple((axis, 0.0, 0.0) for axis in _AXES)


def _json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode()
