"""The flat-field family against plain numpy / scipy, on the same frames, one thread.

- corrected frame (dark, flat, mask, saturation) on an EIGER2 4M-sized frame, uint16 and
  uint32, against the equivalent numpy expression (the issue's target: >= 2x); with an
  integer dark (of the frame's dtype) against numpy's plain float64 expression (target
  >= 2x) and its in-place float32 form (target >= 1x);
- dynamic background against normalised convolution with ``scipy.ndimage.gaussian_filter``,
  on a 4M frame with a narrow Gaussian and an EBSD-sized pattern with kikuchipy's width / 8;
- k x k binning with a mask against numpy's reshape-sum.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
from scipy import ndimage

from ..operators.corrections import bin_frame, correct, dynamic_background
from .core import Case

EIGER2_4M = (2162, 2068)
EBSD = (480, 640)


def _frames(shape: tuple[int, int], dtype: str, seed: int) -> dict[str, np.ndarray]:
    """A raw frame with gap markers, a dark, a flat and a detector mask (gaps, dead pixels)."""
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    image = (rng.poisson(20.0, shape) + (5000 if dtype == "uint32" else 0)).astype(dtype)
    mask = rng.random(shape) > 0.002
    mask[shape[0] // 2 - 18: shape[0] // 2 + 19] = False
    mask[:, shape[1] // 2 - 5: shape[1] // 2 + 5] = False
    image[~mask] = top
    image[rng.random(shape) < 1e-4] = top
    dark = (rng.normal(3.0, 0.5, shape) + (5000 if dtype == "uint32" else 0)).astype(np.float32)
    flat = rng.uniform(0.8, 1.2, shape).astype(np.float32)
    return {"image": image, "dark": dark, "flat": flat, "mask": mask, "top": top}


def _numpy_correct(f: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """numpy promotes uint16 - float32 to float32, uint32 - float32 to float64: no count is lost."""
    out = ((f["image"] - f["dark"]) / f["flat"]).astype(np.float32, copy=False)
    valid = f["mask"] & (f["image"] < f["top"])
    out[~valid] = 0.0
    return out, valid


def _numpy_plain(f: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """An integer dark: the frame converted to float64 first (``image - dark`` would wrap)."""
    out = ((f["image"].astype(np.float64) - f["dark"]) / f["flat"]).astype(np.float32)
    valid = f["mask"] & (f["image"] < f["top"])
    out[~valid] = 0.0
    return out, valid


def _numpy_in_place(f: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """An integer dark: one float32 copy of the frame, corrected in place."""
    out = f["image"].astype(np.float32)
    np.subtract(out, f["dark"], out=out)
    np.divide(out, f["flat"], out=out)
    valid = f["mask"] & (f["image"] < f["top"])
    out[~valid] = 0.0
    return out, valid


def _ours_correct(f: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    valid = np.empty(f["image"].shape, dtype=np.bool_)
    return correct(f["image"], dark=f["dark"], flat=f["flat"], mask=f["mask"], mask_out=valid), valid


def _scipy_background(image: np.ndarray, mask: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    num = ndimage.gaussian_filter(np.where(mask, image, 0.0), sigma, mode="reflect", truncate=4.0)
    den = ndimage.gaussian_filter(mask.astype(np.float64), sigma, mode="reflect", truncate=4.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        background = num / den
        valid = mask & (den >= 0.01) & (background > 0)
        return np.where(valid, image / background, 0.0).astype(np.float32), valid


def _ours_background(image: np.ndarray, mask: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    valid = np.empty(image.shape, dtype=np.bool_)
    return dynamic_background(image, sigma, mask, mask_out=valid), valid


def _numpy_bin(image: np.ndarray, mask: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = image.shape[0] // k, image.shape[1] // k
    blocks = (rows, k, cols, k)
    total = np.where(mask, image, 0)[: rows * k, : cols * k].reshape(blocks).sum(axis=(1, 3), dtype=np.float64)
    valid = mask[: rows * k, : cols * k].reshape(blocks).all(axis=(1, 3))
    return np.where(valid, total, 0.0).astype(np.float32), valid


def _agree(ours: Callable[[], tuple], peer: Callable[[], tuple], rtol: float) -> Callable[[], None]:
    def check() -> None:
        (a, va), (b, vb) = ours(), peer()
        np.testing.assert_array_equal(va, vb, err_msg="masks differ")
        np.testing.assert_allclose(a[va], b[vb], rtol=rtol, atol=rtol, err_msg="values differ")
    return check


def cases(quick: bool) -> list[Case]:
    """Corrected frame (uint16, uint32), dynamic background (two sizes), binning (k = 2, 4)."""
    big = (512, 512) if quick else EIGER2_4M
    out: list[Case] = []
    for dtype in ("uint16", "uint32"):
        f = _frames(big, dtype, seed=4)
        ours, peer = partial(_ours_correct, f), partial(_numpy_correct, f)
        out.append(Case("flatfield correct (dark, flat, mask)", big, dtype, ours, "numpy (x - dark) / flat",
                        peer, _agree(ours, peer, 1e-6)))
        whole = {**f, "dark": np.rint(f["dark"]).astype(dtype)}
        ours = partial(_ours_correct, whole)
        for name, numpy_form in (("numpy float64 (x - dark) / flat", _numpy_plain),
                                 ("numpy float32 in place", _numpy_in_place)):
            peer = partial(numpy_form, whole)
            out.append(Case(f"flatfield correct, {dtype} dark", big, dtype, ours, name, peer, _agree(ours, peer, 1e-6)))
    for shape, sigma in ((big, 4.0), ((240, 320) if quick else EBSD, (240 if quick else 640) / 8)):
        f = _frames(shape, "uint16", seed=5)
        image, mask = np.minimum(f["image"], 1000), f["mask"]
        ours, peer = partial(_ours_background, image, mask, sigma), partial(_scipy_background, image, mask, sigma)
        out.append(Case(f"dynamic background sigma={sigma:g}", shape, "uint16", ours,
                        "scipy.ndimage.gaussian_filter x2", peer, _agree(ours, peer, 1e-5)))
    f = _frames(big, "uint16", seed=6)
    for k in (2, 4):
        ours, peer = partial(bin_frame, f["image"], k, f["mask"]), partial(_numpy_bin, f["image"], f["mask"], k)
        out.append(Case(f"bin {k}x{k} sum (masked)", big, "uint16", ours, "numpy reshape-sum", peer,
                        _agree(ours, peer, 1e-6)))
    return out
