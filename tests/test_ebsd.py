"""EBSD: each correction, the neighbour averaging and the quality figures against kikuchipy on the same
patterns (or a numpy reference where kikuchipy defines nothing), incremental = whole scan, and the maps."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from harness import run_series
from scipy import ndimage

from livediff.config import parse
from livediff.model import Frame, Scan
from livediff.operators.dynamic_background import dynamic_background, remove_background
from livediff.operators.ebsd import (Neighbourhood, average_neighbour_patterns, image_quality,
                                     neighbour_dot_products, rescale, unit_pattern, window)
from simulators.ebsd import EbsdSimulator

kp = pytest.importorskip("kikuchipy")
warnings.filterwarnings("ignore", module="hyperspy")  # its progress bars and deprecations


@pytest.fixture(scope="module")
def patterns() -> np.ndarray:
    """A small scan of simulated uint8 patterns, non-square (45 x 52)."""
    return EbsdSimulator(scan=(5, 7), shape=(45, 52), seed=3).patterns()


def _signal(data: np.ndarray):
    import hyperspy.api as hs

    hs.preferences.General.show_progressbar = False
    return kp.signals.EBSD(data.copy())


def _stretched(stack: np.ndarray, dtype: str = "uint8") -> np.ndarray:
    return np.stack([rescale(p, dtype=dtype) for p in stack.reshape(-1, *stack.shape[-2:])]).reshape(stack.shape)


def _agree_to_a_grey_level(ours: np.ndarray, theirs: np.ndarray) -> None:
    """kikuchipy stretches with fastmath (a reciprocal) and truncates: a pixel on a level's edge may fall 1 below
    (its brightest pixel then reads 254, not 255)."""
    diff = np.abs(ours.astype(np.int64) - theirs.astype(np.int64))
    assert diff.max() <= 1 and np.mean(diff > 0) < 0.02, (diff.max(), np.mean(diff > 0))


def test_rescale_equals_kikuchipys_min_max_and_percentile_stretch(patterns):
    from kikuchipy.pattern import rescale_intensity

    p = patterns[1, 2].astype(np.float32) * 1.3 - 40
    _agree_to_a_grey_level(rescale(p, dtype="uint8"), rescale_intensity(p, dtype_out=np.uint8))
    _agree_to_a_grey_level(rescale(p, dtype="uint8", percentiles=(2, 98)),
                           rescale_intensity(p, dtype_out=np.uint8, percentiles=(2, 98)))
    np.testing.assert_allclose(rescale(p, dtype="float32"), rescale_intensity(p, dtype_out=np.float32), atol=1e-6)
    mask = np.ones(p.shape, bool)
    mask[:3] = False
    p[:3] = 1e6  # masked pixels neither set the range nor survive
    out = rescale(p, mask, dtype="uint16")
    assert out[3:].max() == 65535 and out[3:].min() == 0 and not out[:3].any()


@pytest.mark.parametrize("mode", ["subtract", "divide"])
def test_static_background_equals_kikuchipy(patterns, mode):
    background = patterns.mean(axis=(0, 1)).astype(np.uint8)
    s = _signal(patterns)
    s.remove_static_background(operation=mode, static_bg=background)
    ours = np.stack([remove_background(p, background, mode=mode) for p in patterns.reshape(-1, *patterns.shape[2:])])
    _agree_to_a_grey_level(_stretched(ours).reshape(patterns.shape), s.data)


@pytest.mark.parametrize("mode", ["subtract", "divide"])
def test_dynamic_background_with_kikuchipys_window_equals_kikuchipy(patterns, mode):
    s = _signal(patterns)
    s.remove_dynamic_background(operation=mode)
    sigma = patterns.shape[-1] / 8
    ours = np.stack([dynamic_background(p, sigma, mode=mode, window="kikuchipy")
                     for p in patterns.reshape(-1, *patterns.shape[2:])])
    _agree_to_a_grey_level(_stretched(ours).reshape(patterns.shape), s.data)
    from kikuchipy.pattern import get_dynamic_background

    p = patterns[2, 3].astype(np.float32)  # the float background itself, both FFT and direct paths
    np.testing.assert_allclose(p - dynamic_background(p, sigma, mode="subtract", window="kikuchipy", method="fft"),
                               get_dynamic_background(p), rtol=2e-5, atol=2e-4)
    np.testing.assert_allclose(p / dynamic_background(p, sigma, window="kikuchipy", method="direct"),
                               get_dynamic_background(p), rtol=2e-5)


def test_relative_background_is_raw_minus_background_over_background():
    """kikuchipy has no relative mode: numpy is the reference, (x - B) / B, with the window as kikuchipy's."""
    rng = np.random.default_rng(1)
    p = rng.poisson(80, (40, 33)).astype(np.uint16)
    sigma = 33 / 8
    taps = int(4 * sigma)
    w = np.exp(-0.5 * ((np.arange(taps) - (taps - 1) / 2) / sigma) ** 2)
    w /= w.sum()
    b = ndimage.correlate1d(ndimage.correlate1d(p.astype(float), w, 0, mode="nearest"), w, 1, mode="nearest")
    np.testing.assert_allclose(dynamic_background(p, sigma, mode="relative", window="kikuchipy"), (p - b) / b,
                               rtol=1e-5, atol=1e-6)
    bg = rng.uniform(50, 90, p.shape)
    np.testing.assert_allclose(remove_background(p, bg, mode="relative"), (p - bg) / bg, rtol=1e-6)


