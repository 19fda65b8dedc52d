"""Per-pattern EBSD kernels: intensity rescaling, image quality, normalisation for dot products.

Conventions (kikuchipy 0.13 where it defines the operation, see ``shared/microscopy.md``):

- :func:`rescale` stretches a pattern's valid pixels from their min-max (or given
  percentiles) to an output range with a truncating cast, as every kikuchipy pattern step
  ends (``trunc(255 (x - min) / (max - min))`` for uint8).
- :func:`image_quality` is Krieger Lassen's IQ as kikuchipy computes it: amplitude (not
  power) spectrum of the zero-mean pattern, asymmetric frequency weights.
- :func:`unit_pattern` gives the zero-mean, unit-norm pattern whose dot products with its
  neighbours' are kikuchipy's average neighbour dot product.

Masked pixels (``False``) are left out: a rescaled pattern has 0 there, the IQ and the
dot products see them at the mean of the valid pixels (zero once centred).
"""
from __future__ import annotations

import functools

import numba
import numpy as np
import scipy.fft

from ..checks import check_image, check_mask

__all__ = ["OUTPUT_RANGES", "QualityWeights", "image_quality", "rescale", "unit_pattern"]

#: (min, max) a pattern is stretched to for each output dtype (scikit-image's dtype_range, kikuchipy's)
OUTPUT_RANGES = {"uint8": (0.0, 255.0), "uint16": (0.0, 65535.0), "float32": (-1.0, 1.0)}


@numba.njit(nogil=True, cache=True)
def _min_max(image, mask):  # pragma: no cover - compiled
    """(min, max) of the valid finite pixels."""
    lo, hi = np.inf, -np.inf
    for r in range(image.shape[0]):
        row = image[r]
        for c in range(image.shape[1]):
            v = np.float64(row[c])
            if (mask is None or mask[r, c]) and np.abs(v) < np.inf:
                lo = min(lo, v)
                hi = max(hi, v)
    return lo, hi


def _range(image: np.ndarray, mask: np.ndarray | None) -> tuple[float, float]:
    """:func:`_min_max`, by numpy's vectorised reductions when every pixel counts and none is NaN or infinite."""
    if mask is None and image.size:
        lo, hi = image.min(), image.max()  # a NaN or an infinity shows in one of them
        if np.isfinite(lo) and np.isfinite(hi):
            return float(lo), float(hi)
    return _min_max(image, mask)


@numba.njit(nogil=True, cache=True)
def _stretch(image, mask, lo, hi, omin, omax, out):  # pragma: no cover - compiled
    inverse = 1.0 / (hi - lo) if hi > lo else 0.0  # kikuchipy's order of operations: same roundings
    for r in range(image.shape[0]):
        row, o = image[r], out[r]
        for c in range(image.shape[1]):
            v = min(max(np.float64(row[c]), lo), hi)
            y = (v - lo) * inverse * (omax - omin) + omin
            o[c] = y if (mask is None or mask[r, c]) and np.abs(y) < np.inf else 0


def rescale(image: np.ndarray, mask: np.ndarray | None = None, *, dtype: str = "uint8",
            percentiles: tuple[float, float] | None = None) -> np.ndarray:
    """Stretch a pattern's intensities to the full range of ``dtype`` (kikuchipy's ``rescale_intensity``).

    Parameters
    ----------
    image : (rows, cols), any real dtype.
    mask : bool, True = valid; None = all valid.  Invalid and non-finite pixels take no part
        in the range and are 0 in the result.
    dtype : ``"uint8"`` (0..255), ``"uint16"`` (0..65535) or ``"float32"`` (-1..1).
    percentiles : (low, high) in percent: intensities below / above these percentiles of
        the valid pixels are clipped before the stretch (contrast for display); None = min, max.

    Returns
    -------
    New array of ``dtype``: ``omin + (x - lo) (omax - omin) / (hi - lo)``, truncated toward
    zero for integer types.  A flat pattern (hi == lo) maps to ``omin``.
    """
    image = check_image(image)
    mask = check_mask(mask, image.shape)
    if dtype not in OUTPUT_RANGES:
        raise ValueError(f"dtype must be one of {', '.join(OUTPUT_RANGES)}, got {dtype!r}")
    if percentiles is not None:
        low, high = percentiles
        if not 0 <= low < high <= 100:
            raise ValueError(f"percentiles must be 0 <= low < high <= 100, got {percentiles}")
        values = image if mask is None else image[mask]
        values = values[np.isfinite(values)] if values.dtype.kind == "f" else values
        lo, hi = np.percentile(values, percentiles) if values.size else (0.0, 0.0)
    else:
        lo, hi = _range(image, mask)
    out = np.empty(image.shape, dtype=dtype)
    _stretch(image, mask, float(lo), float(hi), *OUTPUT_RANGES[dtype], out)
    return out


