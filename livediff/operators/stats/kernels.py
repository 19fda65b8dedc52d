"""Kernels of the running statistics: Chan/Welford folding, derivation and weight checks.

A state is six per-pixel arrays (:data:`ARRAYS`): the sample count, a shift (the pixel's
first value), the weighted mean relative to that shift, M2 = sum w (x - mean)^2, and the
sums of weights V1 = sum w and V2 = sum w^2 (None for uniform weights, where
V1 = V2 = count).  :func:`fold` folds a frame or another partial state into a state with
one pairwise update, so merging and updating are the same formula; :func:`derive` turns a
state into mean, variance, std and SEM.
"""
from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np

from ..checks import check_image, check_shape

#: the per-pixel arrays of a state, in the order of :func:`fold`'s arguments
ARRAYS = ("count", "shift", "mean", "m2", "w", "w2")


@numba.njit(nogil=True, cache=True, error_model="numpy")
def chan(wa: float, ma: float, m2a: float, wb: float, mb: float, m2b: float) -> tuple[float, float, float]:
    """Combine two weighted partial states (V1, mean, M2) of one pixel.

    Parameters
    ----------
    wa, ma, m2a : sum of weights, weighted mean and M2 of the first state.
    wb, mb, m2b : the same for the second state (``wa + wb`` must be > 0).

    Returns
    -------
    (V1, mean, M2) of the union of both samples.

    Notes
    -----
    With w = wa + wb and d = mb - ma: mean = ma + d wb / w, M2 = m2a + m2b + d^2 wa wb / w
    (Chan, Golub & LeVeque, Am. Stat. 37, 242 (1983); weighted as in West, CACM 22, 532 (1979)).
    """
    w = wa + wb
    d = mb - ma
    r = wb / w
    return w, ma + d * r, m2a + m2b + d * d * wa * r


@numba.njit(nogil=True, cache=True, error_model="numpy")
def fold(count: np.ndarray, shift: np.ndarray, mean: np.ndarray, m2: np.ndarray, w: np.ndarray | None,
         w2: np.ndarray | None, decay: float, o_count: np.ndarray, o_shift: np.ndarray, o_mean: np.ndarray,
         o_m2: np.ndarray, o_w: np.ndarray | None, o_w2: np.ndarray | None, o_scale: float) -> None:
    """Fold partial state ``o_*`` into state (count, shift, mean, m2, w, w2), in place.

    Parameters
    ----------
    count, shift, mean, m2, w, w2 : the state (:data:`ARRAYS`), written in place; ``w``/``w2``
        None = uniform weights (V1 = V2 = count).
    decay : factor on the state's weights and M2 (its square on V2).
    o_count, o_shift, o_mean, o_m2, o_w, o_w2 : the other partial state (never written);
        a frame is the state (count = mask, shift = x, mean = 0, M2 = 0, weights).
    o_scale : factor on the other's weights and M2 (a uniform other has V1 = s count,
        V2 = s^2 count).

    Notes
    -----
    Each pixel where the other has a count and a weight > 0 gets :func:`chan`'s update, the
    other's mean moved to this state's shift; any other pixel is left as it was (but decayed).
    """
    rows, cols = count.shape
    for r in range(rows):
        for c in range(cols):
            n = count[r, c]
            m2a = float(m2[r, c])
            if w is None:
                wa = float(n)
                w2a = wa
            else:
                wa = w[r, c] * decay
                w2a = w2[r, c] * decay * decay
                m2a *= decay
            on = np.int64(o_count[r, c])
            if o_w is None:
                wb = on * o_scale
                w2b = wb * o_scale
                m2b = o_m2[r, c] * o_scale
            else:
                wb = o_w[r, c] * o_scale
                w2b = o_w2[r, c] * o_scale * o_scale
                m2b = o_m2[r, c] * o_scale
            if on > 0 and wb > 0.0:
                if n == 0:
                    shift[r, c] = o_shift[r, c]
                mb = o_mean[r, c] + (float(o_shift[r, c]) - float(shift[r, c]))
                wa, mu, m2a = chan(wa, float(mean[r, c]), m2a, wb, mb, m2b)
                mean[r, c] = mu
                w2a += w2b
                count[r, c] = n + on
            m2[r, c] = m2a
            if w is not None:
                w[r, c] = wa
                w2[r, c] = w2a


