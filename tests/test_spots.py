"""The dispersion spotfinder against independent references: numpy summed-area tables,
brute-force loops, scipy.ndimage labelling and the simulator's ground truth."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from scipy.spatial import cKDTree

from livediff.operators.spots import dispersion_mask, find_spots
from simulators import DiffractionSimulator

LIMIT = 2.0 ** 24


# ---------------------------------------------------------------- references
def _window_sums(values, use, kh, kw):
    """Clipped-window count, sum and sum of squares from float64 summed-area tables (cumsum)."""
    rows, cols = values.shape
    v = np.where(use, values.astype(np.float64), 0.0)
    r = np.arange(rows)
    c = np.arange(cols)
    r0, r1 = np.clip(r - kh, 0, rows), np.clip(r + kh + 1, 0, rows)
    c0, c1 = np.clip(c - kw, 0, cols), np.clip(c + kw + 1, 0, cols)
    sums = []
    for a in (use.astype(np.float64), v, v * v):
        sat = np.zeros((rows + 1, cols + 1))
        sat[1:, 1:] = a.cumsum(0).cumsum(1)
        sums.append(sat[np.ix_(r1, c1)] - sat[np.ix_(r0, c1)] - sat[np.ix_(r1, c0)] + sat[np.ix_(r0, c0)])
    return sums


def reference_mask(image, mask=None, *, gain=None, kernel_size=(3, 3), sigma_background=6.0, sigma_strong=3.0,
                   min_local=2, global_threshold=0.0, extended=False):
    """DIALS' formulas (spotfinding.md) on numpy SAT window sums."""
    v = image.astype(np.float64)
    use = (np.ones(image.shape, bool) if mask is None else mask) & (v < LIMIT) & (v > -LIMIT)
    kh, kw = kernel_size
    m, x, y = _window_sums(image, use, kh, kw)
    g = 1.0 if gain is None else np.broadcast_to(np.asarray(gain, float), image.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        if gain is None:
            dispersed = m * y - x * x - x * (m - 1) > x * sigma_background * np.sqrt(2 * (m - 1))
        else:
            dispersed = m * y - x * x > g * x * (m - 1 + sigma_background * np.sqrt(2 * (m - 1)))
        dispersed &= use & (m >= min_local) & (x >= 0)
        if not extended:
            d = sigma_strong * np.sqrt(x * m) if gain is None else sigma_strong * np.sqrt(g * x * m)
            return dispersed & (m * v - x > d) & (v > global_threshold)
        e = min(kh, kw) - 1
        core = ndimage.binary_erosion(dispersed | ~use, np.ones((2 * e + 1,) * 2, bool), border_value=1) & use
        m2, x2, _ = _window_sums(image, use & ~core, kh + 2, kw + 2)
        mean = np.where(m2 >= 2, x2 / np.maximum(m2, 1), 0.0)
        return core & (v > global_threshold) & (v >= mean + sigma_strong * np.sqrt(g * mean))


def brute_force_mask(image, mask, *, kernel_size, sigma_background, sigma_strong, min_local, extended=False):
    """Pixel by pixel, window by window, with plain Python loops (tiny images only)."""
    rows, cols = image.shape
    kh, kw = kernel_size
    use = [[bool(mask[r, c]) and abs(float(image[r, c])) < LIMIT for c in range(cols)] for r in range(rows)]

    def window(r, c, ph, pw, ok):
        vals = [float(image[i, j]) for i in range(max(0, r - ph), min(rows, r + ph + 1))
                for j in range(max(0, c - pw), min(cols, c + pw + 1)) if ok(i, j)]
        return len(vals), sum(vals), sum(v * v for v in vals)

    def dispersed(r, c):
        m, x, y = window(r, c, kh, kw, lambda i, j: use[i][j])
        if not (use[r][c] and m >= min_local and x > 0):
            return False, m, x
        var, mean = (m * y - x * x) / (m * (m - 1)), x / m
        return var / mean > 1 + sigma_background * (2 / (m - 1)) ** 0.5, m, x

    out = np.zeros(image.shape, bool)
    if not extended:
        for r in range(rows):
            for c in range(cols):
                ok, m, x = dispersed(r, c)
                out[r, c] = ok and image[r, c] > 0 and image[r, c] > x / m + sigma_strong * (x / m) ** 0.5
        return out
    flag = [[dispersed(r, c)[0] or not use[r][c] for c in range(cols)] for r in range(rows)]
    e = min(kh, kw) - 1
    core = [[use[r][c] and all(flag[i][j] for i in range(max(0, r - e), min(rows, r + e + 1))
                               for j in range(max(0, c - e), min(cols, c + e + 1))) for c in range(cols)]
            for r in range(rows)]
    for r in range(rows):
        for c in range(cols):
            if core[r][c]:
                n, x, _ = window(r, c, kh + 2, kw + 2, lambda i, j: use[i][j] and not core[i][j])
                mean = x / n if n >= 2 else 0.0
                out[r, c] = image[r, c] > 0 and image[r, c] >= mean + sigma_strong * mean ** 0.5
    return out


def poisson_frame(rng, shape, dtype, *, background=5.0, n_peaks=12, offset=0.0):
    """Poisson background with bright 3x3 peaks, some at the edges, and a few hot pixels."""
    image = offset + rng.poisson(background, shape).astype(np.float64)
    rows, cols = shape
    corners = [(0, 0), (rows - 1, cols - 1), (0, cols - 1), (rows - 1, rng.integers(cols))]
    centres = corners + [(rng.integers(rows), rng.integers(cols)) for _ in range(n_peaks)]
    for r, c in centres:
        image[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2] += rng.uniform(4, 30) * np.sqrt(background + offset) + 10
    if dtype != "uint16":  # hot pixels: never counted, never strong
        image.flat[rng.choice(image.size, min(3, image.size), replace=False)] = LIMIT + 17
    image = np.minimum(image, np.iinfo(dtype).max if dtype[0] in "ui" else np.inf).astype(dtype)
    image.setflags(write=False)
    return image


def random_mask(rng, shape, fraction):
    mask = rng.random(shape) >= fraction
    r, c = rng.integers(shape[0]), rng.integers(shape[1])
    mask[max(r - 4, 0):r + 4, max(c - 6, 0):c + 6] = False  # a masked block, so edges of masks are tested
    mask.setflags(write=False)
    return mask


PARAMS = [
    {},
    {"kernel_size": (2, 4), "sigma_background": 3.0, "sigma_strong": 2.0, "min_local": 10},
    {"kernel_size": (1, 1), "sigma_background": 1.0, "sigma_strong": 1.0, "global_threshold": 8.0},
    {"kernel_size": (5, 3), "gain": 1.7},
    {"gain": "map", "sigma_background": 4.0},
    {"extended": True},
    {"extended": True, "kernel_size": (4, 2), "gain": 0.8, "global_threshold": 4.0},
]


# ---------------------------------------------------------------- strong pixels
@pytest.mark.parametrize("params", PARAMS, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()) or "defaults")
@pytest.mark.parametrize("dtype", ["uint16", "uint32", "int32", "float32"])
def test_strong_mask_equals_numpy_summed_area_tables(params, dtype):
    rng = np.random.default_rng([3, len(str(params)), len(dtype)])
    for shape, fraction in (((64, 96), 0.1), ((37, 61), 0.0), ((41, 29), 0.5)):
        image = poisson_frame(rng, shape, dtype)
        mask = random_mask(rng, shape, fraction) if fraction else None
        kw = dict(params)
        if kw.get("gain") == "map":
            kw["gain"] = rng.uniform(0.5, 2.0, shape)
        expected = reference_mask(image, mask, **kw)
        assert expected.sum() >= 5  # the comparison has strong pixels to get right
        np.testing.assert_array_equal(dispersion_mask(image, mask, **kw), expected)
        np.testing.assert_array_equal(dispersion_mask(image, mask, threads=3, **kw), expected)