@pytest.mark.parametrize(("kwargs", "ours"), [
    ({}, window()),
    ({"window": "circular", "window_shape": (5, 5)}, window(2)),
    ({"window": "gaussian", "window_shape": (3, 3), "std": 1.0}, window(1, shape="rectangular", std=1.0)),
])
def test_neighbour_averaging_equals_kikuchipy(patterns, kwargs, ours):
    s = _signal(patterns)
    s.average_neighbour_patterns(**kwargs)
    _agree_to_a_grey_level(_stretched(average_neighbour_patterns(patterns, ours)), s.data)


def test_averaging_with_holes_divides_by_the_weight_that_exists(patterns):
    """kikuchipy has no holes: a missing pattern counts as one outside the scan (numpy reference)."""
    present = np.ones(patterns.shape[:2], bool)
    present[[0, 2, 4], [0, 3, 6]] = False
    w = window(1, shape="rectangular", std=0.8)
    zeroed = np.where(present[..., None, None], patterns, 0).astype(np.float64)
    num = ndimage.correlate(zeroed, w[:, :, None, None], mode="constant")
    den = ndimage.correlate(present.astype(float), w, mode="constant")
    expected = np.where(present[..., None, None], num / den[..., None, None], np.nan)
    np.testing.assert_allclose(average_neighbour_patterns(patterns, w, present), expected, rtol=1e-6, equal_nan=True)


@pytest.mark.parametrize(("order", "flyback", "radius"), [("raster", 0, 1), ("serpentine", 2, 1),
                                                          ("serpentine", 0, 2), ("raster", 1, 3)])
def test_incremental_averaging_equals_the_whole_scan_at_edges_and_with_holes(order, flyback, radius):
    sim = EbsdSimulator(scan=(6, 5), shape=(20, 24), order=order, flyback=flyback, seed=4)
    scan, stack = sim.grid, sim.patterns()
    present = np.random.default_rng(radius).random(sim.scan) > 0.2
    present[0, 0] = present[-1, -1] = False
    w = window(radius, std=1.5)
    for figure, data, whole in (("average", stack, average_neighbour_patterns),
                                ("dot", np.stack([[unit_pattern(p) for p in row] for row in stack]),
                                 neighbour_dot_products)):
        hood = Neighbourhood(scan, sim.shape, w, figure=figure)
        got = np.full(stack.shape if figure == "average" else sim.scan, np.nan, np.float32 if figure == "average"
                      else np.float64)
        seen = []
        for i in range(scan.n_frames):
            pos = scan.position(i)
            if pos is not None and present[pos]:
                for q, value in hood.add(pos, data[pos]):
                    got[q] = value
                    seen.append(q)
            if pos is not None and pos[0] >= radius + 1:  # a line and `radius` patterns behind, never more
                assert all(q[0] >= pos[0] - radius - 1 for q in hood._order[hood._next:])
        for q, value in hood.flush():
            got[q] = value
            seen.append(q)
        np.testing.assert_array_equal(got, whole(data, w, present))
        assert len(seen) == len(set(seen)) == present.sum() and hood.late == 0
        assert hood.slots == min(sim.scan[0], 2 * radius + 2)


