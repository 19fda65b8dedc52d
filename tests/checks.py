"""What a decoder's accepted output must look like, for the decoder fuzz tests: the model's promises."""
from __future__ import annotations

import math

import numpy as np

from livediff.errors import DecodeError
from livediff.model import FRAME_DTYPES, Frame, SeriesEnd, SeriesStart
from livediff.sources import codecs
from livediff.sources.fields import MAX_FRAMES, Limits

_INT64 = 1 << 63


def assert_sound(events, series: SeriesStart | None = None, *, declared=None, limits: Limits = Limits()):
    """Check every event a decoder returned; return the series open after them.

    A start has a 2-D shape within ``limits``, a frame dtype, a bool mask of its shape (or
    none), int64-sized counts and finite geometry; a frame has a frame number below
    :data:`MAX_FRAMES`, 2-D data of a frame dtype, the shape and dtype of its open series
    (and of ``declared`` = (shape, dtype name) when given), a finite timestamp and either
    pixels or a compressed payload (framing checked, decoded later) that decodes to pixels
    of that shape and dtype or raises DecodeError.
    """
    for ev in events if isinstance(events, list) else [events]:
        if isinstance(ev, Exception):
            continue
        if isinstance(ev, SeriesStart):
            _sound_start(ev, limits)
            series = ev
        elif isinstance(ev, Frame):
            assert 0 <= ev.series < _INT64 and 0 <= ev.index < MAX_FRAMES
            assert (ev.data is None) != (ev.payload is None)  # pixels, or a compressed payload decoded later
            if ev.payload is None:
                shape, dtype = ev.data.shape, ev.data.dtype.name
                assert ev.data.ndim == 2
            else:
                shape, dtype = ev.payload.shape, ev.payload.dtype
                assert ev.payload.encoding in ("bslz4", "lz4") and len(shape) == 2
            assert dtype in FRAME_DTYPES
            assert shape[0] * shape[1] <= limits.max_pixels
            assert shape[0] * shape[1] * np.dtype(dtype).itemsize <= limits.max_bytes
            if declared is not None:
                assert (tuple(shape), dtype) == (tuple(declared[0]), declared[1])
            if series is not None and series.series == ev.series:
                assert (tuple(shape), dtype) == (series.shape, series.dtype)
            assert isinstance(ev.timestamp, float) and math.isfinite(ev.timestamp)
            if ev.payload is not None:
                try:
                    decoded = pixels(ev)
                except DecodeError:  # well framed, corrupt inside: a failure of that frame on its worker
                    continue
                assert decoded.shape == tuple(shape) and decoded.dtype.name == dtype
        else:
            assert isinstance(ev, SeriesEnd) and 0 <= ev.series < _INT64
    return series


def assert_decodes_as_declared(decode, parts, data: np.ndarray, declared) -> None:
    """``decode(parts)``, a message carrying ``data`` whose header claims ``declared`` = (shape,
    dtype name), either raises DecodeError, and then the claim is false (a faithful header always
    decodes), or gives a sound frame of the declared shape and dtype: ``data`` itself when true."""
    true = declared == (data.shape, data.dtype.name)
    try:
        events = decode(parts)
    except DecodeError:
        assert not true
        return
    assert_sound(events, declared=declared)
    frame = (events if isinstance(events, list) else [events])[-1]
    if true:
        np.testing.assert_array_equal(pixels(frame), data)


def pixels(frame: Frame) -> np.ndarray:
    """A received frame's pixels: its data, or its compressed payload decoded (as a worker does)."""
    return frame.data if frame.payload is None else codecs.decode_payload(frame.payload)


def _sound_start(start: SeriesStart, limits: Limits) -> None:
    rows, cols = start.shape
    assert type(rows) is int and type(cols) is int and rows * cols <= limits.max_pixels
    assert rows * cols * np.dtype(start.dtype).itemsize <= limits.max_bytes
    assert 0 <= start.series < _INT64 and start.dtype in FRAME_DTYPES
    assert start.mask is None or (start.mask.dtype == bool and start.mask.shape == start.shape)
    assert start.n_frames is None or (type(start.n_frames) is int and 0 <= start.n_frames <= MAX_FRAMES)
    g = start.geometry
    assert g.beam_center is None or (len(g.beam_center) == 2 and all(map(math.isfinite, g.beam_center)))
    assert g.pixel_size is None or (len(g.pixel_size) == 2 and all(math.isfinite(v) and v > 0 for v in g.pixel_size))
    for value in (g.distance, g.wavelength):
        assert value is None or (math.isfinite(value) and value > 0)
    assert start.count_time is None or (math.isfinite(start.count_time) and start.count_time >= 0)
    assert start.saturation is None or math.isfinite(start.saturation)
    assert start.scan is None or (len(start.scan.shape) == 2 and min(start.scan.shape) > 0)
    assert isinstance(start.meta, dict) and all(isinstance(k, str) for k in start.meta)
