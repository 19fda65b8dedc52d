"""Virtual detectors and centre of mass on 4D-STEM patterns: ours against numpy and LiberTEM.

256 x 256 uint16 patterns (a Medipix3 / Merlin camera), a stack of 256 of them (64 with
``--quick``), three masks: a bright-field disk, an annular dark field and the whole frame.
Ours is the operator's cached :class:`~livediff.operators.virtual.MaskSet` called per
frame; numpy is the masks as a float32 matrix times the flattened frames (one BLAS call
for the whole stack, the fastest numpy form, conversion included); LiberTEM runs ``ApplyMasksUDF`` and its
``CoMUDF`` on an in-memory dataset with the inline executor, as a notebook user would.
A last row times the memory-read floor: numpy summing the stack (every byte read once).
"""
from __future__ import annotations

import functools

import numpy as np

from ..operators.virtual import Detector, MaskSet, center_of_mass, detector_mask
from . import core

_SHAPE = (256, 256)
_CENTRE = (127.5, 127.5)


@functools.lru_cache(maxsize=2)
def _stack(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    y, x = np.ogrid[:_SHAPE[0], :_SHAPE[1]]
    r = np.hypot(y - _CENTRE[0], x - _CENTRE[1])
    expected = 5.0 + 2000.0 * (r < 20) + 50.0 * np.exp(-((r - 70) / 20) ** 2)
    stack = rng.poisson(expected, (n, *_SHAPE)).astype(np.uint16)
    stack.setflags(write=False)
    return stack


@functools.lru_cache(maxsize=1)
def _masks() -> np.ndarray:
    detectors = (Detector("disk", radius=20.0), Detector("annulus", inner=40.0, outer=120.0))
    return np.stack([*(detector_mask(d, _SHAPE, _CENTRE) for d in detectors), np.ones(_SHAPE, bool)])


@functools.lru_cache(maxsize=1)
def _mask_set() -> MaskSet:
    return MaskSet(_masks())  # built once per series by the operator


def _ours_masks(n: int) -> np.ndarray:
    masks = _mask_set()
    return np.stack([masks(f) for f in _stack(n)])


def _numpy_masks(n: int) -> np.ndarray:
    matrix = _masks().reshape(3, -1).astype(np.float32)
    return matrix @ _stack(n).reshape(n, -1).astype(np.float32).T  # one sgemm for the stack




def _ours_com(n: int) -> np.ndarray:
    return np.array([center_of_mass(f) for f in _stack(n)])


def _numpy_com(n: int) -> np.ndarray:
    stack = _stack(n).astype(np.float64)
    rows, cols = np.indices(_SHAPE)
    total = stack.sum(axis=(1, 2))
    return np.stack([(stack * rows).sum(axis=(1, 2)) / total, (stack * cols).sum(axis=(1, 2)) / total], axis=1)


def _libertem(n: int, which: str):
    from libertem.api import Context
    from libertem.udf.com import CoMUDF
    from libertem.udf.masks import ApplyMasksUDF

    ctx = Context.make_with("inline")
    dataset = ctx.load("memory", data=_stack(n).reshape(n // 16, 16, *_SHAPE), sig_dims=2)
    masks = _masks()
    udf = (ApplyMasksUDF(mask_factories=[functools.partial(lambda m: m, m) for m in masks]) if which == "masks"
           else CoMUDF.with_params())

    def run() -> np.ndarray:
        result = ctx.run_udf(dataset=dataset, udf=udf)
        if which == "masks":
            return np.asarray(result["intensity"].data).reshape(n, 3)
        field = np.asarray(result["raw_com"].data).reshape(n, 2)
        return field
    return run


def cases(quick: bool) -> list[core.Case]:
    n = 64 if quick else 256
    out = []
    for which, ours, numpy_peer, check_rtol in (("masks", _ours_masks, _numpy_masks, 1e-6),
                                                 ("com", _ours_com, _numpy_com, 1e-9)):
        label = "apply_masks (3 masks)" if which == "masks" else "center_of_mass"
        mine = functools.partial(ours, n)
        peer = functools.partial(numpy_peer, n)
        out.append(core.Case(label, _SHAPE, "uint16", mine, "numpy (matrix product)" if which == "masks"
                             else "numpy (float64)", peer, _check(mine, peer, check_rtol), frames=n))
        try:
            lt = _libertem(n, which)
        except ImportError:
            out.append(core.Case(label, _SHAPE, "uint16", mine, "LiberTEM", skipped=core.skipped_peer("libertem"),
                                 frames=n))
        else:
            out.append(core.Case(label, _SHAPE, "uint16", mine, "LiberTEM " + ("ApplyMasksUDF" if which == "masks"
                                                                           else "CoMUDF"),
                                 lt, _check(mine, lt, 1e-4 if which == "masks" else 1e-6), frames=n))
    out.append(core.Case("memory-read floor (sum of the stack)", _SHAPE, "uint16",
                         functools.partial(lambda s: s.sum(dtype=np.uint64), _stack(n)), "-", frames=n))
    return out


def _check(ours, peer, rtol: float):
    def check() -> None:
        a, b = ours(), peer()
        np.testing.assert_allclose(a, b.T if b.shape != a.shape else b, rtol=rtol)
    return check