def test_large_offset_frames_and_tall_frames_with_many_row_blocks():
    rng = np.random.default_rng(11)
    image = poisson_frame(rng, (300, 45), "float32", background=50.0, offset=1e4)
    mask = random_mask(rng, image.shape, 0.05)
    expected = reference_mask(image, mask, gain=1.0)
    assert expected.sum() >= 5
    for threads in (1, 2, 4):
        np.testing.assert_array_equal(dispersion_mask(image, mask, gain=1.0, threads=threads), expected)


@pytest.mark.parametrize("extended", [False, True])
def test_brute_force_loops_on_tiny_images(extended):
    rng = np.random.default_rng(2)
    for _ in range(6):
        image = poisson_frame(rng, (9, 13), "uint16", background=3.0, n_peaks=2)
        mask = rng.random(image.shape) > 0.15
        kw = {"kernel_size": (2, 2), "sigma_background": 2.0, "sigma_strong": 2.0, "min_local": 3}
        expected = brute_force_mask(image, mask, extended=extended, **kw)
        assert expected.any()
        np.testing.assert_array_equal(dispersion_mask(image, mask, extended=extended, **kw), expected)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 30), cols=st.integers(1, 30), seed=st.integers(0, 2 ** 32 - 1),
       kh=st.integers(1, 4), kw=st.integers(1, 4), extended=st.booleans(), background=st.sampled_from([0.2, 3.0, 40.0]))
