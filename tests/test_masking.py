"""Pixel masks: conventions at the edge, saturation levels, hot pixels against brute force and the simulator."""
from __future__ import annotations

import math

import numpy as np
import pytest

from livediff.executors.offline import process_frames
from livediff.model import Frame, SeriesStart
from livediff.operators import checks
from livediff.operators.align import register, shift_image
from livediff.operators.azimuthal import azimuthal_average, powder_center
from livediff.operators.bin import bin_frame
from livediff.operators.checks import check_mask
from livediff.operators.corrections import correct, dynamic_background
from livediff.operators.hot_pixels import HotPixels, bright_pixels
from livediff.operators.masks import finite_mask, mask_from_file, saturation_level, store
from livediff.operators.preview import to_display
from livediff.operators.spots import dispersion_mask
from livediff.operators.summary import summarise
from livediff.pipeline import OperatorSpec
from simulators import DiffractionSimulator


def _brute_bright(image, mask, n_sigma):
    """The definition, one pixel at a time: above median(valid finite 8-neighbours) + n sqrt(max(median, 1))."""
    rows, cols = image.shape
    out = np.zeros(image.shape, bool)
    for r in range(rows):
        for c in range(cols):
            if not mask[r, c] or not np.isfinite(image[r, c]):
                continue
            near = [float(image[i, j]) for i in range(r - 1, r + 2) for j in range(c - 1, c + 2)
                    if 0 <= i < rows and 0 <= j < cols and (i, j) != (r, c) and mask[i, j]
                    and np.isfinite(image[i, j])]
            if near:
                m = np.median(near)
                out[r, c] = image[r, c] > m + n_sigma * np.sqrt(max(m, 1.0))
    return out


@pytest.mark.parametrize("dtype", ["uint16", "uint32", "float32"])
@pytest.mark.parametrize("seed", [0, 1])
def test_bright_pixels_equal_the_brute_force_definition(dtype, seed):
    rng = np.random.default_rng(seed)
    image = rng.poisson(rng.uniform(0.5, 40, (23, 41))).astype(dtype)
    image[rng.random(image.shape) < 0.08] = 300
    image[:2, :3] = 500  # a cluster: its pixels raise each other's median
    if dtype == "float32":
        image[rng.random(image.shape) < 0.03] = np.nan
    mask = rng.random(image.shape) > 0.25
    image.setflags(write=False)
    mask.setflags(write=False)
    got = bright_pixels(image, mask, n_sigma=4.0)
    expect = _brute_bright(image, mask, 4.0)
    np.testing.assert_array_equal(got, expect)
    assert 0 < got.sum() and not got[~mask].any()
    np.testing.assert_array_equal(bright_pixels(image, n_sigma=4.0), _brute_bright(image, np.ones_like(mask), 4.0))


def test_one_by_n_frames_and_lone_pixels_are_never_bright():
    assert not bright_pixels(np.array([[1000]], np.uint16)).any()
    np.testing.assert_array_equal(bright_pixels(np.array([[1, 1000, 1]], np.uint16)), [[False, True, False]])


def _hot_pixels(series, frames, workers=1, **params):
    spec = OperatorSpec("hot_pixels", HotPixels, HotPixels.Params(**params))
    return process_frames([spec], series, frames, workers=workers)


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_hot_pixel_operator_finds_the_simulators_hot_pixels(workers):
    sim = DiffractionSimulator(shape=(64, 96), n_frames=40, n_spots=15, background=20.0, n_hot=6, seed=3)
    series = sim.series_start()
    truth = np.zeros(series.shape, bool)
    truth[tuple(np.array(sim.truth()["hot_pixels"]).T)] = True
    out, results = _hot_pixels(series, [Frame(1, i, sim.frame(i), mask=series.mask) for i in range(sim.n_frames)],
                               workers, window=10, fraction=0.8)
    for i, frame in enumerate(out):
        if i < 10:  # the first block is found at its end, applied from the next frame on
            assert frame.mask is series.mask and frame.results["hot_pixels"]["n_hot"] == 0
        else:
            np.testing.assert_array_equal(frame.mask, series.mask & ~truth)
            assert frame.results["hot_pixels"]["n_hot"] == truth.sum()
    np.testing.assert_array_equal(results["hot_pixels"]["hot"].astype(bool), truth)


