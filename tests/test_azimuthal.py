"""Azimuthal average against a numpy bincount / brute-force reference; powder centre against simulator truth."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from livediff.model import Frame, Geometry, SeriesStart
from livediff.operators import azimuthal as azimuthal_module
from livediff.operators.azimuthal import (Azimuthal, AzimuthalParams, PowderCenter, PowderCenterParams, RadialMap,
                                          azimuthal_average, electron_wavelength, powder_center)
from simulators.powder import PowderSimulator


def bincount_reference(image, center, mask=None, *, bin_width=1.0, radial_range=None):
    """Plain numpy: same bin edges as documented, sums in float64, NaN for empty bins."""
    rr, cc = np.indices(image.shape)
    r = np.sqrt((rr - center[0]) ** 2 + (cc - center[1]) ** 2)
    r_min = 0.0 if radial_range is None else radial_range[0]
    if radial_range is None:
        n = int((r.max() - r_min) // bin_width) + 1
        r_max = r_min + n * bin_width
    else:
        r_max = radial_range[1]
        n = math.ceil((r_max - r_min) / bin_width)
    k = np.floor((r - r_min) / bin_width).astype(np.int64)
    valid = (r >= r_min) & (r < r_max)
    if mask is not None:
        valid &= mask
    sums = np.bincount(k[valid], weights=image[valid].astype(np.float64), minlength=n)
    counts = np.bincount(k[valid], minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counts > 0, sums / counts, np.nan)
    return r_min + bin_width * (np.arange(n) + 0.5), mean, counts


def random_frame(rng, shape, dtype):
    image = 1e4 + rng.poisson(50, shape)
    return image.astype(dtype)


@pytest.mark.parametrize("dtype", ["uint16", "uint32", "float32"])
@pytest.mark.parametrize("shape, center, bin_width, radial_range", [
    ((37, 61), (11.3, 40.7), 1.0, None),
    ((64, 96), (-20.2, 130.6), 2.5, None),            # centre off the frame
    ((64, 96), (30.0, 50.0), 0.7, (3.2, 41.0)),        # centre on a pixel, partial last bin
])
def test_profile_equals_numpy_bincount_exactly(dtype, shape, center, bin_width, radial_range):
    rng = np.random.default_rng(3)
    image = random_frame(rng, shape, dtype)
    mask = rng.random(shape) > 0.2
    if dtype == "float32":
        image[~mask & (rng.random(shape) > 0.5)] = np.nan
    image.setflags(write=False)
    mask.setflags(write=False)
    radius, mean = azimuthal_average(image, center, mask, bin_width=bin_width, radial_range=radial_range)
    ref_radius, ref_mean, _ = bincount_reference(image, center, mask, bin_width=bin_width, radial_range=radial_range)
    np.testing.assert_array_equal(radius, ref_radius)
    np.testing.assert_array_equal(mean, ref_mean)
    assert np.isfinite(mean).sum() > 10


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 40), cols=st.integers(1, 40), r0=st.floats(-50, 90), c0=st.floats(-50, 90),
       bin_width=st.floats(0.3, 7.0), seed=st.integers(0, 2**16))
def test_profile_equals_bincount_for_any_geometry(rows, cols, r0, c0, bin_width, seed):
    rng = np.random.default_rng(seed)
    image = rng.normal(1e6, 3.0, (rows, cols)).astype(np.float32)
    mask = rng.random((rows, cols)) > 0.3
    radius, mean = azimuthal_average(image, (r0, c0), mask, bin_width=bin_width)
    ref_radius, ref_mean, _ = bincount_reference(image, (r0, c0), mask, bin_width=bin_width)
    np.testing.assert_array_equal(radius, ref_radius)
    np.testing.assert_array_equal(mean, ref_mean)


def test_sectors_match_a_brute_force_loop():
    rng = np.random.default_rng(8)
    image = rng.poisson(100, (23, 31)).astype(np.uint16)
    mask = rng.random(image.shape) > 0.1
    center, width, sectors, (lo, hi) = (9.37, 14.81), 2.0, 3, (300.0, 480.0)   # wraps through 0 degrees
    radius, mean = azimuthal_average(image, center, mask, bin_width=width, sectors=sectors, azimuth_range=(lo, hi))
    sums = np.zeros((sectors, radius.size))
    counts = np.zeros((sectors, radius.size))
    for r in range(image.shape[0]):
        for c in range(image.shape[1]):
            phi = math.degrees(math.atan2(r - center[0], c - center[1])) % 360.0
            offset = (phi - lo) % 360.0
            if mask[r, c] and offset < hi - lo:
                k = int(math.hypot(r - center[0], c - center[1]) // width)
                sums[int(offset // ((hi - lo) / sectors)), k] += image[r, c]
                counts[int(offset // ((hi - lo) / sectors)), k] += 1
    assert mean.shape == (sectors, radius.size)
    np.testing.assert_array_equal(np.isnan(mean), counts == 0)
    np.testing.assert_allclose(mean[counts > 0], (sums / np.maximum(counts, 1))[counts > 0], rtol=1e-12)


def test_full_circle_sectors_add_up_to_the_plain_average():
    rng = np.random.default_rng(2)
    image = rng.poisson(30, (64, 96)).astype(np.uint32)
    rmap1 = RadialMap(image.shape, (20.4, 70.1))
    rmap4 = RadialMap(image.shape, (20.4, 70.1), sectors=4)
    s1, n1 = rmap1.sums(image)
    s4, n4 = rmap4.sums(image)
    np.testing.assert_array_equal(s4.sum(axis=0), s1)
    np.testing.assert_array_equal(n4.sum(axis=0), n1)
    assert (n4 > 0).all(axis=1).sum() < 4  # the sectors really split the pixels
    assert s4.shape == (4, rmap1.n_bins)


def test_masked_nan_never_poisons_a_bin_but_a_valid_nan_does():
    rng = np.random.default_rng(4)
    image = rng.normal(100.0, 5.0, (37, 61)).astype(np.float32)
    mask = np.ones(image.shape, bool)
    mask[20:24, 30:40] = False
    image[20:24, 30:40] = np.nan
    image[0, 0] = np.inf
    mask[0, 0] = False
    _, mean = azimuthal_average(image, (12.2, 25.5), mask)
    assert np.isfinite(mean).all()
    clean = np.where(mask, image, 0).astype(np.float32)
    np.testing.assert_array_equal(mean, azimuthal_average(clean, (12.2, 25.5), mask)[1])
    image[30, 40] = np.nan  # valid pixel: propagates to its own bin only
    _, poisoned = azimuthal_average(image, (12.2, 25.5), mask)
    k = int(math.hypot(30 - 12.2, 40 - 25.5))
    assert np.isnan(poisoned[k]) and np.isfinite(np.delete(poisoned, k)).all()


def test_bins_without_valid_pixels_are_nan():
    image = np.ones((40, 50), np.uint16)
    mask = np.ones(image.shape, bool)
    rr, cc = np.indices(image.shape)
    mask[(np.hypot(rr - 20, cc - 25) >= 5) & (np.hypot(rr - 20, cc - 25) < 8)] = False
    radius, mean = azimuthal_average(image, (20, 25), mask, radial_range=(0, 100))
    assert np.isnan(mean[5:8]).all() and np.isnan(mean[33:]).all()   # masked annulus, beyond the corners
    assert (mean[:5] == 1).all() and (mean[8:32] == 1).all()


def test_centre_is_row_col_while_scikit_ued_takes_x_y():
    skued = pytest.importorskip("skued")
    rng = np.random.default_rng(6)
    image = rng.poisson(200, (48, 80)).astype(np.float64)
    center = (17, 52)  # skued rounds radii: integer centres keep pixels off bin edges
    radius, mean = azimuthal_average(image, center, radial_range=(-0.5, 40.5))
    sk_radius, sk_mean = skued.azimuthal_average(image, center[::-1], trim=False)
    np.testing.assert_array_equal(radius, np.arange(41.0))
    np.testing.assert_allclose(mean, sk_mean[:41], rtol=1e-12)


def test_one_shot_average_reuses_its_map_while_centre_options_and_mask_are_equal(monkeypatch):
    built = []

    class Counted(RadialMap):
        def __init__(self, *args, **kwargs):
            built.append(args[1])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(azimuthal_module, "RadialMap", Counted)
    rng = np.random.default_rng(16)
    image, mask = rng.poisson(50, (40, 60)).astype(np.float32), rng.random((40, 60)) > 0.1
    first = azimuthal_average(image, (20.5, 31.0), mask)
    again = azimuthal_average(image + 1, np.array([20.5, 31.0]), mask.copy())
    np.testing.assert_array_equal(again[1], RadialMap(image.shape, (20.5, 31.0), mask).average(image + 1))
    np.testing.assert_array_equal(first[0], again[0])
    assert len(built) == 1  # the second call reused the first map
    mask[0, 0] = not mask[0, 0]  # changed in place: built again
    azimuthal_average(image, (20.5, 31.0), mask)
    azimuthal_average(image, (20.5, 31.0), mask, bin_width=2.0)
    assert len(built) == 3


def test_errors_name_the_values():
    image = np.ones((5, 6))
    with pytest.raises(ValueError, match=r"mask shape \(5, 5\) != image shape \(5, 6\)"):
        azimuthal_average(image, (2, 3), np.ones((5, 5), bool))
    with pytest.raises(ValueError, match="bin_width must be > 0 px, got -1"):
        azimuthal_average(image, (2, 3), bin_width=-1)
    with pytest.raises(ValueError, match=r"radial_range .* got \(4, 2\)"):
        azimuthal_average(image, (2, 3), radial_range=(4, 2))
    with pytest.raises(ValueError, match=r"image shape \(6, 5\) != map shape \(5, 6\)"):
        RadialMap((5, 6), (2, 3)).sums(np.ones((6, 5)))
    with pytest.raises(ValueError, match=r"center must be two finite numbers .*nan"):
        RadialMap((5, 6), (2, float("nan")))
    with pytest.raises(TypeError, match="integers or floats, got dtype complex128"):
        azimuthal_average(image.astype(complex), (2, 3))


# ---------------------------------------------------------------- geometry and q

def test_electron_wavelength_is_relativistic():
    assert electron_wavelength(200.0) == pytest.approx(0.025079, abs=2e-6)   # 2.5079 pm
    assert electron_wavelength(300.0) == pytest.approx(0.019687, abs=2e-6)
    assert electron_wavelength(0.1) == pytest.approx(12.264 / math.sqrt(100), rel=1e-3)  # non-relativistic limit


def test_q_of_the_simulated_ring_radii_is_two_pi_over_d():
    sim = PowderSimulator(shape=(128, 160))
    q = sim.geometry.q_at_radius(sim.ring_radii)
    np.testing.assert_allclose(q, 2 * np.pi / np.array(sim.d_spacings), rtol=1e-12)


def test_operator_profiles_running_mean_and_q_axis():
    sim = PowderSimulator(shape=(96, 128), n_frames=5, seed=1)
    series = sim.series_start()
    op = Azimuthal(AzimuthalParams(voltage_kv=200.0))
    op.start(series)
    frames = [sim.frame(i) for i in range(sim.n_frames)]
    for i, data in enumerate(frames):
        data.setflags(write=False)
        profile = op.process(Frame(1, i, data, mask=series.mask)).results["azimuthal"]["profile"]
        ref = bincount_reference(data, sim.center_truth, series.mask)[1]
        assert profile.dtype == np.float32 and profile.shape == op.arrays["profile"][0]
        np.testing.assert_array_equal(profile, ref.astype(np.float32))
    snap = op.snapshot()
    assert {k: (v.shape, v.dtype.str[1:]) for k, v in snap.items()} == op.reductions
    stack = np.stack(frames)
    _, ref_mean, ref_count = bincount_reference(stack.sum(0, dtype=np.float64), sim.center_truth, series.mask)
    np.testing.assert_allclose(snap["mean"], ref_mean / sim.n_frames, rtol=1e-14)
    np.testing.assert_array_equal(snap["count"], ref_count * sim.n_frames)
    for d in sim.d_spacings:  # the profile peaks at q = 2 pi / d
        near = np.abs(snap["q"] - 2 * np.pi / d) < 0.1
        peak = snap["q"][near][np.nanargmax(snap["mean"][near])]
        assert abs(peak - 2 * np.pi / d) <= np.diff(snap["q"]).max()


def test_operator_state_merges_to_the_one_worker_answer():
    sim = PowderSimulator(shape=(64, 96), n_frames=7, seed=2, dtype="uint32")
    series = sim.series_start()
    one, a, b = (Azimuthal(AzimuthalParams(bin_width=1.5, sectors=2)) for _ in range(3))
    for op in (one, a, b):
        op.start(series)
    for i in range(sim.n_frames):
        frame = sim.frame(i)
        one.process(Frame(1, i, frame, mask=series.mask))
        (a if i % 3 else b).process(Frame(1, i, frame, mask=series.mask))
    merged = Azimuthal(AzimuthalParams(bin_width=1.5, sectors=2))
    merged.start(series)
    merged.merge(a.state())
    merged.merge(b.state())
    for key, value in one.finish().items():
        np.testing.assert_array_equal(merged.finish()[key], value)
    assert "q" in one.reductions and one.arrays["profile"][0] == (2, one.map.n_bins)


def test_operator_uses_the_frame_mask_not_the_series_mask():
    series_mask = np.ones((30, 40), bool)
    series_mask[:, :5] = False
    op = Azimuthal(AzimuthalParams(center=(15.0, 20.0)))
    op.start(SeriesStart(1, (30, 40), "float32", mask=series_mask))
    data = np.arange(1200, dtype=np.float32).reshape(30, 40)
    moved = np.roll(series_mask, 3, axis=1)   # e.g. after an alignment shift
    profile = op.process(Frame(1, 0, data, mask=moved)).results["azimuthal"]["profile"]
    np.testing.assert_array_equal(profile, bincount_reference(data, (15.0, 20.0), moved)[1].astype(np.float32))
    assert not np.array_equal(profile, op.process(Frame(1, 1, data, mask=series_mask)).results["azimuthal"]["profile"],
                              equal_nan=True)


def test_operator_needs_a_centre_and_consistent_params():
    op = Azimuthal()
    with pytest.raises(ValueError, match="no centre"):
        op.start(SeriesStart(1, (8, 8), "uint16"))
    with pytest.raises(ValueError, match="voltage_kv or wavelength, not both"):
        AzimuthalParams(voltage_kv=200.0, wavelength=0.025)
    with pytest.raises(ValueError, match="not square"):
        op.start(SeriesStart(1, (8, 8), "uint16", geometry=Geometry((4, 4), (75e-6, 55e-6), 0.2, 1.0)))
    op.start(SeriesStart(1, (8, 8), "uint16", geometry=Geometry(beam_center=(4, 4))))
    assert "q" not in op.reductions and "radius" in op.reductions


# ---------------------------------------------------------------- powder centre

@pytest.mark.parametrize("kwargs", [
    {},                                                                          # off-centre, beam stop masked
    {"shape": (200, 331), "center": (80.71, 190.23), "dtype": "uint32"},
    {"beamstop": False, "central_beam": 1e5, "seed": 3},                         # saturated bright central beam
    {"shape": (180, 150), "center": (70.52, 64.48), "ring_counts": 40.0, "background": 5.0, "seed": 5},
    {"dtype": "float32", "ring_width": 2.5, "seed": 7},                          # gap is inf under the mask
    {"center": (30.2, 250.7), "seed": 4},                                          # near an edge
])
def test_powder_center_finds_the_simulated_centre_within_a_tenth_of_a_pixel(kwargs):
    sim = PowderSimulator(**kwargs)
    image, mask = sim.frame(0), sim.detector_mask
    image.setflags(write=False)
    mask.setflags(write=False)
    row, col = powder_center(image, mask)
    assert math.hypot(row - sim.center_truth[0], col - sim.center_truth[1]) < 0.1


def test_powder_center_refines_a_guess_and_rejects_empty_masks():
    sim = PowderSimulator(shape=(160, 200), center=(77.3, 91.8), seed=9)
    row, col = powder_center(sim.frame(0), sim.detector_mask, guess=(78.5, 90.9))
    assert math.hypot(row - 77.3, col - 91.8) < 0.1
    with pytest.raises(ValueError, match="at least 64 valid pixels, got 0"):
        powder_center(sim.frame(0), np.zeros(sim.shape, bool))
    with pytest.raises(ValueError, match=r"too few valid pixels around the centre \(-40.00, 90.00\)"):
        powder_center(sim.frame(0), sim.detector_mask, guess=(-40.0, 90.0))


def test_powder_center_operator_uses_the_merged_running_mean():
    sim = PowderSimulator(shape=(128, 160), n_frames=4, ring_counts=20.0, background=3.0, seed=11)
    series = sim.series_start()
    ops = [PowderCenter(PowderCenterParams(snapshot_after=3)) for _ in range(3)]
    for op in ops:
        op.start(series)
    for i in range(sim.n_frames):
        ops[i % 2].process(Frame(1, i, sim.frame(i), mask=series.mask))
    assert np.isnan(ops[0].snapshot()["center"]).all()   # 2 frames < snapshot_after
    ops[2].merge(ops[0].state())
    ops[2].merge(ops[1].state())
    center = ops[2].snapshot()["center"]
    assert center.shape == ops[2].reductions["center"][0]
    assert math.hypot(*(center - sim.center_truth)) < 0.1
    np.testing.assert_array_equal(ops[2].finish()["center"], center)


def test_simulated_rings_sit_at_the_bragg_radii_and_frames_are_reproducible():
    kwargs = {"shape": (200, 240), "d_spacings": (2.3544, 2.0390, 1.4418), "ring_counts": 100.0, "ring_width": 1.0,
              "beamstop": False, "gap": False, "background": 0.0, "seed": 3}
    sim = PowderSimulator(**kwargs)
    radius, mean = azimuthal_average(sim.expected(), sim.center_truth, bin_width=0.25)
    for r in sim.ring_radii:
        near = np.abs(radius - r) < 2
        assert abs(radius[near][np.argmax(mean[near])] - r) <= 0.25
    np.testing.assert_array_equal(sim.frame(2), PowderSimulator(**kwargs).frame(2))
    assert not np.array_equal(sim.frame(2), sim.frame(3))


def test_powder_center_operator_reports_nan_for_a_fully_masked_series(caplog):
    op = PowderCenter()
    op.start(SeriesStart(1, (32, 40), "uint16", mask=np.zeros((32, 40), bool)))
    assert np.isnan(op.finish()["center"]).all()    # no frame yet
    op.process(Frame(1, 0, np.ones((32, 40), np.uint16), mask=np.zeros((32, 40), bool)))
    assert np.isnan(op.finish()["center"]).all() and "at least 64 valid pixels" in caplog.text
