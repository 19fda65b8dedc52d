"""Spotfinding: DIALS' dispersion threshold, then spots per frame (2-D) or across frames (3-D).

Kernels, usable without the service::

    strong = dispersion_mask(image, mask)            # bool, True = strong pixel
    spots = find_spots(image, mask, z=frame_index)   # columns of the ``spots`` message

The ``spots`` operator runs them on every frame.  In ``mode = "2d"`` (stills, grid
scans) the rows it emits with a frame are that frame's spots.  In ``mode = "3d"``
(rotation data) components of consecutive frames that overlap are one spot (6-
connectivity); the rows emitted with a frame are the spots that frame *completed* (none
of their pixels is on it, so they cannot grow), each spot once, whatever frame it
started on.  Either way ``n_spots`` counts the frame's own (2-D) spots after the filters,
and the frame's results carry those spots under ``"frame_spots"`` (what ``mx`` analyses).

When the geometry is complete (the series header's, with the operator's optional
``beam_center``, ``distance``, ``wavelength`` and ``pixel_size`` replacing its fields) the
rows also carry ``d`` (Å) and ``inv_d2`` (1/d², Å⁻²); the operators after ``spots`` see
that geometry too.  Otherwise the rows lack them, and one log line per series says why.

Modules: ``threshold`` (numba threshold kernels, row blocks on threads), ``integer`` (the
threshold's fast path for integer images), ``label``
(components and their properties), ``link`` (linking across frames), ``operator`` (the
``spots`` operator).
"""
from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from ..checks import check_mask, check_ndim, check_shape
from .label import NSTAT, component_stats, label_runs, select, shoeboxes, spot_columns, strong_runs
from .integer import SLACK, dispersion_block_int, fits, limits
from .threshold import MAX_VALUE, background_block, block_rows, dispersion_block, extended_strong, run_blocks

__all__ = ["FRAME_SPOTS", "MAX_VALUE", "ROW_COLUMNS", "FrameSpots", "Spots", "SpotsParams", "components",
           "dispersion_mask", "find_spots", "frame_spots", "integer_kernel_args", "strong_pixels"]


def dispersion_mask(image: np.ndarray, mask: np.ndarray | None = None, *, gain: float | np.ndarray | None = None,
                    kernel_size: tuple[int, int] = (3, 3), sigma_background: float = 6.0, sigma_strong: float = 3.0,
                    min_local: int = 2, global_threshold: float = 0.0, extended: bool = False,
                    max_value: float = MAX_VALUE, threads: int = 1) -> np.ndarray:
    """Strong pixels of one frame by DIALS' dispersion (or extended dispersion) test.

    Parameters
    ----------
    image : (rows, cols) array, integer or float (counts, not yet thresholded).
    mask : bool array of the same shape, True = valid pixel; None = all valid.
    gain : detector gain, a scalar or a per-pixel map of the image's shape; None = the
        DIALS formulas without gain (which differ from gain 1 only in rounding).
    kernel_size : (kh, kw) half-sizes of the window, which is (2 kh + 1) x (2 kw + 1).
    sigma_background : sigma_b of the dispersion test.
    sigma_strong : sigma_s of the strong test.
    min_local : fewest usable pixels a window needs.
    global_threshold : a strong pixel's value must exceed it.
    extended : DIALS' ``dispersion_extended`` algorithm (its offline default) instead of
        ``dispersion`` (the live default).
    max_value : pixels with ``|value| >= max_value`` (and NaN) are left out of every window
        and are never strong; DIALS uses 2**24.
    threads : worker threads, each taking a block of rows (the kernels release the GIL).

    Returns
    -------
    bool array of the image's shape, True = strong pixel.

    Raises
    ------
    ValueError
        On a mask or gain map whose shape differs from the image's, or parameters out of range.
    TypeError
        On a non-real image, a non-bool mask or non-integer sizes.

    Notes
    -----
    With m, x, y the count, sum and sum of squares of the usable pixels in the clipped
    window around a pixel of value v, the pixel is strong when it is usable,
    m >= min_local, x >= 0, v > global_threshold and (all strict)

    - dispersion: m y - x^2 - x (m - 1) > x sigma_b sqrt(2 (m - 1)), or with a gain g:
      m y - x^2 > g x (m - 1 + sigma_b sqrt(2 (m - 1))), i.e. variance/mean >
      g (1 + sigma_b sqrt(2 / (m - 1))) with the unbiased variance;
    - strength: m v - x > sigma_s sqrt(g x m), i.e. v > mean + sigma_s sqrt(g mean).

    The extended variant flags dispersed pixels (dispersion test only; unusable pixels
    count as not background), erodes the flags by a square of half-size
    min(kernel_size) - 1 (the image border is not background), and calls a pixel of
    that core strong when v > global_threshold and v >= mean + sigma_s sqrt(g mean), the
    mean taken over the usable non-core pixels of the window enlarged by 2 (0 with fewer
    than 2 such pixels).  Both follow DIALS' ``DispersionThreshold`` and
    ``DispersionExtendedThreshold`` (``dials/algorithms/image/threshold/local.h``); see
    Winter et al., Acta Cryst. D74 (2018) 85-97.

    Sums are exact for integer-valued images, so the mask equals that of any exact
    implementation (e.g. float64 summed-area tables, as DIALS' C++); for other float
    images, pixels within rounding (about 1e-12 relative) of a threshold may go either
    way.  Integer images of at most 32 bits (with windows of at most 127 pixels) are
    summed in 32-bit integers, about twice as fast, with the same result.
    """
    return _strong_pixels(image, mask, gain=gain, kernel_size=kernel_size, sigma_background=sigma_background,
                          sigma_strong=sigma_strong, min_local=min_local, global_threshold=global_threshold,
                          extended=extended, max_value=max_value, threads=threads)[0]


