"""scikit-ued's own alignment and centre-finding test cases, run against livediff.

The cases of ``skued/image/tests/test_alignment.py`` (``align``, ``ialign``,
``itrack_peak``) and ``skued/image/tests/test_center.py`` (``autocenter``), in our words
and code: the same images, shifts, centres, masks and noise, checked with livediff's
:func:`~livediff.operators.align.register`, :func:`~livediff.operators.align.shift_image`,
the ``align`` operator and :func:`~livediff.operators.azimuthal.powder_center` (the
counterpart of ``skued.autocenter``).  scikit-ued is not needed to run them.

Where scikit-ued allows 1 px, we ask for 0.05 px (its ``autocenter`` returns whole
pixels; ours is sub-pixel).  Its alignment checks compare slices that are empty when a
random shift is 0 (``reference[sx:, 0:-sy]`` with ``sy = 0``); ours compare the region
the shift leaves covered.  Its single-crystal pattern comes from a kinematic simulation
of BaTiO3 (``crystals``, ``skued.kinematicsim``); ours is a square lattice of Gaussian
spots with the same spacing, width, Friedel-symmetric intensities, central hole,
clipping and mask.  Its ``auto_masking`` case tests a masking helper, not alignment or
centring, and is not ported.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage import data

from livediff.executors.offline import process_frames
from livediff.model import Frame, SeriesStart
from livediff.operators.align import Align, AlignParams, register, shift_image
from livediff.operators.azimuthal import powder_center
from livediff.pipeline import OperatorSpec

CENTER_TOLERANCE_PX = 0.05


def camera() -> np.ndarray:
    """scikit-image's camera, decimated by 2 (256 x 256 uint8), as scikit-ued's tests use it."""
    return data.camera()[::2, ::2]


def gaussian_blob(shape: tuple[int, int], center: tuple[float, float], fwhm: float) -> np.ndarray:
    """A unit-integral 2-D Gaussian (scikit-ued's ``gaussian``), centre in pixel-centre coordinates."""
    sigma = fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    rows, cols = np.indices(shape, dtype=np.float64)
    r2 = (rows - center[0]) ** 2 + (cols - center[1]) ** 2
    return np.exp(-r2 / (2.0 * sigma ** 2)) / (2.0 * np.pi * sigma ** 2)


def single_crystal(center: tuple[int, int], size: int = 256) -> np.ndarray:
    """A single-crystal pattern centred on ``center``, normalised to a maximum of 1.

    Spots on a square lattice of 20 px (BaTiO3's 4 Å cell over scikit-ued's 10 / 128 Å^-1
    per px), Gaussian of sigma 2 px (its ``gaussian_filter(sigma=2)``), Friedel-symmetric
    intensities falling with the order, none within 12.8 px of the centre (its
    ``kk < 1`` hole), clipped at 0.8 of the brightest (saturation).
    """
    image = np.zeros((size, size))
    reach = int(np.ceil(size / 20)) + 1
    for h in range(-reach, reach + 1):
        for k in range(-reach, reach + 1):
            row, col = center[0] + 20.0 * h, center[1] + 20.0 * k
            if np.hypot(20.0 * h, 20.0 * k) < 12.8 or not (-8 < row < size + 8 and -8 < col < size + 8):
                continue
            height = np.exp(-(h * h + k * k) / 30.0) * (1.0 if (h + k) % 2 == 0 else 0.35) \
                * (1.0 + 0.5 * np.cos(1.3 * h * h + 0.7 * k * k))  # the same for (h, k) and (-h, -k)
            r0, r1 = max(0, int(row) - 8), min(size, int(row) + 9)
            c0, c1 = max(0, int(col) - 8), min(size, int(col) + 9)
            rr, cc = np.ogrid[r0:r1, c0:c1]
            image[r0:r1, c0:c1] += height * np.exp(-((rr - row) ** 2 + (cc - col) ** 2) / 8.0)
    image = np.minimum(image, 0.8 * image.max())
    return image / image.max()


def ellipse_mask(shape: tuple[int, int], center: tuple[int, int], radii: tuple[int, int]) -> np.ndarray:
    """True inside the ellipse (skimage.draw.ellipse's pixels), the valid region."""
    rows, cols = np.indices(shape)
    return ((rows - center[0]) / radii[0]) ** 2 + ((cols - center[1]) / radii[1]) ** 2 < 1


def covered(shift: tuple[int, int], shape: tuple[int, int]) -> tuple[slice, slice]:
    """The region of an image moved by an integer ``shift`` that the move leaves covered."""
    return tuple(slice(max(s, 0), n + min(s, 0)) for s, n in zip(shift, shape))


def align_series(frames: list[np.ndarray], **params) -> list[Frame]:
    shape = frames[0].shape
    start = SeriesStart(1, shape, str(frames[0].dtype), n_frames=len(frames))
    out, _ = process_frames([OperatorSpec("align", Align, AlignParams(**params))], start,
                            [Frame(1, i, f) for i, f in enumerate(frames)])
    return out


# ---------------------------------------------------------------- test_alignment.py
def test_identical_images_align_with_zero_shift():
    """ialign_trivial: five identical frames keep their shape and need no shift."""
    out = align_series([camera() for _ in range(5)])
    assert len(out) == 5
    for frame in out:
        assert frame.data.shape == camera().shape
        shift = (frame.results["align"]["shift_y"], frame.results["align"]["shift_x"])
        np.testing.assert_allclose(shift, (0.0, 0.0), atol=1e-6)  # float32 round-off
        np.testing.assert_array_equal(frame.data, camera())


@pytest.mark.parametrize("move", [(-4, 0), (-1, 3), (0, 4), (-3, 1), (-2, 2)])
def test_whole_pixel_moves_within_an_elliptic_mask_are_undone_exactly(move):
    """ialign_misaligned_canned_images: integer moves by ndimage.shift, registered inside an ellipse."""
    reference = camera()
    mask = ellipse_mask(reference.shape, (129, 127), (63, 50))
    image = ndimage.shift(reference, move)  # zeros where the move uncovers
    shift = register(image, reference, mask)[:2]
    np.testing.assert_allclose(shift, np.negative(move), atol=0.005)
    aligned = shift_image(image, shift)
    inside = covered((-move[0], -move[1]), reference.shape)
    np.testing.assert_array_equal(aligned[inside], reference[inside])


def test_register_and_shift_leave_read_only_inputs_and_their_dtype_alone():
    """align_no_side_effects."""
    image = np.array(camera()[0:64, 0:64])
    image.setflags(write=False)
    shift = register(image, image)[:2]
    shift_image(image, shift, fill_value=np.nan)
    np.testing.assert_allclose(shift, (0.0, 0.0), atol=1e-6)
    assert image.dtype == np.uint8


@pytest.mark.parametrize("masked", [False, True])
def test_move_of_minus_7_and_12_px_is_measured_exactly_and_undone(masked):
    """align_no_mask and align_with_mask: ndimage.shift by (-7, 12), its uncovered band zero, not masked."""
    reference = camera()
    image = ndimage.shift(reference, (-7, 12))
    mask = None
    if masked:
        mask = np.ones(reference.shape, bool)
        mask[75:100, 50:100] = False
    shift_y, shift_x, quality = register(image, reference, mask)
    assert abs(shift_y - 7) <= 0.005 and abs(shift_x + 12) <= 0.005  # scikit-ued's register was off by 0.04-0.07
    assert quality > 0.9999
    aligned = shift_image(image, (shift_y, shift_x))
    np.testing.assert_array_equal(aligned[7:, :-12], reference[7:, :-12])


def test_a_single_peak_in_identical_frames_does_not_move():
    """itrack_peak_trivial: 17 x 17 zeros with one peak of 10, twenty times."""
    prototype = np.zeros((17, 17), np.float32)
    prototype[9, 9] = 10
    for frame in align_series([prototype.copy() for _ in range(20)]):
        shift = (frame.results["align"]["shift_y"], frame.results["align"]["shift_x"])
        np.testing.assert_allclose(shift, (0.0, 0.0), atol=1e-6)


def test_one_result_per_frame():
    """itrack_peak_length: 20 random 4 x 4 frames, 20 results."""
    rng = np.random.default_rng(23)
    out = align_series([rng.random((4, 4), dtype=np.float32) for _ in range(20)])
    assert len(out) == 20 and all("align" in frame.results for frame in out)


# ---------------------------------------------------------------- test_center.py
def test_centre_of_a_centred_gaussian():
    """autocenter_trivial: a Gaussian of FWHM 64 px at (128, 128) of a 256 x 256 frame."""
    center = np.array([128.0, 128.0])
    image = gaussian_blob((256, 256), center, fwhm=64)
    np.testing.assert_allclose(powder_center(image), center, atol=CENTER_TOLERANCE_PX)


def test_centre_finding_leaves_read_only_inputs_alone():
    """autocenter_no_side_effects: random image and mask, both read-only."""
    image = np.random.default_rng(23).random((256, 256))
    mask = np.ones_like(image, dtype=bool)
    image.setflags(write=False)
    mask.setflags(write=False)
    powder_center(image, mask)


@pytest.mark.parametrize("dr", range(-10, 10, 2))
@pytest.mark.parametrize("dc", range(-10, 10, 2))
def test_centre_of_a_moved_gaussian(dr, dc):
    """autocenter_gaussian_shifted: FWHM 20 px, 128 x 128 frame, centre moved by up to 10 px."""
    center = np.array([64.0 + dr, 64.0 + dc])
    image = gaussian_blob((128, 128), center, fwhm=20)
    np.testing.assert_allclose(powder_center(image), center, atol=CENTER_TOLERANCE_PX)


@pytest.mark.parametrize("dr", range(-10, 10, 5))
@pytest.mark.parametrize("dc", range(-10, 10, 5))
def test_centre_of_a_moved_gaussian_behind_a_beam_stop(dr, dc):
    """autocenter_shifted_with_mask: FWHM 50 px; a beam-stop arm from the top edge past the centre,
    masked, its pixels dimmed to 0.8."""
    center = np.array([128.0 + dr, 128.0 + dc])
    image = gaussian_blob((256, 256), center, fwhm=50)
    mask = np.ones(image.shape, dtype=bool)
    mask[0:130, 118:138] = False
    image[~mask] *= 0.8
    np.testing.assert_allclose(powder_center(image, mask), center, atol=CENTER_TOLERANCE_PX)


CENTERS = list(range(256 // 3, 2 * 256 // 3, 256 // 10))  # 85, 110, 135, 160


@pytest.mark.parametrize("row", CENTERS)
@pytest.mark.parametrize("col", CENTERS)
@pytest.mark.parametrize("walk_off", [False, True])
def test_centre_of_a_single_crystal_pattern(row, col, walk_off):
    """autocenter_single_crystal and ..._ewald_walkoff: saturated spots, a beam-stop arm from the top
    to 10 px past the centre, 1 % uniform noise; with walk-off, a gradient of 0.2 from top to
    bottom makes Friedel mates unequal."""
    rng = np.random.default_rng(row * 1000 + col)
    image = 10.0 * single_crystal((row, col))
    if walk_off:
        rows = np.indices(image.shape)[0].astype(float)
        image += 0.2 * rows / rows.max()
    mask = np.ones(image.shape, dtype=bool)
    mask[0: row + 10, col - 10: col + 10] = False
    image += 0.01 * image.max() * rng.random(image.shape)
    np.testing.assert_allclose(powder_center(image, mask), (row, col), atol=CENTER_TOLERANCE_PX)
