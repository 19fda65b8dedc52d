"""Arrays -> what the page draws: downsampled, contrast-stretched 8-bit images and JSON-safe lists.

Pure functions on numpy arrays, called off the event loop.  An image travels as its
8-bit quantised values (0 = no data; 1..255 the stretched range), zlib-compressed and
base64-encoded, with the pixel spacing ``k`` of the downsampled grid in original pixels
and colour-bar ticks labelled with the original values.  The page decompresses it with
the browser's own ``DecompressionStream`` and colours it with a perceptual colour map.
"""
from __future__ import annotations

import base64
import math
import zlib
from typing import Any, Literal

import numpy as np

#: percentiles of the finite values that bound the linear stretch
PERCENTILES = (1.0, 99.5)


def downsample(image: np.ndarray, mask: np.ndarray | None, max_side: int) -> tuple[np.ndarray, int]:
    """Mean of the valid pixels of each k x k block, k the smallest factor fitting ``max_side``.

    Parameters
    ----------
    image : 2-D array, any real dtype.
    mask : bool array of ``image``'s shape, True = valid, or None (all valid).  Non-finite
        pixels count as invalid too.
    max_side : the longest side of the result, px.

    Returns
    -------
    (small, k) : float32 array of ``ceil(rows / k), ceil(cols / k)`` with NaN where a block
        holds no valid pixel (edge blocks are partial), and the block size k.

    Notes
    -----
    One pass over the image in its own dtype (sums accumulate in 64 bits), so a 4-Mpixel
    frame takes a few milliseconds; the valid-pixel counts of an integer image depend on
    the mask only and are kept for the next frame with the same mask.
    """
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {image.shape}")
    if mask is not None and mask.shape != image.shape:
        raise ValueError(f"mask shape {mask.shape} != image shape {image.shape}")
    k = max(1, math.ceil(max(image.shape) / max_side))
    floating = image.dtype.kind == "f"
    valid = mask
    if floating:
        finite = np.isfinite(image)
        valid = finite if mask is None else mask & finite
    values = image if valid is None else np.where(valid, image, 0) if floating else image * valid
    wide = np.float64 if floating else np.int64
    sums = _block_sums(values, k, wide)
    if valid is None:
        counts = _block_sums(np.ones(image.shape, np.uint8), k, np.int64)  # partial edge blocks
    elif floating:
        counts = _block_sums(valid.view(np.uint8), k, np.int64)
    else:
        counts = _mask_counts(valid, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan).astype(np.float32), k


def _block_sums(a: np.ndarray, k: int, dtype: type) -> np.ndarray:
    """Sums of k x k blocks (partial at the edges), accumulated in ``dtype`` without a full-size copy."""
    rows = np.zeros((-(-a.shape[0] // k), a.shape[1]), dtype)
    for i in range(k):
        part = a[i::k]
        rows[:part.shape[0]] += part
    out = np.zeros((rows.shape[0], -(-a.shape[1] // k)), dtype)
    for j in range(k):
        part = rows[:, j::k]
        out[:, :part.shape[1]] += part
    return out


_counts_cache: list[Any] = [None, 0, None]  # [mask, k, counts]: the series mask changes once per series


def _mask_counts(mask: np.ndarray, k: int) -> np.ndarray:
    cached_mask, cached_k, counts = _counts_cache
    if cached_mask is not mask or cached_k != k:
        counts = _block_sums(mask.view(np.uint8), k, np.int64)
        _counts_cache[:] = [mask, k, counts]
    return counts


def quantise(small: np.ndarray, contrast: Literal["log", "percentile"]) -> dict[str, Any]:
    """An 8-bit picture of ``small`` (NaN = no data) and how to read its values back.

    ``percentile``: linear between the 1st and 99.5th percentiles of the finite values.
    ``log``: log(1 + v - lo) between lo = the 1st percentile and the maximum, so weak
    rings and bright spots both show.  Returns ``{"q": uint8 array, "lo", "hi", "ticks"}``
    with ``ticks`` a list of ``[level, label]`` for the colour bar (level in 1..255).
    """
    finite = small[np.isfinite(small)]
    q = np.zeros(small.shape, np.uint8)
    if finite.size == 0:
        return {"q": q, "lo": None, "hi": None, "ticks": []}
    lo, p_hi = (float(v) for v in np.percentile(finite, PERCENTILES))
    hi = float(finite.max()) if contrast == "log" else p_hi
    if not hi > lo:
        hi = lo + 1.0
    forward, inverse = _transform(contrast, lo)
    span = forward(hi) - forward(lo)
    ok = np.isfinite(small)
    level = (forward(np.clip(small[ok], lo, hi)) - forward(lo)) / span
    q[ok] = 1 + np.round(level * 254).astype(np.uint8)
    ticks = []
    for t in np.linspace(0.0, 1.0, 5):
        value = inverse(forward(lo) + t * span)
        ticks.append([1 + round(t * 254), f"{value:.3g}"])
    return {"q": q, "lo": lo, "hi": hi, "ticks": ticks}


def _transform(contrast: str, lo: float):
    if contrast == "log":
        return (lambda v: np.log1p(np.asarray(v, np.float64) - lo)), (lambda t: lo + math.expm1(t))
    return (lambda v: np.asarray(v, np.float64)), (lambda t: t)


def image_payload(image: np.ndarray, mask: np.ndarray | None, *, max_side: int,
                  contrast: Literal["log", "percentile"]) -> dict[str, Any]:
    """What the page needs to draw ``image``: shape, block size, zlib+base64 8-bit values, ticks."""
    small, k = downsample(image, mask, max_side)
    picture = quantise(small, contrast)
    # zlib level 1: ten times faster than level 6 on detector noise, 5 % larger
    data = base64.b64encode(zlib.compress(picture.pop("q").tobytes(), 1)).decode("ascii")
    return {"shape": list(image.shape), "size": list(small.shape), "k": k, "contrast": contrast,
            "data": data, **picture}


def finite_list(values: Any) -> list[Any]:
    """A 1-D array as a JSON-safe list: NaN and infinities become None (JSON has neither)."""
    a = np.asarray(values, dtype=np.float64).ravel()
    return [v if math.isfinite(v) else None for v in a.tolist()]


def scalar(value: Any) -> Any:
    """A column value as JSON: numbers stay numbers (non-finite -> None), anything else its text."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if value is None:
        return None
    return str(value)