def strong_pixels(image: np.ndarray, mask: np.ndarray | None = None,
                  **params: Any) -> tuple[np.ndarray, np.ndarray, int]:
    """:func:`dispersion_mask`, with the strong pixels as runs and the number of valid pixels.

    Parameters
    ----------
    image, mask, **params : as for :func:`dispersion_mask`.

    Returns
    -------
    strong : bool array, True = strong pixel.
    runs : (n, 3) int32 runs (row, first col, end col) of strong pixels in scan order.
    n_valid : number of valid pixels (True in the mask).
    """
    bound = inspect.signature(dispersion_mask).bind(image, mask, **params)
    bound.apply_defaults()
    out, runs = _strong_pixels(**bound.arguments)
    return out, runs, int(out.size if mask is None else np.count_nonzero(mask))


def _strong_pixels(image: np.ndarray, mask: np.ndarray | None, *, gain: float | np.ndarray | None,
                   kernel_size: tuple[int, int], sigma_background: float, sigma_strong: float, min_local: int,
                   global_threshold: float, extended: bool, max_value: float,
                   threads: int) -> tuple[np.ndarray, np.ndarray]:
    image, mask_rows, gain_rows, has_gain, limit = _prepare(image, mask, gain, max_value)
    kh, kw = _kernel(kernel_size)
    _check_params(sigma_background=sigma_background, sigma_strong=sigma_strong, min_local=min_local,
                  threads=threads)
    out = np.zeros(image.shape, dtype=np.bool_)
    if not extended:
        params = _params(kh, kw, sigma_background, sigma_strong, min_local, global_threshold)
        fast = _integer_args(image.dtype, gain_rows, params, limit)
        args = (image, mask_rows, gain_rows, has_gain)
        if fast is not None:
            results = run_blocks(threads, image.shape[0], dispersion_block_int, *args, *fast, out=out)
            blocks = []
            for (runs, complete), (r0, r1) in zip(results, block_rows(threads, image.shape[0])):
                if not complete:  # too many values too large for int32 sums: the general kernel
                    out[r0:r1] = False
                    runs = dispersion_block(*args, *params, limit, r0, r1, out)
                blocks.append(runs)
        else:
            blocks = run_blocks(threads, image.shape[0], dispersion_block, *args, *params, limit, out=out)
        return out, np.concatenate(blocks)
    flags = np.zeros(image.shape, dtype=np.bool_)
    run_blocks(threads, image.shape[0], background_block, image, mask_rows, gain_rows, has_gain, kh, kw,
               float(sigma_background), int(min_local), limit, out=flags)
    erosion = min(kh, kw) - 1
    core = ndimage.binary_erosion(flags, structure=np.ones((2 * erosion + 1,) * 2, bool), border_value=1)
    usable = (image < limit) & (image > -limit)
    if mask is not None:
        usable &= mask
    rr, cc = np.nonzero(core & usable)
    extended_strong(image, usable & ~core, gain_rows, rr, cc, kh + 2, kw + 2, float(sigma_strong),
                    float(global_threshold), limit, out)
    return out, strong_runs(out)