def test_image_quality_equals_kikuchipy(patterns):
    s = _signal(patterns)
    expected = s.get_image_quality()
    ours = np.array([[image_quality(p) for p in row] for row in patterns])
    np.testing.assert_allclose(ours, expected, rtol=1e-4)
    flat = np.full((8, 9), 7.0)
    assert np.isnan(image_quality(flat))
    p = patterns[0, 0].astype(np.float32)
    mask = np.ones(p.shape, bool)
    mask[5:9, 10:20] = False
    filled = p.copy()
    filled[~mask] = p[mask].mean()  # masked pixels count at the mean of the valid ones
    assert image_quality(np.where(mask, p, 1e4), mask) == pytest.approx(image_quality(filled), rel=1e-6)


def test_average_dot_product_equals_kikuchipy(patterns):
    s = _signal(patterns.astype(np.float32))
    expected = s.get_average_neighbour_dot_product_map()
    units = np.stack([[unit_pattern(p) for p in row] for row in patterns])
    np.testing.assert_allclose(neighbour_dot_products(units), expected, rtol=1e-5)
    u = unit_pattern(patterns[0, 0])
    assert np.sum(u.astype(float) ** 2) == pytest.approx(1.0, rel=1e-6) and abs(u.mean()) < 1e-7


def _chain(**static) -> dict:
    return {"static": {"kind": "ebsd_static", **static},
            "dynamic": {"kind": "dynamic_background", "window": "kikuchipy", "mode": "subtract"},
            "average": {"kind": "ebsd_average"},
            "quality": {"kind": "ebsd_quality"}}


def _run(sim: EbsdSimulator, chain: dict, workers: int, skip: set[int] = frozenset()):
    frames = [Frame(sim.series, i, sim.frame(i)) for i in range(sim.n_frames) if i not in skip]
    return run_series(parse({"operators": chain}).operators, sim.series_start(), frames, workers)