def test_property_any_shape_and_window(rows, cols, seed, kh, kw, extended, background):
    rng = np.random.default_rng(seed)
    image = poisson_frame(rng, (rows, cols), "uint32", background=background, n_peaks=2)
    mask = rng.random(image.shape) > 0.2
    kwargs = {"kernel_size": (kh, kw), "min_local": 2, "extended": extended}
    np.testing.assert_array_equal(dispersion_mask(image, mask, **kwargs), reference_mask(image, mask, **kwargs))


def test_masked_pixels_never_count_whatever_their_value():
    rng = np.random.default_rng(4)
    image = poisson_frame(rng, (64, 96), "uint32")
    mask = random_mask(rng, image.shape, 0.2)
    noisy = image.copy()
    noisy[~mask] = rng.integers(0, 10 ** 6, (~mask).sum())
    for extended in (False, True):
        strong = dispersion_mask(image, mask, extended=extended)
        assert strong.sum() >= 5 and not strong[~mask].any()
        np.testing.assert_array_equal(dispersion_mask(noisy, mask, extended=extended), strong)


def test_image_and_gain_scaled_together_give_the_same_mask_and_gain_one_equals_no_gain():
    rng = np.random.default_rng(5)
    image = poisson_frame(rng, (64, 96), "float32")
    mask = random_mask(rng, image.shape, 0.1)
    gain = rng.uniform(0.5, 2.0, image.shape)
    for extended in (False, True):
        strong = dispersion_mask(image, mask, gain=gain, extended=extended)
        assert strong.sum() >= 5
        for scale in (4.0, 0.5):  # the hot-pixel cut-off (max_value) scales with the counts
            np.testing.assert_array_equal(dispersion_mask(image * scale, mask, gain=gain * scale, extended=extended,
                                                          max_value=LIMIT * scale), strong)
        np.testing.assert_array_equal(dispersion_mask(image, mask, gain=1.0, extended=extended),
                                      dispersion_mask(image, mask, extended=extended))


def test_inputs_are_not_written_and_a_missing_mask_means_all_valid():
    rng = np.random.default_rng(6)
    image = poisson_frame(rng, (37, 61), "uint16")
    ones = np.ones(image.shape, bool)
    ones.setflags(write=False)
    np.testing.assert_array_equal(dispersion_mask(image), dispersion_mask(image, ones))


def test_bad_arguments_say_what_was_expected():
    image = np.zeros((3, 4), np.uint16)
    with pytest.raises(ValueError, match=r"mask shape \(3, 3\) != image shape \(3, 4\)"):
        dispersion_mask(image, np.ones((3, 3), bool))
    with pytest.raises(TypeError, match="mask must be bool"):
        dispersion_mask(image, np.ones((3, 4), np.uint8))
    with pytest.raises(ValueError, match=r"gain map shape \(4, 3\) != image shape \(3, 4\)"):
        dispersion_mask(image, gain=np.ones((4, 3)))
    with pytest.raises(ValueError, match="gain must be a finite number > 0, got -1"):
        dispersion_mask(image, gain=-1)
    with pytest.raises(ValueError, match=r"kernel_size must be two integers >= 1, got \(0, 3\)"):
        dispersion_mask(image, kernel_size=(0, 3))
    with pytest.raises(ValueError, match="image must be 2-D"):
        dispersion_mask(np.zeros(5))
    with pytest.raises(TypeError, match="image must be a non-empty integer"):
        dispersion_mask(np.zeros((3, 4), complex))
    with pytest.raises(ValueError, match="threads must be an integer >= 1, got 0"):
        dispersion_mask(image, threads=0)


# ---------------------------------------------------------------- spots of a frame
def test_spot_properties_equal_scipy_labelling_and_numpy_moments():
    rng = np.random.default_rng(7)
    image = poisson_frame(rng, (64, 96), "uint32", n_peaks=25)
    mask = random_mask(rng, image.shape, 0.05)
    strong = dispersion_mask(image, mask)
    labels, n = ndimage.label(strong)  # 4-connectivity
    got = find_spots(image, mask, z=5, min_spot_size=1, max_separation=100.0, shoebox=True)
    assert set(got) == {"x", "y", "z", "var_x", "var_y", "var_z", "intensity", "intensity_var", "bbox", "npix",
                        "shoebox_data", "shoebox_mask", "shoebox_offset"}
    assert n >= 10 and len(got["x"]) == n
    w = image.astype(np.float64)
    for i, box in enumerate(ndimage.find_objects(labels)):
        j = next(k for k in range(n) if got["bbox"][k, 2] == box[0].start and got["bbox"][k, 0] == box[1].start
                 and got["bbox"][k, 3] == box[0].stop and got["bbox"][k, 1] == box[1].stop)
        rr, cc = np.nonzero(labels == i + 1)
        ww = w[rr, cc]
        total = ww.sum()
        assert got["npix"][j] == rr.size and got["intensity"][j] == total == got["intensity_var"][j]
        assert got["y"][j] == pytest.approx((ww * rr).sum() / total, abs=1e-12)
        assert got["x"][j] == pytest.approx((ww * cc).sum() / total, abs=1e-12)
        for axis, p in (("x", cc), ("y", rr)):
            unbiased = (ww * (p - got[axis][j]) ** 2).sum() * total / (total ** 2 - (ww ** 2).sum())
            expected = 1 / 12 + (unbiased / total if rr.size > 1 else 0.0)
            assert got[f"var_{axis}"][j] == pytest.approx(expected, rel=1e-10)
        assert got["z"][j] == 5 and got["var_z"][j] == pytest.approx(1 / 12)
        assert tuple(got["bbox"][j, 4:]) == (5, 6)
        start, stop = got["shoebox_offset"][j:j + 2]
        shape = (box[0].stop - box[0].start, box[1].stop - box[1].start)
        np.testing.assert_array_equal(got["shoebox_data"][start:stop].reshape(shape), image[box])
        np.testing.assert_array_equal(got["shoebox_mask"][start:stop].reshape(shape), labels[box] == i + 1)