def integer_kernel_args(image: np.ndarray, mask: np.ndarray | None, *, gain: float | np.ndarray | None = None,
                        kernel_size: tuple[int, int] = (3, 3), sigma_background: float = 6.0,
                        sigma_strong: float = 3.0, min_local: int = 2, global_threshold: float = 0.0,
                        extended: bool = False, max_value: float = MAX_VALUE,
                        threads: int = 1) -> tuple[Any, ...] | None:
    """The arguments of ``integer.dispersion_rows`` after its row hook and before the rows,
    for :func:`dispersion_mask` on ``image`` with ``mask`` (which the hook may still be
    filling), or None when that is not the kernel the parameters and the image's dtype
    call for, or when it runs on several row blocks."""
    if extended or threads > 1:
        return None
    image, mask_rows, gain_rows, has_gain, limit = _prepare(image, mask, gain, max_value)
    kh, kw = _kernel(kernel_size)
    _check_params(sigma_background=sigma_background, sigma_strong=sigma_strong, min_local=min_local,
                  threads=threads)
    fast = _integer_args(image.dtype, gain_rows, _params(kh, kw, sigma_background, sigma_strong, min_local,
                                                         global_threshold), limit)
    if fast is None:
        return None
    return image, mask_rows, gain_rows, has_gain, *fast


def _params(kh: int, kw: int, sigma_background: float, sigma_strong: float, min_local: int,
            global_threshold: float) -> tuple[int, int, float, float, int, float]:
    """The test's parameters as the kernels take them (after the gain, before the limits)."""
    return kh, kw, float(sigma_background), float(sigma_strong), int(min_local), float(global_threshold)


def _integer_args(dtype: np.dtype, gain_rows: np.ndarray, params: tuple[int, int, float, float, int, float],
                  limit: Any) -> tuple[Any, ...] | None:
    """The arguments of ``dispersion_block_int`` after (image, mask, gain, has_gain) and before the
    rows, or None when the image or the parameters (:func:`_params`) need the general kernel
    (see ``integer``)."""
    kh, kw, _, sigma_strong, _, global_threshold = params
    if not fits(dtype, kh, kw) or not math.isfinite(global_threshold):
        return None
    with np.errstate(over="ignore"):
        factor = (sigma_strong ** 2 * (1 - SLACK) * gain_rows).astype(np.float32)
    if not np.isfinite(factor).all():
        return None
    low = np.int32(min(max(math.floor(global_threshold), -2 ** 31), 2 ** 31 - 1))  # v > low: v > threshold
    info = np.iinfo(dtype)
    vmax, vmin = min(int(limit) - 1, int(info.max)), max(1 - int(limit), int(info.min))
    usable = (None if vmin == info.min else dtype.type(vmin), None if vmax == info.max else dtype.type(vmax))
    shift, big, huge = limits(kh, kw)
    if dtype.kind == "i" and vmin <= 1 - big and vmax >= big - 1:  # the sums let every value in (integer.py)
        return factor, *params, low, *usable, None, None, shift, big, huge
    return factor, *params, low, *usable, *usable, shift, big, huge


