"""Masked registration and shifting (the ``align`` family) against independent references."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from skimage.registration import phase_cross_correlation

from livediff.executors.offline import process_frames
from livediff.model import Frame, SeriesStart
from livediff.operators.align import Align, AlignParams, Registration, register, shift_image
from livediff.operators.base import BaseOperator
from livediff.operators.flatfield import FlatField
from livediff.pipeline import OperatorSpec
from simulators import DiffractionSimulator


def readonly(*arrays):
    for a in arrays:
        a.setflags(write=False)
    return arrays if len(arrays) > 1 else arrays[0]


def speckle(rng, shape, sigma=1.0, scale=1000.0):
    """A sharp random pattern (Gaussian-filtered noise) with a large offset."""
    return (1e4 + scale * ndimage.gaussian_filter(rng.random(shape), sigma)).astype(np.float32)


def keys(u):
    u = np.abs(u)
    return np.where(u <= 1, 1.5 * u**3 - 2.5 * u**2 + 1, np.where(u < 2, -0.5 * u**3 + 2.5 * u**2 - 4 * u + 2, 0.0))


def brute_force_ncc(image, reference, mask, reference_mask, overlap_ratio=0.3):
    """Pearson correlation over the pixels valid in both, for every integer lag (dy, dx)."""
    rows, cols = image.shape
    lags, values, counts = [], [], []
    for dy in range(-rows + 1, rows):
        for dx in range(-cols + 1, cols):
            rs, cs = slice(max(0, -dy), min(rows, rows - dy)), slice(max(0, -dx), min(cols, cols - dx))
            rg, cg = slice(rs.start + dy, rs.stop + dy), slice(cs.start + dx, cs.stop + dx)
            both = reference_mask[rs, cs] & mask[rg, cg]
            f, g = reference[rs, cs][both].astype(float), image[rg, cg][both].astype(float)
            lags.append((dy, dx))
            counts.append(both.sum())
            values.append(np.corrcoef(f, g)[0, 1] if both.sum() > 2 and f.std() > 0 and g.std() > 0 else -np.inf)
    values, counts = np.array(values), np.array(counts)
    values[counts < overlap_ratio * counts.max()] = -np.inf
    return np.array(lags), values


# ---------------------------------------------------------------- register: conventions and formula
@pytest.mark.parametrize("dtype", ["uint16", "uint32", "float32"])
def test_roll_by_three_rows_gives_minus_three_like_scikit_image(dtype):
    rng = np.random.default_rng(1)
    reference = readonly(speckle(rng, (64, 96), sigma=0.8).astype(dtype))
    image = readonly(np.roll(reference, 3, axis=0))
    shift_y, shift_x, quality = register(image, reference)
    assert shift_y == pytest.approx(-3, abs=0.05) and shift_x == pytest.approx(0, abs=0.05)
    assert quality > 0.99
    skimage_shift = phase_cross_correlation(reference.astype(float), image.astype(float),
                                            reference_mask=np.ones(reference.shape, bool))[0]
    np.testing.assert_allclose((shift_y, shift_x), skimage_shift, atol=0.05)


def test_shift_image_with_the_registered_shift_restores_the_reference():
    rng = np.random.default_rng(2)
    big = speckle(rng, (110, 150), sigma=1.5)
    reference, image = readonly(big[20:84, 25:121], big[13:77, 30:126])  # pattern moved by (+7, -5)
    shift = register(image, reference)[:2]
    np.testing.assert_allclose(shift, (-7, 5), atol=0.02)
    aligned = shift_image(image, shift)
    np.testing.assert_allclose(aligned[10:-10, 10:-10], reference[10:-10, 10:-10], rtol=2e-4)


def test_quality_and_integer_peak_match_brute_force_masked_ncc():
    rng = np.random.default_rng(3)
    reference = speckle(rng, (14, 19), sigma=0.7)
    image = np.roll(reference, (2, -3), axis=(0, 1)) + rng.normal(0, 20, reference.shape).astype(np.float32)
    mask, reference_mask = rng.random(image.shape) > 0.2, rng.random(image.shape) > 0.2
    image[~mask] = 65535  # garbage under the mask must not matter
    readonly(reference, image, mask, reference_mask)
    lags, values = brute_force_ncc(image, reference, mask, reference_mask)
    for max_shift in (None, 2.5):
        allowed = np.hypot(*lags.T) <= (np.inf if max_shift is None else max_shift)
        best = np.argmax(np.where(allowed, values, -np.inf))
        shift_y, shift_x, quality = register(image, reference, mask, reference_mask=reference_mask,
                                             max_shift=max_shift)
        assert quality == pytest.approx(values[best], abs=1e-5)
        assert abs(-shift_y - lags[best, 0]) <= 1 and abs(-shift_x - lags[best, 1]) <= 1


def test_roi_registers_only_that_region():
    rng = np.random.default_rng(4)
    reference = speckle(rng, (60, 90))
    image = np.roll(reference, (4, 6), axis=(0, 1))
    image[:, 45:] = np.roll(reference, (-3, 2), axis=(0, 1))[:, 45:]  # the right half moves otherwise
    readonly(reference, image)
    roi = (5, 55, 50, 88)
    shift = register(image, reference, roi=roi, max_shift=10)[:2]
    np.testing.assert_allclose(shift, (3, -2), atol=0.1)
    crop = np.s_[roi[0]:roi[1], roi[2]:roi[3]]
    np.testing.assert_allclose(register(image[crop], reference[crop], max_shift=10)[:2], shift, atol=1e-9)


def test_flat_image_gives_nan_and_bad_arguments_raise_with_values():
    reference = speckle(np.random.default_rng(5), (20, 30))
    assert all(np.isnan(register(np.full((20, 30), 7.0), reference)))
    with pytest.raises(ValueError, match=r"mask shape \(20, 20\) != image shape \(20, 30\)"):
        register(reference, reference, np.ones((20, 20), bool))
    with pytest.raises(TypeError, match="bool array"):
        register(reference, reference, np.ones((20, 30), np.uint8))
    with pytest.raises(ValueError, match=r"image shape \(20, 31\) != reference shape \(20, 30\)"):
        register(np.zeros((20, 31)), reference)
    with pytest.raises(ValueError, match=r"roi .* = \(0, 25, 0, 10\) .* shape \(20, 30\)"):
        register(reference, reference, roi=(0, 25, 0, 10))
    with pytest.raises(ValueError, match="max_shift must be > 0 pixels or None, got -1"):
        register(reference, reference, max_shift=-1)
    with pytest.raises(ValueError, match="no valid pixel"):
        register(reference, reference, np.zeros((20, 30), bool))


# ---------------------------------------------------------------- acceptance: drift and the beam stop
def drifting_series(**kw):
    sim = DiffractionSimulator(pattern="fixed", n_hot=0, **kw)
    return sim, sim.detector_mask & ~sim.beamstop_mask


@pytest.mark.parametrize("max_shift", [None, 30.0])
def test_subpixel_drift_up_to_20_px_with_beam_stop_is_recovered_to_001_px_rms(max_shift):
    sim, mask = drifting_series(shape=(192, 256), drift=1.5, n_frames=160, seed=1, n_spots=60, background=20.0)
    reference = readonly(sim.frame(0))
    registration = Registration(reference, readonly(mask), max_shift=max_shift)
    errors, drifts = [], []
    for i in range(1, sim.n_frames, 5):
        drift = np.array(sim.drift_at(i))
        if np.abs(drift).max() > 20:
            continue
        errors.append(np.array(registration(readonly(sim.frame(i)))[:2]) + drift)
        drifts.append(drift)
    assert len(errors) >= 25 and np.abs(drifts).max(axis=0).min() > 15
    assert np.sqrt(np.mean(np.square(errors))) <= 0.01


def test_beam_stop_fools_unmasked_and_zero_filled_registration_but_not_masked():
    sim, mask = drifting_series(shape=(96, 128), drift=3.0, n_frames=4, seed=11, n_spots=15, background=100.0)
    reference, image = readonly(sim.frame(0), sim.frame(3))
    truth = -np.array(sim.drift_at(3))
    assert np.abs(truth).max() > 5
    np.testing.assert_allclose(register(image, reference, mask)[:2], truth, atol=0.1)
    fooled = [register(image, reference)[:2],
              register(np.where(mask, image, 0), np.where(mask, reference, 0))[:2],
              phase_cross_correlation(reference.astype(float), image.astype(float), upsample_factor=10)[0]]
    for shift in fooled:
        assert np.abs(np.subtract(shift, truth)).max() > 3 and np.abs(shift).max() < 0.5


# ---------------------------------------------------------------- acceptance: exact and unbiased sub-pixel shifts
def beam_stop(shape, centre, radius):
    """True = valid: a disk on ``centre`` and an arm to the right edge masked, as a beam stop shadows."""
    rr, cc = np.indices(shape)
    shadow = (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius ** 2
    return ~(shadow | ((np.abs(rr - centre[0]) <= radius / 3) & (cc >= centre[1])))


def periodic_pattern(rng, shape, kind):
    """Speckle or Bragg spots (sigma 1 px) that wrap around smoothly, so fourier_shift moves them cleanly."""
    if kind == "speckle":
        return 1e3 + 5e3 * ndimage.gaussian_filter(rng.random(shape), 1.2, mode="wrap")
    rr, cc = np.indices(shape)
    pattern = np.full(shape, 20.0)
    for row, col, height in zip(rng.uniform(0, shape[0], 80), rng.uniform(0, shape[1], 80), rng.uniform(1e2, 1e3, 80)):
        dr = (rr - row + shape[0] / 2) % shape[0] - shape[0] / 2
        dc = (cc - col + shape[1] / 2) % shape[1] - shape[1] / 2
        pattern += height * np.exp(-(dr ** 2 + dc ** 2) / 2.0)
    return pattern


def moved(pattern, shift, how):
    """``pattern`` moved by ``shift`` (its content at x goes to x + shift) by scipy.ndimage."""
    if how == "fourier_shift":
        return np.real(np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(pattern), shift)))
    return ndimage.shift(pattern, shift, order=3, mode="nearest")


def masked_pattern(seed, kind, shape=(150, 190)):
    """(rng, pattern, beam-stop mask), read-only, on a non-square frame."""
    rng = np.random.default_rng(seed)
    return rng, readonly(periodic_pattern(rng, shape, kind)), readonly(beam_stop(shape, (70, 90), 12))


@pytest.mark.parametrize("how", ["fourier_shift", "shift"])
@pytest.mark.parametrize("kind", ["speckle", "spots"])
def test_whole_pixel_moves_are_measured_exactly_with_a_beam_stop(kind, how):
    _, pattern, mask = masked_pattern(30, kind)
    for move in [(3, -5), (-7, 12), (0, 4), (0, 0)]:
        image = readonly(moved(pattern, move, how))
        shift_y, shift_x, quality = register(image, pattern, mask)
        # the requirement is 0.005 px; the symmetric pixel pairs make it exact to float32 round-off
        np.testing.assert_allclose((shift_y, shift_x), np.negative(move), atol=1e-4)
        assert quality > 0.9999


@pytest.mark.parametrize("how", ["fourier_shift", "shift"])
@pytest.mark.parametrize("kind", ["speckle", "spots"])
def test_subpixel_moves_with_noise_and_a_beam_stop_are_unbiased_to_001_px_rms(kind, how):
    rng, pattern, mask = masked_pattern(31, kind)
    shape = pattern.shape
    registration = Registration(pattern, mask, max_shift=10.0)
    errors = []
    for move in rng.uniform(-6, 6, (16, 2)):
        image = moved(pattern, move, how) + rng.normal(0.0, 0.02 * pattern.std(), shape)
        image[~mask] = np.nan  # never read
        errors.append(np.array(registration(readonly(image))[:2]) + move)
    assert np.sqrt(np.mean(np.square(errors))) <= 0.01
    assert np.abs(np.mean(errors, axis=0)).max() <= 0.005


def test_coarse_to_fine_search_on_a_large_frame_agrees_with_the_full_resolution_search():
    rng = np.random.default_rng(32)
    shape = (520, 700)
    pattern = readonly(periodic_pattern(rng, shape, "spots"))
    mask = readonly(beam_stop(shape, (250, 340), 40))
    pyramid, full = Registration(pattern, mask, max_shift=30.0), Registration(pattern, mask, max_shift=30.0, levels=0)
    assert pyramid._levels == 2
    for move in [(13.3, -20.6), (-4.0, 7.0), (0.4, 0.2)]:
        image = readonly(moved(pattern, move, "shift") + rng.normal(0.0, 5.0, shape))
        np.testing.assert_allclose(pyramid(image)[:2], np.negative(move), atol=0.01)
        np.testing.assert_allclose(pyramid(image), full(image), atol=1e-6)
    with pytest.raises(ValueError, match=r"levels must be an integer in \[0, 8\] .* \(520, 700\), got 9"):
        Registration(pattern, levels=9)


def test_one_shot_register_reuses_its_registration_while_reference_and_mask_are_equal(monkeypatch):
    module = importlib.import_module("livediff.operators.align.register")  # the package's `register` is the function
    built = []

    class Counted(Registration):
        def __init__(self, *args, **kwargs):
            built.append(kwargs.get("max_shift"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(module, "Registration", Counted)
    rng = np.random.default_rng(33)
    reference = speckle(rng, (40, 50))
    mask = rng.random(reference.shape) > 0.1
    image = np.roll(reference, (2, -1), axis=(0, 1))
    first = register(image, reference, mask, max_shift=5)
    assert register(image, reference.copy(), mask.copy(), max_shift=5) == first and built == [5]
    reference[0, 0] += 1.0  # changed in place: built again
    register(image, reference, mask, max_shift=5)
    register(image, reference, mask, max_shift=6)  # other options: built again
    register(image, reference, mask, max_shift=6)
    assert built == [5, 5, 6]


# ---------------------------------------------------------------- shift_image
@pytest.mark.parametrize("dtype", ["uint16", "uint32", "float32"])
def test_cubic_shift_matches_brute_force_keys_interpolation_and_mask_footprint(dtype):
    rng = np.random.default_rng(8)
    image = (rng.random((9, 13)) * 5000).astype(dtype)
    mask = rng.random(image.shape) > 0.15
    readonly(image, mask)
    shift = (1.3, -2.6)
    out, out_mask = shift_image(image, shift, mask, fill_value=-1.0)
    assert out.dtype == np.float32
    rows, cols = image.shape
    for r in range(rows):
        for c in range(cols):
            y, x = r - shift[0], c - shift[1]
            taps = [(i, j, keys(y - i) * keys(x - j)) for i in range(int(y) - 2, int(y) + 3)
                    for j in range(int(x) - 2, int(x) + 3) if keys(y - i) * keys(x - j) != 0]
            ok = all(0 <= i < rows and 0 <= j < cols and mask[i, j] for i, j, _ in taps)
            assert out_mask[r, c] == ok
            expected = sum(w * float(image[i, j]) for i, j, w in taps) if ok else -1.0
            assert out[r, c] == pytest.approx(expected, rel=1e-5, abs=1e-2)


def test_linear_shift_matches_scipy_and_cubic_reproduces_quadratics():
    rng = np.random.default_rng(9)
    image = readonly(rng.random((30, 41)).astype(np.float32))
    shift = (-3.25, 5.7)
    ours = shift_image(image, shift, order=1)
    theirs = ndimage.shift(image.astype(float), shift, order=1, mode="constant", cval=0.0)
    np.testing.assert_allclose(ours[1:-4, 6:-1], theirs[1:-4, 6:-1], rtol=1e-5, atol=1e-6)
    rr, cc = np.indices((30, 41), dtype=float)
    quad = 0.03 * rr**2 - 0.02 * rr * cc + 0.05 * cc**2 + rr
    moved = shift_image(quad, shift, mask=np.ones(quad.shape, bool))
    expected = 0.03 * (rr - shift[0])**2 - 0.02 * (rr - shift[0]) * (cc - shift[1]) + 0.05 * (cc - shift[1])**2 \
        + (rr - shift[0])
    np.testing.assert_allclose(moved[0][moved[1]], expected[moved[1]], rtol=1e-10)
    # valid where the 4 x 4 footprint lies inside: rows r + 2 .. r + 5 <= 29, cols c - 7 .. c - 4 >= 0
    assert moved[1].sum() == 25 * 34 and moved[1][:25, 7:].all()


@settings(max_examples=30, deadline=None)
@given(dy=st.integers(-8, 8), dx=st.integers(-8, 8), rows=st.integers(9, 20), cols=st.integers(9, 20))
def test_whole_pixel_shifts_move_pixels_and_mask_exactly(dy, dx, rows, cols):
    rng = np.random.default_rng(rows * 100 + cols)
    image = readonly(rng.integers(0, 60000, (rows, cols)).astype(np.uint16))
    mask = readonly(rng.random((rows, cols)) > 0.2)
    out, out_mask = shift_image(image, (dy + 1e-9, dx), mask, fill_value=7.0)
    expected, expected_mask = np.full((rows, cols), 7.0, np.float32), np.zeros((rows, cols), bool)
    dst = np.s_[max(dy, 0):rows + min(dy, 0), max(dx, 0):cols + min(dx, 0)]
    src = np.s_[max(-dy, 0):rows + min(-dy, 0), max(-dx, 0):cols + min(-dx, 0)]
    expected_mask[dst] = mask[src]
    expected[dst] = np.where(mask[src], image[src], 7.0)
    np.testing.assert_array_equal(out_mask, expected_mask)
    np.testing.assert_array_equal(out, expected)


def test_shift_image_rejects_bad_order_and_non_finite_shift():
    with pytest.raises(ValueError, match="order must be 1 .* or 3 .*, got 2"):
        shift_image(np.zeros((4, 4)), (0.5, 0), order=2)
    with pytest.raises(ValueError, match=r"shift must be finite, got \(nan, 0\)"):
        shift_image(np.zeros((4, 4)), (np.nan, 0))


# ---------------------------------------------------------------- the operator
def series_frames(n=12, drift=2.0, seed=12):
    sim, mask = drifting_series(shape=(64, 96), drift=drift, n_frames=n, seed=seed, n_spots=25, background=10.0)
    start = SeriesStart(1, (64, 96), "uint16", n_frames=n, mask=mask)
    return sim, start, [readonly(sim.frame(i)) for i in range(n)]


def run(params, start, frames, workers=1, specs_before=()):
    """The align operator (after ``specs_before``) over ``frames`` on ``workers`` threads."""
    specs = [*specs_before, OperatorSpec("align", Align, params)]
    out, _ = process_frames(specs, start, [Frame(1, i, f, mask=start.mask) for i, f in enumerate(frames)],
                            workers=workers)
    return out


def test_operator_first_frame_reference_shifts_frames_and_moves_masks():
    sim, start, frames = series_frames()
    op = Align(AlignParams(max_shift=20.0))
    op.start(start)
    assert op.columns == {"shift_y": "f8", "shift_x": "f8", "quality": "f8", "aligned": "i1"}
    assert op.output_series(start).dtype == "float32"
    out = run(AlignParams(max_shift=20.0), start, frames)
    first = out[0]  # the reference itself: aligned by definition
    assert first.results["align"] == {"shift_y": 0.0, "shift_x": 0.0, "quality": 1.0, "aligned": 1}
    np.testing.assert_array_equal(first.data, frames[0].astype(np.float32))
    for i, frame in enumerate(out[1:], 1):
        res = frame.results["align"]
        expected = register(frames[i], frames[0], start.mask, max_shift=20.0)
        assert (res["shift_y"], res["shift_x"], res["quality"]) == pytest.approx(expected, abs=1e-9)
        assert res["aligned"] == 1
        np.testing.assert_allclose((res["shift_y"], res["shift_x"]), -np.array(sim.drift_at(i)), atol=0.1)
        data, mask = shift_image(frames[i], expected[:2], start.mask)
        np.testing.assert_array_equal(frame.data, data)
        np.testing.assert_array_equal(frame.mask, mask)
        assert frame.mask is not start.mask


def test_operator_flags_frames_below_min_quality_and_leaves_them_unshifted():
    _, start, frames = series_frames(n=3)
    noise = readonly(np.random.default_rng(13).poisson(10, (64, 96)).astype(np.uint16))
    out = run(AlignParams(min_quality=0.5), start, [frames[0], noise, frames[2]])
    res = out[1].results["align"]
    assert res["aligned"] == 0 and res["quality"] < 0.5
    np.testing.assert_array_equal(out[1].data, noise.astype(np.float32))
    assert out[1].data.dtype == np.float32 and out[1].mask is start.mask
    assert out[2].results["align"]["aligned"] == 1


def test_operator_file_reference_and_its_shape_check():
    sim, start, frames = series_frames(n=4)
    reference = sim.expected(0).astype(np.float32)
    reference[~start.mask] = np.nan  # masked pixels of a file may hold anything
    out = run(AlignParams(reference="file", reference_file=reference), start, frames)
    for i, frame in enumerate(out):
        np.testing.assert_allclose(frame.results["align"]["shift_y"], -sim.drift_at(i)[0], atol=0.1)
    with pytest.raises(ValueError, match=r"reference_file shape \(3, 3\) != frame shape \(64, 96\)"):
        Align(AlignParams(reference="file", reference_file=np.zeros((3, 3)))).start(start)
    with pytest.raises(ValueError, match="reference_file is required with reference = 'file'"):
        AlignParams(reference="file")
    with pytest.raises(ValueError, match=r"roi .* = \(0, 10, 50, 97\) .* shape \(64, 96\)"):
        Align(AlignParams(roi=(0, 10, 50, 97))).start(start)


def test_mean_reference_is_the_mean_of_aligned_frames_at_least_one_block_older():
    _, start, frames = series_frames(n=10)
    out = run(AlignParams(reference="mean", update_every=3), start, frames)
    for i in (7, 8):  # block 2: the mean of the aligned frames 0..2 (frame 0 is the reference itself)
        total = sum(np.where(f.mask, f.data, 0.0) for f in out[:3])
        count = sum(f.mask.astype(int) for f in out[:3])
        valid = count >= 2
        mean = np.where(valid, total / np.maximum(count, 1), 0.0)
        expected = register(frames[i], mean, start.mask, reference_mask=valid)
        res = out[i].results["align"]
        assert (res["shift_y"], res["shift_x"], res["quality"]) == pytest.approx(expected, abs=1e-5)
    first = register(frames[5], frames[0], start.mask)  # block 1 still uses frame 0
    assert out[5].results["align"]["quality"] == pytest.approx(first[2], abs=1e-9)


@pytest.mark.parametrize("reference", ["first", "mean"])
def test_several_workers_give_the_results_of_one_bit_for_bit(reference):
    _, start, frames = series_frames(n=16, seed=14)
    runs = [run(AlignParams(reference=reference, update_every=2), start, frames, workers=w) for w in (1, 2, 4)]
    for out in runs[1:]:
        for a, b in zip(out, runs[0]):
            assert a.results["align"] == b.results["align"]
            np.testing.assert_array_equal(a.data, b.data)
            np.testing.assert_array_equal(a.mask, b.mask)


class _FailsOnFirst(BaseOperator):
    kind = "fails_on_first"

    def process(self, frame):
        if frame.seq == 0:
            raise RuntimeError("broken frame")
        return frame


def test_when_the_first_frame_fails_upstream_the_next_is_the_reference():
    _, start, frames = series_frames(n=6)
    out = run(AlignParams(), start, frames, workers=2, specs_before=[OperatorSpec("x", _FailsOnFirst, None)])
    assert isinstance(out[0], RuntimeError)
    assert out[1].results["align"] == {"shift_y": 0.0, "shift_x": 0.0, "quality": 1.0, "aligned": 1}
    for i, frame in enumerate(out[2:], 2):
        expected = register(frames[i], frames[1], start.mask)
        res = frame.results["align"]
        assert (res["shift_y"], res["shift_x"], res["quality"]) == pytest.approx(expected, abs=1e-9)


def test_frames_with_no_valid_pixel_are_not_the_reference():
    """Darks that flatfield masks entirely come first; the first real frame is the reference."""
    _, start, frames = series_frames(n=8)
    specs = [OperatorSpec("flatfield", FlatField, FlatField.Params(dark_frames=2))]
    for reference in ("first", "mean"):
        out = run(AlignParams(reference=reference, update_every=2), start, frames, workers=2, specs_before=specs)
        for frame in out[:2]:
            assert frame.results["align"]["aligned"] == 0 and np.isnan(frame.results["align"]["quality"])
        assert out[2].results["align"]["quality"] == 1.0
        assert all(f.results["align"]["aligned"] == 1 for f in out[2:])