def test_size_and_separation_filters():
    rng = np.random.default_rng(8)
    image = poisson_frame(rng, (64, 96), "uint16", n_peaks=25)
    every = find_spots(image, min_spot_size=1, max_separation=100.0)
    sizes = every["npix"]
    assert sizes.min() < 4 < sizes.max()
    kept = find_spots(image, min_spot_size=4, max_spot_size=int(sizes.max()) - 1, max_separation=100.0)
    assert len(kept["x"]) == ((sizes >= 4) & (sizes < sizes.max())).sum()
    assert len(find_spots(image, min_spot_size=1, max_separation=1e-9)["x"]) < len(every["x"])


def test_too_many_strong_pixels_reject_the_frame_with_a_warning():
    rng = np.random.default_rng(9)
    image = poisson_frame(rng, (64, 96), "uint16", n_peaks=25)
    with pytest.warns(UserWarning, match=r"of the valid pixels are strong \(more than max_strong_fraction=0.001\)"):
        spots = find_spots(image, max_strong_fraction=0.001)
    assert len(spots["x"]) == 0 and spots["bbox"].shape == (0, 6)


def _peak_snr(sim, background_sim, index, truth):
    """Expected signal of each spot in its brightest pixel over the Poisson noise there:
    S / sqrt(S + B), with S the spot's expected counts and B the background's."""
    signal = sim.expected(index) - background_sim.expected(index)
    r, c = np.rint(truth["row"]).astype(int), np.rint(truth["col"]).astype(int)
    s = signal[r, c]
    return s / np.sqrt(s + background_sim.expected(index)[r, c])


def test_recall_precision_and_centroids_on_simulated_frames():
    kw = {"shape": (200, 260), "n_frames": 12, "seed": 21}
    sim = DiffractionSimulator(**kw)
    background = DiffractionSimulator(**kw, n_spots=0)
    mask = sim.detector_mask & ~sim.beamstop_mask  # the beam stop masked, as a user would
    found = matched = missed = 0
    errors = []
    for i in range(sim.n_frames):
        truth = sim.spots(i)
        bright = _peak_snr(sim, background, i, truth) >= 10
        spots = find_spots(sim.frame(i), mask)
        distance, nearest = cKDTree(np.stack([truth["row"], truth["col"]], 1)).query(
            np.stack([spots["y"], spots["x"]], 1), distance_upper_bound=2.0)
        hit = np.zeros(bright.size, bool)
        hit[nearest[np.isfinite(distance)]] = True
        found += spots["x"].size
        matched += np.isfinite(distance).sum()
        missed += (bright & ~hit).sum()
        ok = np.isfinite(distance) & bright[np.minimum(nearest, bright.size - 1)]
        errors.extend(np.hypot(spots["y"][ok] - truth["row"][nearest[ok]], spots["x"][ok] - truth["col"][nearest[ok]]))
    n_bright = len(errors) + missed
    assert n_bright > 300
    assert 1 - missed / n_bright >= 0.99, f"recall {1 - missed / n_bright:.3f}"
    assert matched / found >= 0.99, f"precision {matched / found:.3f}"
    assert np.sqrt(np.mean(np.square(errors))) <= 0.15


def test_pure_background_frames_give_almost_no_spots():
    sim = DiffractionSimulator(shape=(256, 320), n_frames=6, seed=4, n_spots=0)
    mask = sim.detector_mask & ~sim.beamstop_mask
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        counts = [find_spots(sim.frame(i), mask)["x"].size for i in range(sim.n_frames)]
    assert sum(counts) <= 1
