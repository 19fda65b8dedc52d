"""Argument checks shared by the kernels, with error messages that name the value got and the one expected.

Every kernel checks its inputs with these, so that the same mistake gives the same
message everywhere (``mask shape (512, 512) != image shape (514, 1030)``): a wrong shape
or option is a ValueError, a wrong dtype a TypeError.  Masks are bool, True = valid
(DESIGN.md); :func:`all_valid` stands in for a missing one.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["all_valid", "check_choice", "check_frame_shape", "check_image", "check_mask", "check_ndim",
           "check_output", "check_reference", "check_shape"]


def check_ndim(array: Any, name: str = "image", ndim: int = 2) -> np.ndarray:
    """``array`` as an ndarray, checked to have ``ndim`` dimensions (its dtype is not checked).

    Parameters
    ----------
    array : array-like.
    name : what the message calls it.
    ndim : the number of dimensions expected; 2 = (rows, cols).

    Returns
    -------
    ``np.asarray(array)`` (no copy for an ndarray).

    Raises
    ------
    ValueError
        ``image must be 2-D (rows, cols), got shape (5,)``.
    """
    array = np.asarray(array)
    if array.ndim != ndim:
        axes = " (rows, cols)" if ndim == 2 else ""
        raise ValueError(f"{name} must be {ndim}-D{axes}, got shape {array.shape}")
    return array


def check_image(image: Any, name: str = "image", *, ndim: int = 2) -> np.ndarray:
    """:func:`check_ndim`, and a check that ``image`` holds integers or floats.

    Returns
    -------
    ``np.asarray(image)`` (no copy for an ndarray).

    Raises
    ------
    ValueError
        Other than ``ndim`` dimensions (:func:`check_ndim`).
    TypeError
        Not real-valued: ``image must be real-valued: integers or floats, got dtype complex128``.
    """
    image = check_ndim(image, name, ndim)
    if image.dtype.kind not in "uif":
        raise TypeError(f"{name} must be real-valued: integers or floats, got dtype {image.dtype}")
    return image


def check_shape(array: np.ndarray, shape: Sequence[int], name: str, *, of: str = "image") -> None:
    """Check that ``array.shape == shape``.

    Parameters
    ----------
    array : the array checked.
    shape : the shape expected.
    name : what the message calls ``array``.
    of : what the message calls the owner of ``shape``.

    Raises
    ------
    ValueError
        ``dark shape (3, 3) != image shape (3, 4)`` (with ``name="dark"``).
    """
    if array.shape != tuple(shape):
        raise ValueError(f"{name} shape {array.shape} != {of} shape {tuple(shape)}")


def check_frame_shape(shape: Sequence[int], name: str = "shape") -> tuple[int, int]:
    """``shape`` (a sequence of two integers) as a (rows, cols) tuple of ints, both >= 1.

    Raises
    ------
    ValueError
        ``shape must be (rows, cols) with both >= 1, got (0, 4)``.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"{name} must be (rows, cols) with both >= 1, got {shape}")
    return shape


def check_mask(mask: Any, shape: Sequence[int], name: str = "mask") -> np.ndarray | None:
    """``mask`` checked to be None (all valid) or a bool array of ``shape``.

    Parameters
    ----------
    mask : bool array-like, True = valid pixel, or None.
    shape : the image's shape.
    name : what the message calls it.

    Returns
    -------
    None, or ``np.asarray(mask)`` (no copy for an ndarray).

    Raises
    ------
    TypeError
        The mask is not bool (a 0/1 integer mask has no agreed meaning: convert it with
        ``masking.mask_from_file`` or ``mask != 0``).
    ValueError
        Its shape is not ``shape``: ``mask shape (512, 512) != image shape (514, 1030)``.
    """
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise TypeError(f"{name} must be bool (True = valid pixel), got dtype {mask.dtype}; convert it to a "
                        f"bool array, e.g. mask_from_file(m, nonzero='invalid')")
    check_shape(mask, shape, name)
    return mask


def all_valid(shape: Sequence[int]) -> np.ndarray:
    """A read-only all-True mask of ``shape``, for kernels and operators given no mask.

    Parameters
    ----------
    shape : the frame's shape (any sequence of integers).

    Returns
    -------
    bool array, shared by every caller asking for that shape (the last few shapes are
    kept), hence read-only.
    """
    return _all_valid(tuple(int(n) for n in shape))


@functools.lru_cache(maxsize=4)
def _all_valid(shape: tuple[int, ...]) -> np.ndarray:
    mask = np.ones(shape, dtype=np.bool_)
    mask.setflags(write=False)
    return mask


def check_reference(array: np.ndarray | None, shape: Sequence[int], name: str) -> np.ndarray | None:
    """A reference frame (dark, flat, background) checked for shape, as float32 or float64.

    Parameters
    ----------
    array : the reference, or None.
    shape : the image's shape.
    name : what messages call it.

    Returns
    -------
    None for None; float32 and float64 arrays as they are; others converted to float64
    (exact for integers).

    Raises
    ------
    ValueError
        Its shape is not ``shape`` (:func:`check_shape`).
    TypeError
        It is not real-valued (:func:`check_image`).
    """
    if array is None:
        return None
    array = check_image(array, name, ndim=len(shape))
    check_shape(array, shape, name)
    return array if array.dtype in (np.float32, np.float64) else array.astype(np.float64)


def check_output(array: np.ndarray | None, shape: Sequence[int], dtype: type, name: str) -> np.ndarray:
    """An output array checked to be ``dtype`` and ``shape``, or a new one when None.

    Parameters
    ----------
    array : the caller's output array, or None.
    shape, dtype : what it must be.
    name : what messages call it.

    Returns
    -------
    ``array``, or a new uninitialised array of ``shape`` and ``dtype``.

    Raises
    ------
    TypeError
        Another dtype: ``out must be float32, got float64``.
    ValueError
        Another shape (:func:`check_shape`).
    """
    if array is None:
        return np.empty(tuple(shape), dtype=dtype)
    if array.dtype != dtype:
        raise TypeError(f"{name} must be {np.dtype(dtype)}, got {array.dtype}")
    check_shape(array, shape, name)
    return array


def check_choice(value: Any, allowed: Sequence[Any], name: str) -> None:
    """Check that ``value`` is one of ``allowed``.

    Parameters
    ----------
    value : the option given.
    allowed : the options accepted, in the order the message lists them.
    name : what the message calls the option.

    Raises
    ------
    ValueError
        ``mode must be 'divide' or 'subtract', got 'ratio'`` (two choices) or
        ``mode must be one of 'divide', 'subtract', 'relative', got 'ratio'``.
    """
    if value not in allowed:
        options = " or ".join(map(repr, allowed)) if len(allowed) == 2 else f"one of {', '.join(map(repr, allowed))}"
        raise ValueError(f"{name} must be {options}, got {value!r}")
