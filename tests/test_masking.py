"""Pixel masks: conventions at the edge, saturation levels, hot pixels against brute force and the simulator."""
from __future__ import annotations

import numpy as np
import pytest

from livediff.model import Frame, SeriesStart
from livediff.operators.masking import (
    HotPixels,
    bright_pixels,
    check_mask,
    mask_from_file,
    saturation_level,
)
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


def test_hot_pixel_operator_finds_the_simulators_hot_pixels():
    sim = DiffractionSimulator(shape=(64, 96), n_frames=40, n_spots=15, background=20.0, n_hot=6, seed=3)
    series = sim.series_start()
    op = HotPixels(HotPixels.Params(window=10, fraction=0.8))
    op.start(series)
    truth = np.zeros(series.shape, bool)
    truth[tuple(np.array(sim.truth()["hot_pixels"]).T)] = True
    for i in range(sim.n_frames):
        mask_in = series.mask
        frame = op.process(Frame(1, i, sim.frame(i), mask=mask_in))
        if i < 9:
            assert frame.mask is mask_in and frame.results["hot_pixels"]["n_hot"] == 0
    assert mask_in.sum() == series.mask.sum()  # never written
    found = op.snapshot()["hot"].astype(bool)
    np.testing.assert_array_equal(found, truth)
    np.testing.assert_array_equal(frame.mask, series.mask & ~truth)
    assert frame.results["hot_pixels"]["n_hot"] == truth.sum()


def test_hot_pixels_need_the_fraction_within_one_block():
    image = np.full((5, 5), 10, np.uint16)
    hot = image.copy()
    hot[2, 2] = 1000
    op = HotPixels(HotPixels.Params(window=4, fraction=0.75, n_sigma=5.0))
    op.start(SeriesStart(1, (5, 5), "uint16"))
    for i, f in enumerate([hot, hot, image, image, hot, hot, hot, image]):  # 2/4 then 3/4
        frame = op.process(Frame(1, i, f))
        assert frame.results["hot_pixels"]["n_hot"] == (1 if i == 7 else 0)
    assert frame.mask is not None and not frame.mask[2, 2] and frame.mask.sum() == 24


def test_hot_maps_of_several_workers_merge_by_or():
    a, b = HotPixels(HotPixels.Params(window=1, fraction=1.0)), HotPixels(HotPixels.Params(window=1, fraction=1.0))
    for op, spot in ((a, (1, 1)), (b, (3, 3))):
        op.start(SeriesStart(1, (5, 5), "uint16"))
        image = np.full((5, 5), 10, np.uint16)
        image[spot] = 1000
        op.process(Frame(1, 0, image))
    a.merge(b.state())
    assert set(zip(*np.nonzero(a.snapshot()["hot"]))) == {(1, 1), (3, 3)}


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