def test_running_static_background_is_the_mean_so_far_whatever_the_workers():
    sim = EbsdSimulator(scan=(6, 8), shape=(24, 30), flyback=1, seed=5)
    chain = {"static": {"kind": "ebsd_static", "min_patterns": 10, "update_every": 4}}
    specs = parse({"operators": chain}).operators
    from livediff.executors.offline import process_frames

    frames = [sim.frame(i) for i in range(sim.n_frames)]
    runs = [process_frames(specs, sim.series_start(), [Frame(1, i, f) for i, f in enumerate(frames)], workers=w)
            for w in (1, 3)]
    for (done, results), (other, _) in zip(runs, runs[1:]):
        for a, b in zip(done, other):
            np.testing.assert_array_equal(a.data, b.data)
    done, results = runs[0]
    counted = [f.astype(float) for i, f in enumerate(frames) if sim.grid.position(i) is not None]
    contributed = np.cumsum([sim.grid.position(i) is not None for i in range(len(frames))])
    for seq, frame in enumerate(done):
        e = max(0, (seq // 4 - 1) * 4)
        e = max((k for k in range(4, e + 1, 4) if contributed[k - 1] >= 10), default=0)
        n = int(contributed[e - 1]) if e else 0
        assert frame.results["static"]["n_background"] == n
        if n:
            np.testing.assert_allclose(frame.data, frames[seq] - np.mean(counted[:n], axis=0), rtol=1e-5, atol=1e-4)
        else:
            np.testing.assert_array_equal(frame.data, frames[seq].astype(np.float32))
    np.testing.assert_allclose(results["static"]["background"], np.mean(counted, axis=0), rtol=1e-6)


@pytest.mark.parametrize("workers", [1, 2])
def test_the_chains_maps_equal_the_whole_scan_figures_with_holes(tmp_path, workers):
    sim = EbsdSimulator(scan=(7, 9), shape=(30, 36), order="serpentine", seed=6)
    np.save(tmp_path / "background.npy", sim.background())
    missing = {3, 20, 40, 62}
    sink = _run(sim, _chain(background=str(tmp_path / "background.npy"), mode="divide"), workers, missing)
    corrected = np.zeros((*sim.scan, *sim.shape), np.float32)
    present = np.zeros(sim.scan, bool)
    for i in range(sim.n_frames):
        if i not in missing:
            pos = sim.grid.position(i)
            present[pos] = True
            static = remove_background(sim.frame(i), sim.background().astype(np.float32), mode="divide")
            corrected[pos] = dynamic_background(static, 36 / 8, mode="subtract", window="kikuchipy")
    maps = sink.final.maps
    iq = np.full(sim.scan, np.nan)
    averaged = average_neighbour_patterns(corrected, present=present)
    iq_avg = np.full(sim.scan, np.nan)
    for y, x in zip(*np.nonzero(present)):
        iq[y, x] = image_quality(corrected[y, x])
        iq_avg[y, x] = image_quality(averaged[y, x])
    np.testing.assert_array_equal(maps["quality"]["iq"], iq)
    np.testing.assert_array_equal(maps["average"]["iq"], iq_avg)
    units = np.stack([[unit_pattern(p) for p in row] for row in corrected])
    np.testing.assert_allclose(maps["quality"]["adp"], neighbour_dot_products(units, present=present), rtol=1e-12,
                               equal_nan=True)
    assert sink.summary["map_holes"] == len(missing) and np.isnan(maps["average"]["iq"]).sum() == len(missing)


def test_the_quality_maps_show_the_grain_boundaries():
    """The contrast figure, with configs/ebsd.toml's chain: at the boundaries (patterns mixing two grains by a
    eighth or more) IQ is 15 % below the median of its grain's interior (ADP 20 %, the averaged pattern's IQ
    10 %), and a boundary position ranks below an interior one 9 times out of 10 or more (AUC)."""
    import tomllib

    sim = EbsdSimulator(scan=(16, 20), shape=(60, 60), grains=8, seed=2)
    with open("configs/ebsd.toml", "rb") as f:
        sink = _run(sim, tomllib.load(f)["operators"], 2)
    corrected = np.zeros(sim.scan, bool)  # the first patterns pass before the running mean is applied
    for index, row in sink.rows:
        corrected[sim.grid.position(index)] = row["static.n_background"] > 0
    assert corrected.mean() > 0.6
    grain, mixing = sim.grain_map(), sim.mixing()
    interior, boundary = corrected & (mixing == 0), corrected & (mixing >= 0.125)
    for label, name, drop, least_auc in (("quality", "iq", 0.15, 0.9), ("quality", "adp", 0.20, 0.95),
                                         ("average", "iq", 0.10, 0.9)):
        m = sink.final.maps[label][name]
        relative = m / np.array([np.median(m[interior & (grain == g)]) for g in range(sim.grains)])[grain]
        auc = np.mean(relative[boundary][:, None] < relative[interior][None, :])
        found = 1 - relative[boundary].mean()
        assert found > drop and auc > least_auc, (label, name, found, auc)


def test_operators_check_their_parameters():
    from livediff.errors import ConfigError

    with pytest.raises(ConfigError, match="percentiles must be"):
        parse({"operators": {"rescale": {"percentiles": [90.0, 10.0]}}})
    with pytest.raises(ConfigError, match="radius: must be >= 1"):
        parse({"operators": {"ebsd_average": {"radius": 0}}})
    with pytest.raises(ValueError, match="radius must be an integer"):
        window(1.5)
    with pytest.raises(ValueError, match="present shape"):
        average_neighbour_patterns(np.zeros((2, 3, 4, 4)), present=np.ones((3, 2), bool))
    assert Scan((2, 2)).n_frames == 4