def test_hot_pixels_need_the_fraction_within_one_block():
    image = np.full((5, 5), 10, np.uint16)
    hot = image.copy()
    hot[2, 2] = 1000
    frames = [Frame(1, i, f) for i, f in enumerate([hot, hot, image, image, hot, hot, hot, image, image])]
    out, _ = _hot_pixels(SeriesStart(1, (5, 5), "uint16"), frames, 2, window=4, fraction=0.75, n_sigma=5.0)
    assert [f.results["hot_pixels"]["n_hot"] for f in out] == [0] * 8 + [1]  # 2/4, then 3/4 in the second block
    assert not out[-1].mask[2, 2] and out[-1].mask.sum() == 24


def test_mask_file_conventions_and_saturation_levels():
    stored = np.array([[0, 1], [2, 0]], np.uint8)
    np.testing.assert_array_equal(mask_from_file(stored), [[True, False], [False, True]])
    np.testing.assert_array_equal(mask_from_file(stored, nonzero="valid"), [[False, True], [True, False]])
    assert saturation_level("uint16") == 65535 and saturation_level("uint32") == 2**32 - 1
    assert saturation_level("float32") == np.inf and saturation_level("uint16", 1000) == 1000.0


def test_mask_checks_name_dtype_and_shapes():
    with pytest.raises(TypeError, match="mask must be bool"):
        check_mask(np.ones((2, 2), np.uint8), (2, 2))
    with pytest.raises(ValueError, match=r"mask shape \(512, 512\) != image shape \(514, 1030\)"):
        check_mask(np.ones((512, 512), bool), (514, 1030))


_REFERENCE = 1e4 + np.random.default_rng(8).poisson(50, (37, 61)).astype(np.float32)

#: every kernel taking (image, mask), called with its other arguments fixed
_KERNELS = {
    "summarise": summarise,
    "correct": lambda image, mask: correct(image, mask=mask),
    "bright_pixels": bright_pixels,
    "bin_frame": lambda image, mask: bin_frame(image, 2, mask),
    "to_display": to_display,
    "dynamic_background": lambda image, mask: dynamic_background(image, 3.0, mask),
    "shift_image": lambda image, mask: shift_image(image, (0.5, -1.0), mask),
    "register": lambda image, mask: register(image, _REFERENCE, mask),
    "azimuthal_average": lambda image, mask: azimuthal_average(image, (18.0, 30.0), mask),
    "powder_center": powder_center,
    "dispersion_mask": dispersion_mask,
}


@pytest.mark.parametrize("kernel", _KERNELS)
def test_every_kernel_rejects_bad_images_and_masks_with_the_same_words(kernel):
    call = _KERNELS[kernel]
    image = np.random.default_rng(21).poisson(50, (37, 61)).astype(np.uint16)
    image.setflags(write=False)
    with pytest.raises(ValueError, match=r"^mask shape \(61, 37\) != image shape \(37, 61\)$"):
        call(image, np.ones((61, 37), bool))
    with pytest.raises(TypeError, match=r"^mask must be bool \(True = valid pixel\), got dtype uint8;"):
        call(image, np.ones((37, 61), np.uint8))
    with pytest.raises(ValueError, match=r"^image must be 2-D \(rows, cols\), got shape \(61,\)$"):
        call(image[0], None)
    with pytest.raises(TypeError, match="^image must be (real-valued: integers or floats|a non-empty integer)"):
        call(image.astype(complex), None)


def test_checks_pass_arrays_through_and_name_what_they_got():
    image = np.zeros((3, 4), np.float32)
    assert checks.check_image(image) is image
    np.testing.assert_array_equal(checks.check_image([[1, 2]]), [[1, 2]])
    assert checks.check_ndim(np.zeros(3, complex), "x", 1).dtype == complex
    with pytest.raises(ValueError, match=r"^cube must be 3-D, got shape \(3, 4\)$"):
        checks.check_image(image, "cube", ndim=3)
    mask = np.ones((3, 4), bool)
    assert checks.check_mask(mask, (3, 4)) is mask and checks.check_mask(None, (3, 4)) is None
    assert checks.check_mask([[True, False]], (1, 2)).dtype == bool
    with pytest.raises(ValueError, match=r"^reference_mask shape \(3, 4\) != image shape \(4, 3\)$"):
        checks.check_mask(mask, (4, 3), "reference_mask")
    with pytest.raises(ValueError, match=r"^gain shape \(3, 4\) != frame shape \(3, 5\)$"):
        checks.check_shape(image, [3, 5], "gain", of="frame")
    assert checks.check_frame_shape([5.0, np.int64(6)]) == (5, 6)
    with pytest.raises(ValueError, match=r"^shape must be \(rows, cols\) with both >= 1, got \(0, 4\)$"):
        checks.check_frame_shape((0, 4))
    with pytest.raises(ValueError, match=r"^shape must be \(rows, cols\) with both >= 1, got \(2, 3, 4\)$"):
        checks.check_frame_shape((2, 3, 4))