def _prepare(image: np.ndarray, mask: np.ndarray | None, gain: float | np.ndarray | None,
             max_value: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool, Any]:
    """Checked, C-ordered inputs; a missing mask or a scalar gain becomes a single row."""
    image = check_ndim(image)
    if image.dtype.kind not in "uif" or image.dtype == np.uint64 or image.size == 0:
        raise TypeError(f"image must be a non-empty integer (at most 32-bit unsigned) or float array, "
                        f"got {image.dtype} {image.shape}")
    image = np.ascontiguousarray(image)
    cols = image.shape[1]
    mask = check_mask(mask, image.shape)
    mask_rows = np.ones((1, cols), dtype=np.bool_) if mask is None else np.ascontiguousarray(mask)
    if gain is None or np.ndim(gain) == 0:
        g = 1.0 if gain is None else float(gain)
        if not g > 0 or not math.isfinite(g):
            raise ValueError(f"gain must be a finite number > 0, got {gain!r}")
        gain_rows = np.full((1, cols), g)
    else:
        gain_rows = np.ascontiguousarray(gain, dtype=np.float64)
        check_shape(gain_rows, image.shape, "gain map")
    if not max_value > 0:
        raise ValueError(f"max_value must be > 0, got {max_value!r}")
    limit = np.int64(min(math.ceil(max_value), 2 ** 62)) if image.dtype.kind in "ui" else np.float64(max_value)
    return image, mask_rows, gain_rows, gain is not None, limit


def _kernel(kernel_size: tuple[int, int]) -> tuple[int, int]:
    try:
        kh, kw = (int(k) for k in kernel_size)
    except (TypeError, ValueError):
        raise TypeError(f"kernel_size must be two integers (kh, kw), got {kernel_size!r}") from None
    if min(kh, kw) < 1 or (kh, kw) != tuple(kernel_size):
        raise ValueError(f"kernel_size must be two integers >= 1, got {kernel_size!r}")
    return kh, kw


def _check_params(*, sigma_background: float, sigma_strong: float, min_local: int, threads: int) -> None:
    if not sigma_background >= 0:
        raise ValueError(f"sigma_background must be >= 0, got {sigma_background!r}")
    if not sigma_strong >= 0:
        raise ValueError(f"sigma_strong must be >= 0, got {sigma_strong!r}")
    if int(min_local) != min_local or min_local < 0:
        raise ValueError(f"min_local must be an integer >= 0, got {min_local!r}")
    if int(threads) != threads or threads < 1:
        raise ValueError(f"threads must be an integer >= 1, got {threads!r}")


@dataclass(frozen=True)
class FrameSpots:
    """One frame's strong-pixel components, before the spot filters.

    Attributes
    ----------
    runs, labels : strong-pixel runs (row, col0, col1) and their component (``spots_label``).
    stats : (k, NSTAT) statistics of the k components.
    n_strong, n_valid : strong and valid pixels of the frame.
    rejected : more than the allowed fraction of valid pixels is strong; then there are
        no components.
    """

    runs: np.ndarray
    labels: np.ndarray
    stats: np.ndarray
    n_strong: int
    n_valid: int
    rejected: bool

    @property
    def strong_fraction(self) -> float:
        return self.n_strong / self.n_valid if self.n_valid else 0.0


def frame_spots(image: np.ndarray, mask: np.ndarray | None = None, *, z: int = 0,
                max_strong_fraction: float = 1.0, **threshold: Any) -> FrameSpots:
    """Strong pixels of a frame (:func:`strong_pixels`) and their 4-connected components.

    Parameters
    ----------
    image, mask : as for :func:`dispersion_mask`.
    z : the frame's index, the components' z coordinate.
    max_strong_fraction : beyond this fraction of strong valid pixels the frame is
        rejected and not labelled (an ice ring, a saturated beam).
    **threshold : keywords of :func:`dispersion_mask`.

    Returns
    -------
    FrameSpots
    """
    _, runs, n_valid = strong_pixels(image, mask, **threshold)
    return components(image, runs, n_valid, z=z, max_strong_fraction=max_strong_fraction)