class QualityWeights:
    """Krieger Lassen's frequency weights for patterns of one shape, folded onto the real FFT's half spectrum.

    kikuchipy's weight of frequency index (k_y, k_x) is ``l_y² + l_x² - 1`` with ``l = k + 1``
    for the non-negative frequencies (k < n // 2) and ``l = k - n`` for the others; the
    largest inertia is their mean.  The real FFT holds each pair (k, -k) once: ``weight``
    and ``count`` give the pair's summed weight and how many full-spectrum terms it stands for.
    """

    def __init__(self, shape: tuple[int, int]) -> None:
        rows, cols = shape
        ly, lx = _frequency_index(rows), _frequency_index(cols)
        full = ly[:, None] ** 2 + lx[None, :] ** 2 - 1.0
        half = cols // 2 + 1
        mirror = full[(-np.arange(rows)) % rows][:, (-np.arange(half)) % cols]
        paired = np.ones(half, dtype=bool)  # columns whose conjugate is another column of the full spectrum
        paired[0] = False
        if cols % 2 == 0:
            paired[-1] = False
        self.weight = np.ascontiguousarray(full[:, :half] + np.where(paired, mirror, 0.0))
        self.count = np.ascontiguousarray(np.where(paired, 2.0, 1.0) * np.ones((rows, 1)))
        self.inertia_max = float(full.mean())
        self.shape = (rows, cols)
        self.dft = _dft_matrices(rows, cols) if max(rows, cols) <= _DFT_SIDE else None


#: patterns up to this many pixels a side get their spectrum as small matrix products (the DFT matrices) in one
#: compiled call: scipy.fft's per-call cost dominates there; each product stays under OpenBLAS's threading threshold
_DFT_SIDE = 64


