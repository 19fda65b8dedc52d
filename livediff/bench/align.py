"""Alignment: our masked NCC registration against scikit-ued's ``align`` and scikit-image's.

Frames are 1024 x 1024 and 2048 x 2048 simulated diffraction patterns (``--quick``:
512 x 512): a fixed set of Bragg spots on a smooth background, drifted by a known
sub-pixel shift, with module gaps (at the top value of the dtype), dead pixels and a
beam-stop shadow, all masked.  Both peers are given the same mask (True = valid, as
scikit-ued >= 2.0 and scikit-image expect).

- ``register + shift`` against ``skued.align(image, reference, mask=mask)``, which
  registers with scikit-image's masked ``phase_cross_correlation`` (integer precision)
  and shifts with ``scipy.ndimage.shift(order=2)``.  Ours calls a
  :class:`~livediff.operators.align.Registration` built once per reference (as the
  operator does), then :func:`~livediff.operators.align.shift_image`.
- ``register`` alone against ``phase_cross_correlation(reference, image,
  reference_mask=mask)``.
- the same with a search radius (``max_shift=32`` px), which limits our coarse search;
  the peers have no such option.
- ``register + shift`` with the one-shot :func:`~livediff.operators.align.register`
  called each time with the reference and mask, as a notebook loop would: it reuses
  the registration it built for the same reference and mask.

Each check compares every shift with the simulator's ground truth: ours within 0.02 px,
the peers (whole pixels) within 1 px.  All run on one thread (scipy.fft's default).
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from simulators import DiffractionSimulator

from ..operators.align import Registration, register, shift_image
from . import core

_FULL = ((1024, 1024), (2048, 2048))
_QUICK = ((512, 512),)
_DRIFT_FRAME = 5  # the frame registered against frame 0


@functools.lru_cache(maxsize=1)
def _frames(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(reference, image, mask, true shift) for one frame size; read-only, one size cached at a time."""
    n_spots = int(40 * shape[0] * shape[1] / (256 * 320))
    sim = DiffractionSimulator(shape=shape, pattern="fixed", drift=2.5, n_frames=_DRIFT_FRAME + 1, seed=3,
                               n_spots=n_spots, n_hot=0, background=20.0)
    mask = sim.detector_mask & ~sim.beamstop_mask
    reference, image = sim.frame(0), sim.frame(_DRIFT_FRAME)
    truth = -np.array(sim.drift_at(_DRIFT_FRAME))
    for a in (reference, image, mask, truth):
        a.setflags(write=False)
    return reference, image, mask, truth


def _check(shape: tuple[int, int], ours: Callable[[], np.ndarray],
           peer: Callable[[], np.ndarray]) -> Callable[[], None]:
    def check() -> None:
        truth = _frames(shape)[3]
        np.testing.assert_allclose(ours(), truth, atol=0.02, err_msg="ours vs simulated drift")
        np.testing.assert_allclose(peer(), truth, atol=1.0, err_msg="peer vs simulated drift")
    return check


def _case_set(shape: tuple[int, int], skued, phase_cross_correlation) -> list[core.Case]:
    frames = functools.partial(_frames, shape)
    registrations: dict[float | None, Registration] = {}

    def registration(max_shift: float | None) -> Registration:
        if max_shift not in registrations:
            reference, _, mask, _ = frames()
            registrations[max_shift] = Registration(reference, mask, max_shift=max_shift)
        return registrations[max_shift]

    def ours_register(max_shift: float | None = None) -> np.ndarray:
        return np.array(registration(max_shift)(frames()[1])[:2])

    def ours_align(max_shift: float | None = None) -> np.ndarray:
        _, image, mask, _ = frames()
        shift = registration(max_shift)(image)[:2]
        shift_image(image, shift, mask)
        return np.array(shift)

    def ours_one_shot() -> np.ndarray:
        reference, image, mask, _ = frames()
        shift = register(image, reference, mask)[:2]
        shift_image(image, shift, mask)
        return np.array(shift)

    def skued_align() -> np.ndarray:
        reference, image, mask, _ = frames()
        return skued.align(image, reference, mask=mask)

    def skued_shift() -> np.ndarray:
        """The shift skued.align applies: the residual of its output against ours, plus ours."""
        _, image, mask, _ = frames()
        shift = ours_register()
        ours_out, ours_mask = shift_image(image, shift, mask)
        residual = register(skued_align(), ours_out, ours_mask, max_shift=8)[:2]
        return shift + np.array(residual)

    def skimage_register() -> np.ndarray:
        reference, image, mask, _ = frames()
        return phase_cross_correlation(reference, image, reference_mask=mask)[0]

    specs = [
        ("align: register + shift", ours_align, "skued.align (masked)", skued_align, skued_shift, skued),
        ("align: register", ours_register, "skimage masked phase_cross_correlation", skimage_register,
         skimage_register, phase_cross_correlation),
        ("align: register + shift, max_shift=32", functools.partial(ours_align, 32.0), "skued.align (masked)",
         skued_align, skued_shift, skued),
        ("align: one-shot register + shift", ours_one_shot, "skued.align (masked)", skued_align, skued_shift,
         skued),
    ]
    out = []
    for operator, ours, peer, peer_fn, peer_shift, available in specs:
        if available is None:
            module = "skued" if peer.startswith("skued") else "skimage"
            out.append(core.Case(operator, shape, "uint16", ours, peer, skipped=core.skipped_peer(module)))
        else:
            out.append(core.Case(operator, shape, "uint16", ours, peer, peer_fn=peer_fn,
                                 check=_check(shape, ours, peer_shift)))
    return out


def cases(quick: bool) -> list[core.Case]:
    """Ours against scikit-ued's and scikit-image's masked registration, per frame size."""
    try:
        import skued
    except ImportError:
        skued = None
    try:
        from skimage.registration import phase_cross_correlation
    except ImportError:
        phase_cross_correlation = None
    return [case for shape in (_QUICK if quick else _FULL)
            for case in _case_set(shape, skued, phase_cross_correlation)]