def components(image: np.ndarray, runs: np.ndarray, n_valid: int, *, z: int = 0,
               max_strong_fraction: float = 1.0) -> FrameSpots:
    """The 4-connected components of a frame's strong pixels (``runs`` of :func:`strong_pixels`,
    ``n_valid`` valid pixels): the second half of :func:`frame_spots`."""
    n_strong = int((runs[:, 2] - runs[:, 1]).sum())
    if n_strong > max_strong_fraction * n_valid:
        return FrameSpots(runs[:0], np.zeros(0, np.int64), np.zeros((0, NSTAT)), n_strong, n_valid, True)
    labels, k = label_runs(runs)
    return FrameSpots(runs, labels, component_stats(np.asarray(image), runs, labels, k, z), n_strong, n_valid, False)


def find_spots(image: np.ndarray, mask: np.ndarray | None = None, *, z: int = 0, min_spot_size: int = 3,
               max_spot_size: int = 1000, max_separation: float = 2.0, max_strong_fraction: float = 0.25,
               shoebox: bool = False, **threshold: Any) -> dict[str, np.ndarray]:
    """Spots of one frame: strong pixels, 4-connected components, their properties.

    Parameters
    ----------
    image : (rows, cols) integer or float array (counts).
    mask : bool array of the same shape, True = valid; None = all valid.
    z : the frame's index, reported as the spots' z.
    min_spot_size, max_spot_size : bounds on a spot's pixel count (DIALS: 3 for
        photon-counting detectors, 1000).
    max_separation : largest distance (px) from a spot's peak pixel to its centroid.
    max_strong_fraction : a frame with a larger fraction of strong valid pixels gives no
        spots (with a warning).
    shoebox : also return each spot's pixels and mask within its bounding box.
    **threshold : keywords of :func:`dispersion_mask` (gain, kernel_size,
        sigma_background, sigma_strong, min_local, global_threshold, extended, max_value,
        threads).

    Returns
    -------
    dict of the ``spots`` message's columns, one entry per spot in scan order of the
    spots' first pixels: float64 ``x``, ``y`` (weighted centroid; pixel (r, c) is centred
    on (y, x) = (r, c)), ``z``, ``var_x``, ``var_y``, ``var_z`` (centroid variances, DIALS'
    ``xyzobs.px.variance``), ``intensity`` (sum of the spot's counts) and
    ``intensity_var``; int64 ``bbox`` (n, 6) = x0, x1, y0, y1, z0, z1 with exclusive upper
    bounds, and ``npix``.  With ``shoebox``: ``shoebox_data`` (float32), ``shoebox_mask``
    (bool) and ``shoebox_offset`` (n + 1), box i being ``[offset[i]:offset[i + 1]]``
    reshaped to (y1 - y0, x1 - x0).

    Raises
    ------
    ValueError, TypeError
        As :func:`dispersion_mask`.

    Notes
    -----
    Centroids are weighted by the pixel values over the spot's strong pixels; DIALS puts
    pixel centres at index + 0.5 and a single-frame spot at z + 0.5, livediff at the index
    (add 0.5 to compare).  See ``spots_label.spot_columns`` for the variances.
    """
    spots = frame_spots(image, mask, z=z, max_strong_fraction=max_strong_fraction, **threshold)
    if spots.rejected:
        warnings.warn(f"{spots.strong_fraction:.1%} of the valid pixels are strong (more than "
                      f"max_strong_fraction={max_strong_fraction}): no spots reported", stacklevel=2)
    keep = select(spots.stats, min_size=min_spot_size, max_size=max_spot_size, max_separation=max_separation)
    columns = spot_columns(spots.stats[keep])
    if shoebox:
        data, box_mask, offsets = shoeboxes(np.asarray(image), spots.runs, spots.labels, spots.stats, keep)
        columns.update(shoebox_data=data, shoebox_mask=box_mask, shoebox_offset=offsets)
    return columns


# the operator runs the kernels above
from .operator import FRAME_SPOTS, ROW_COLUMNS, Spots, SpotsParams  # noqa: E402