def _dft_matrices(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """float32 (cos, -sin) of the real DFT along the columns (cols, cols // 2 + 1) and of the DFT along the rows for
    frequencies 0..rows // 2 (rows // 2 + 1, rows): the others are their mirror images (cos even, sin odd)."""
    kx = np.arange(cols // 2 + 1)
    ky = np.arange(rows // 2 + 1)
    col = 2 * np.pi * np.outer(np.arange(cols), kx) / cols
    row = 2 * np.pi * np.outer(ky, np.arange(rows)) / rows
    return tuple(np.ascontiguousarray(a, dtype=np.float32)
                 for a in (np.cos(col), -np.sin(col), np.cos(row), -np.sin(row)))


def _frequency_index(n: int) -> np.ndarray:
    k = np.arange(n, dtype=np.float64)
    return np.where(k < n // 2, k + 1.0, k - n)


@functools.lru_cache(maxsize=8)
def quality_weights(shape: tuple[int, int]) -> QualityWeights:
    """The :class:`QualityWeights` of ``shape`` (cached)."""
    return QualityWeights(shape)


@numba.njit(nogil=True, cache=True)
def _inertia(spectrum, weight, count):  # pragma: no cover - compiled
    num = den = 0.0
    for r in range(spectrum.shape[0]):
        s, w, n = spectrum[r], weight[r], count[r]
        for c in range(spectrum.shape[1]):
            a = np.sqrt(s[c].real * s[c].real + s[c].imag * s[c].imag)
            num += a * w[c]
            den += a * n[c]
    return num / den if den > 0 else np.nan


@numba.njit(nogil=True, cache=True)
def _inertia_dft(centred, col_cos, col_sin, row_cos, row_sin, weight, count):  # pragma: no cover - compiled
    """:func:`_inertia` of ``centred``'s spectrum computed by matrix products: Y = X (C - iS) along the columns,
    then rows ky and n - ky together from (C_ky ∓ i S_ky) Y.  float32 products, float64 sums."""
    rows = centred.shape[0]
    yc, ys = np.dot(centred, col_cos), np.dot(centred, col_sin)  # Y = yc + i ys
    cc, cs = np.dot(row_cos, yc), np.dot(row_cos, ys)
    sc, ss = np.dot(row_sin, yc), np.dot(row_sin, ys)
    num = den = 0.0
    for ky in range(row_cos.shape[0]):
        mirror = rows - ky
        for kx in range(yc.shape[1]):
            # F[ky] = (cc - ss) + i (cs + sc); F[-ky] = (cc + ss) + i (cs - sc)  (row_sin holds -sin)
            re, im = np.float64(cc[ky, kx]) - ss[ky, kx], np.float64(cs[ky, kx]) + sc[ky, kx]
            a = np.sqrt(re * re + im * im)
            num += a * weight[ky, kx]
            den += a * count[ky, kx]
            if 0 < ky and mirror != ky:
                re, im = np.float64(cc[ky, kx]) + ss[ky, kx], np.float64(cs[ky, kx]) - sc[ky, kx]
                a = np.sqrt(re * re + im * im)
                num += a * weight[mirror, kx]
                den += a * count[mirror, kx]
    return num / den if den > 0 else np.nan


@numba.njit(nogil=True, cache=True)
def _quality_dft(image, mask, col_cos, col_sin, row_cos, row_sin, weight, count, inertia_max):  # pragma: no cover
    """The whole image quality of a small pattern in one compiled call (no Python between the steps)."""
    centred = np.empty(image.shape, dtype=np.float32)
    _centred(image, mask, centred)
    return 1.0 - _inertia_dft(centred, col_cos, col_sin, row_cos, row_sin, weight, count) / inertia_max


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "nsz", "contract"})
def _centred(image, mask, out):  # pragma: no cover - compiled
    """out = image - mean over the valid pixels, 0 at invalid ones; returns the sum of squares (sums
    reassociated so that they vectorise, float64)."""
    total, n = 0.0, 0
    for r in range(image.shape[0]):
        for c in range(image.shape[1]):
            if mask is None or mask[r, c]:
                total += np.float64(image[r, c])
                n += 1
    mean = total / n if n else 0.0
    ss = 0.0
    for r in range(image.shape[0]):
        row, o = image[r], out[r]
        for c in range(image.shape[1]):
            v = np.float64(row[c]) - mean if mask is None or mask[r, c] else 0.0
            o[c] = v
            ss += v * v
    return ss


def image_quality(image: np.ndarray, mask: np.ndarray | None = None, *,
                  weights: QualityWeights | None = None) -> float:
    """Image quality of a Kikuchi pattern (Krieger Lassen), as kikuchipy's ``get_image_quality``.

    Parameters
    ----------
    image : (rows, cols), any real dtype.
    mask : bool, True = valid; invalid pixels count at the mean of the valid ones.
    weights : :func:`quality_weights` of the pattern shape, to skip the lookup.

    Returns
    -------
    IQ = 1 - (Σ|F| w / Σ|F|) / (Σw / N) with F the 2-D DFT of the zero-mean pattern (its
    amplitude, not its power), w the weights of :class:`QualityWeights` and N the number of
    pixels.  Sharp bands give a spectrum concentrated at low frequencies: IQ near 1 (noise: near 0).
    NaN for a flat pattern.

    Notes
    -----
    N. C. Krieger Lassen, "Automated determination of crystal orientations from electron
    backscattering patterns", PhD thesis, DTU (1994).  The pattern's normalisation to unit
    standard deviation cancels in the ratio; the real FFT halves the work (each conjugate
    pair counted twice, :class:`QualityWeights`).
    """
    image = check_image(image)
    mask = check_mask(mask, image.shape)
    weights = weights if weights is not None else quality_weights(image.shape)
    if weights.dft is not None:
        return float(_quality_dft(image, mask, *weights.dft, weights.weight, weights.count, weights.inertia_max))
    centred = np.empty(image.shape, dtype=np.float32)  # kikuchipy's precision; the sums are float64
    _centred(image, mask, centred)
    spectrum = scipy.fft.rfft2(centred, workers=1)
    inertia = _inertia(spectrum, weights.weight, weights.count)
    return float(1.0 - inertia / weights.inertia_max)


def unit_pattern(image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """The pattern minus its mean, divided by its norm (float32; 0 at invalid pixels, all 0 for a flat pattern).

    Dot products of such patterns are kikuchipy's neighbour dot products (``zero_mean`` and
    ``normalize``): 1 for identical patterns up to an offset and a scale.
    """
    image = check_image(image)
    mask = check_mask(mask, image.shape)
    out = np.empty(image.shape)
    ss = _centred(image, mask, out)
    if ss > 0:
        out /= np.sqrt(ss)
    return out.astype(np.float32)