@numba.njit(nogil=True, cache=True, error_model="numpy")
def fold_frame(count: np.ndarray, shift: np.ndarray, mean: np.ndarray, m2: np.ndarray, frame: np.ndarray,
               valid: np.ndarray) -> None:
    """:func:`fold` of one frame of uniform weight 1 into a float64 state of uniform weights, bit for bit.

    Parameters
    ----------
    count, shift, mean, m2 : the state (C-contiguous; ``shift``, ``mean``, ``m2`` float64), in place.
    frame : the frame's values (C-contiguous, any real dtype).
    valid : bool, True = the pixel contributes (C-contiguous).

    Notes
    -----
    The same operations in the same order as :func:`chan` on a one-sample state (the terms
    that are 0 there dropped: adding 0.0 changes no result), written without branches over
    flat arrays so that the loop vectorises: about 1.5 times :func:`fold`'s speed.
    """
    n_, s_, mu_, q_ = count.ravel(), shift.ravel(), mean.ravel(), m2.ravel()
    x_, v_ = frame.ravel(), valid.ravel()
    for i in range(n_.size):
        v = v_[i]
        n = n_[i]
        x = np.float64(x_[i])
        s = x if n == 0 else s_[i]
        wa = np.float64(n)
        ma = mu_[i]
        d = (x - s) - ma
        r = 1.0 / (wa + 1.0)
        mu = ma + d * r
        q = q_[i] + d * d * wa * r
        s_[i] = s if v else s_[i]
        mu_[i] = mu if v else ma
        q_[i] = q if v else q_[i]
        n_[i] = n + v


@numba.njit(nogil=True, cache=True, error_model="numpy")
def derive(count: np.ndarray, shift: np.ndarray, mean: np.ndarray, m2: np.ndarray, w: np.ndarray | None,
           w2: np.ndarray | None, ddof: float, out_mean: np.ndarray | None, out_var: np.ndarray | None,
           out_std: np.ndarray | None, out_sem: np.ndarray | None) -> None:
    """Mean, variance, std and SEM of a state, into the ``out_*`` that are not None.

    Parameters
    ----------
    count, shift, mean, m2, w, w2 : the state (:data:`ARRAYS`; never written).
    ddof : delta degrees of freedom.
    out_mean, out_var, out_std, out_sem : (rows, cols) outputs, or None to skip one.

    Notes
    -----
    mean = shift + mean, var = M2 / (V1 - ddof V2 / V1), std = sqrt(var),
    SEM = sqrt(var V2 / V1^2); NaN where V1 = 0, V1 - ddof V2 / V1 <= 0 or count <= ddof.
    """
    rows, cols = count.shape
    for r in range(rows):
        for c in range(cols):
            if w is None:
                v1 = float(count[r, c])
                v2 = v1
            else:
                v1 = float(w[r, c])
                v2 = float(w2[r, c])
            mu = float(shift[r, c]) + mean[r, c] if v1 > 0.0 else np.nan
            q = v1 * v1 - ddof * v2  # V1 (V1 - ddof V2 / V1): one division each for var and SEM
            var = np.nan
            sem = np.nan
            # one sample has V1^2 = V2 exactly, but the V2 of merged states may round a hair
            # apart: the count decides, so that merging never turns an undefined variance into 0
            if v1 > 0.0 and q > 0.0 and count[r, c] > ddof:
                var = m2[r, c] * v1 / q
                sem = math.sqrt(m2[r, c] * v2 / (v1 * q))
            if out_mean is not None:
                out_mean[r, c] = mu
            if out_var is not None:
                out_var[r, c] = var
            if out_std is not None:
                out_std[r, c] = math.sqrt(var)
            if out_sem is not None:
                out_sem[r, c] = sem


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "nsz"})
def valid_sum(image: np.ndarray, mask: np.ndarray | None) -> float:
    """Sum of the valid pixels in float64.

    Parameters
    ----------
    image : (rows, cols) real array (never written).
    mask : bool array of the same shape, True = valid; None = all valid.

    Returns
    -------
    The sum, reassociated to vectorise (exact for integer frames).
    """
    total = 0.0
    rows, cols = image.shape
    for r in range(rows):
        for c in range(cols):
            if mask is None or mask[r, c]:
                total += float(image[r, c])
    return total


def check_weights(weights: Any, shape: tuple[int, ...] | None, what: str) -> np.ndarray:
    """A per-pixel weight array as float64, checked.

    Parameters
    ----------
    weights : array-like of weights.
    shape : the expected (rows, cols); None = any.
    what : the name used in error messages.

    Returns
    -------
    A float64 copy of ``weights``.

    Raises
    ------
    ValueError
        When ``weights`` is not a 2-D array of ``shape`` with finite values >= 0.
    TypeError
        When ``weights`` is not real-valued.
    """
    a = check_image(weights, what)
    if shape is not None:
        check_shape(a, shape, what, of="frame")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a) & (a >= 0)):
        raise ValueError(f"{what} must be finite and >= 0, got min {np.nanmin(a)}, "
                         f"{int(np.count_nonzero(~np.isfinite(a)))} non-finite")
    return a