def test_reference_and_output_checks_convert_or_allocate():
    big = (np.arange(12) + 2**32 - 20).astype(np.uint32).reshape(3, 4)
    got = checks.check_reference(big, (3, 4), "dark")
    assert got.dtype == np.float64 and np.array_equal(got, big)  # exact: no float32 rounding
    flat = np.ones((3, 4), np.float32)
    assert checks.check_reference(flat, (3, 4), "flat") is flat and checks.check_reference(None, (3, 4), "x") is None
    with pytest.raises(TypeError, match="^dark must be real-valued: integers or floats, got dtype bool$"):
        checks.check_reference(np.zeros((3, 4), bool), (3, 4), "dark")
    with pytest.raises(ValueError, match=r"^flat shape \(3, 4\) != image shape \(3, 3\)$"):
        checks.check_reference(flat, (3, 3), "flat")
    out = checks.check_output(None, (3, 4), np.float32, "out")
    assert out.shape == (3, 4) and out.dtype == np.float32
    assert checks.check_output(flat, (3, 4), np.float32, "out") is flat
    with pytest.raises(TypeError, match="^mask_out must be bool, got float32$"):
        checks.check_output(flat, (3, 4), np.bool_, "mask_out")
    with pytest.raises(ValueError, match=r"^out shape \(3, 4\) != image shape \(4, 3\)$"):
        checks.check_output(flat, (4, 3), np.float32, "out")


def test_check_choice_lists_two_choices_with_or_and_more_as_one_of():
    checks.check_choice("mean", ("sum", "mean"), "reduce")
    with pytest.raises(ValueError, match="^reduce must be 'sum' or 'mean', got 'max'$"):
        checks.check_choice("max", ("sum", "mean"), "reduce")
    with pytest.raises(ValueError, match="^method must be one of 'auto', 'direct', 'fft', got None$"):
        checks.check_choice(None, ("auto", "direct", "fft"), "method")


def test_all_valid_is_one_shared_read_only_mask_per_shape():
    a = checks.all_valid((37, 61))
    assert a.dtype == bool and a.shape == (37, 61) and a.all() and not a.flags.writeable
    assert checks.all_valid([37, 61]) is a and checks.all_valid(np.array([37, 61])) is a
    b = checks.all_valid((61, 37))
    assert b.shape == (61, 37) and b.all() and b is not a
    with pytest.raises(ValueError, match="read-only"):
        a[0, 0] = False


def test_finite_mask_is_the_valid_pixels_holding_finite_values():
    rng = np.random.default_rng(17)
    image = rng.normal(1e4, 30, (37, 61)).astype(np.float32)
    image[rng.random(image.shape) < 0.1] = np.nan
    image[0, :3] = [np.inf, -np.inf, np.nan]
    mask = rng.random(image.shape) > 0.2
    image.setflags(write=False)
    mask.setflags(write=False)
    expect = np.array([[bool(mask[r, c]) and math.isfinite(image[r, c]) for c in range(61)] for r in range(37)])
    got = finite_mask(image, mask)
    np.testing.assert_array_equal(got, expect)
    got[...] = False  # a new array: the caller may change it
    np.testing.assert_array_equal(finite_mask(image), [[math.isfinite(v) for v in row] for row in image])
    assert finite_mask(np.arange(6, dtype=np.uint16).reshape(2, 3)).all()


def test_store_writes_finite_valid_values_and_fills_the_rest():
    out = np.full((2, 3), 7.0, np.float32)
    valid = np.ones((2, 3), bool)
    fill = np.float32(-1.0)
    store(out, valid, 0, 1, np.float32(2.5), True, fill)
    store(out, valid, 1, 0, np.float32(2.5), False, fill)
    store(out, valid, 1, 2, np.float32(np.inf), True, fill)
    store(out, valid, 0, 2, np.float32(np.nan), True, fill)
    store(out, None, 0, 0, np.float32(3.0), True, fill)
    np.testing.assert_array_equal(out, [[3.0, 2.5, -1.0], [-1.0, 7.0, -1.0]])
    np.testing.assert_array_equal(valid, [[True, True, False], [False, True, False]])
