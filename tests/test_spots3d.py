"""The spots operator: per-frame rows in 2-D mode, 6-connected spots across frames in 3-D mode
(against scipy.ndimage's 3-D labelling and the rotation simulator's ground truth)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from livediff.config import parse
from livediff.errors import ConfigError
from livediff.model import Frame
from livediff.operators import REGISTRY
from livediff.operators.spots import ROW_COLUMNS, Spots, SpotsParams, dispersion_mask, find_spots
from livediff.operators.spots.link import SpotLinker
from simulators import DiffractionSimulator
from simulators.rotation import RotationSimulator


def run(sim, params, order=None, *, workers=2):
    """Process frames on ``workers`` operator instances (round robin), collect them on
    another in ``order``; return every emitted row, the per-frame results and the collector."""
    start = sim.series_start()
    instances = [Spots(params) for _ in range(workers + 1)]
    for op in instances:
        op.start(start)
    processed = {i: instances[i % workers].process(Frame(start.series, i, sim.frame(i), mask=start.mask))
                 for i in range(sim.n_frames)}
    collector = instances[-1]
    results = [collector.collect(processed[i]).results["spots"] for i in (order or range(sim.n_frames))]
    return [r["rows"] for r in results], results, collector


def concat(rows):
    return {k: np.concatenate([r[k] for r in rows]) for k in ROW_COLUMNS}


def reference_3d(sim, mask, min_size=3):
    """Strong pixels of every frame labelled in 3-D by scipy (6-connectivity); per spot, sorted by
    position: centroid (z, y, x), centroid variances (z, y, x), intensity, pixel count, bounding box."""
    stack = np.stack([sim.frame(i) for i in range(sim.n_frames)]).astype(np.float64)
    strong = np.stack([dispersion_mask(f, mask) for f in stack])
    labels, _ = ndimage.label(strong)
    spots = []
    for i, box in enumerate(ndimage.find_objects(labels)):
        pixels = np.nonzero(labels == i + 1)
        if pixels[0].size < min_size:
            continue
        w = stack[pixels]
        total, squares = w.sum(), (w ** 2).sum()
        centroid = [(w * p).sum() / total for p in pixels]
        variance = [1 / 12 + ((w * (p - c) ** 2).sum() / (total ** 2 - squares) if p.size > 1 else 0.0)
                    for p, c in zip(pixels, centroid)]
        spots.append((*centroid, *variance, total, pixels[0].size, *(x for s in box for x in (s.start, s.stop))))
    return np.array(sorted(spots)).reshape(-1, 14)


@pytest.mark.parametrize("shuffle", [False, True])
def test_3d_spots_equal_scipy_3d_labelling_each_reported_once(shuffle):
    sim = RotationSimulator(n_frames=16, seed=3, n_spots=25)
    order = list(range(sim.n_frames))
    if shuffle:  # arrival order scrambled within a few frames
        rng = np.random.default_rng(1)
        for i in range(0, sim.n_frames - 3, 4):
            order[i:i + 4] = rng.permutation(order[i:i + 4])
    rows, _, collector = run(sim, SpotsParams(mode="3d", max_separation=100.0), order)
    got = concat(rows)
    ours = np.array(sorted(zip(got["z"], got["y"], got["x"], got["var_z"], got["var_y"], got["var_x"],
                               got["intensity"], got["npix"], got["z0"], got["z1"], got["y0"], got["y1"],
                               got["x0"], got["x1"]))).reshape(-1, 14)
    expected = reference_3d(sim, sim.detector_mask)
    assert len(ours) == len(expected) >= 20  # each spot once
    np.testing.assert_allclose(ours[:, :6], expected[:, :6], rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(ours[:, 6:8], expected[:, 6:8])
    np.testing.assert_array_equal(ours[:, 8:], expected[:, 8:])
    assert collector.finish()["rows"]["x"].size == 0  # the last frame was known: nothing left open
    truth = sim.spots()
    inside = (truth["z"] > 0.5) & (truth["z"] < sim.n_frames - 1.5)  # recorded in full
    distance = np.hypot(np.hypot(truth["z"][inside, None] - got["z"], truth["row"][inside, None] - got["y"]),
                        truth["col"][inside, None] - got["x"])
    assert np.all(distance.min(axis=1) < 0.2)


def test_a_spot_over_three_frames_is_reported_once_with_its_z_centroid():
    sim = RotationSimulator(n_frames=20, seed=5, n_spots=10, z_sigma=0.45, extra=((40.3, 30.6, 10.1, 40000.0),))
    rows, results, _ = run(sim, SpotsParams(mode="3d"))
    got = concat(rows)
    near = np.flatnonzero(np.hypot(got["y"] - 40.3, got["x"] - 30.6) < 2)
    assert near.size == 1
    j = near[0]
    assert (got["z0"][j], got["z1"][j]) == (9, 12)  # frames 9, 10 and 11
    assert got["z"][j] == pytest.approx(10.1, abs=0.05)
    assert got["var_z"][j] > 1 / 12
    emitted_with = [i for i, r in enumerate(rows) if np.any(np.hypot(r["y"] - 40.3, r["x"] - 30.6) < 2)]
    assert emitted_with == [12]  # the first frame it could no longer grow into
    assert [results[i]["n_spots"] >= 1 for i in (9, 10, 11)] == [True, True, True]


def test_a_missing_frame_splits_spots_and_a_late_frame_is_ignored():
    sim = RotationSimulator(n_frames=12, seed=6, n_spots=15, z_sigma=1.0)
    params = SpotsParams(mode="3d", max_pending=2, max_separation=100.0)
    rows, _, collector = run(sim, params, [i for i in range(sim.n_frames) if i != 4])
    got = concat(rows + [collector.finish()["rows"]])
    full = concat(run(sim, params)[0])
    assert np.any((full["z0"] <= 4) & (full["z1"] > 5))  # spots that a gap at frame 4 must split
    assert not np.any((got["z0"] <= 4) & (got["z1"] > 4))
    for part in (lambda t: t["z1"] <= 3, lambda t: t["z0"] >= 6):  # far from the gap nothing changes
        a, b = part(got), part(full)
        assert a.sum() > 0
        np.testing.assert_array_equal(np.sort(got["intensity"][a]), np.sort(full["intensity"][b]))
    late = Spots(params)
    late.start(sim.series_start())
    frame = collector.collect(late.process(Frame(1, 4, sim.frame(4), mask=sim.detector_mask)))
    assert frame.results["spots"]["rows"]["x"].size == 0


def test_unknown_series_length_leaves_the_open_spots_to_finish():
    sim = RotationSimulator(n_frames=8, seed=7, n_spots=12)
    start = dataclasses.replace(sim.series_start(), n_frames=None)
    op = Spots(SpotsParams(mode="3d", max_separation=100.0))
    op.start(start)
    rows = [op.collect(op.process(Frame(1, i, sim.frame(i), mask=start.mask))).results["spots"]["rows"]
            for i in range(sim.n_frames)]
    tail = op.finish()["rows"]
    assert tail["x"].size > 0 and np.all(tail["z1"] == sim.n_frames)
    assert sum(r["x"].size for r in rows) + tail["x"].size == len(reference_3d(sim, start.mask))


def test_linker_waits_for_predecessors_and_gives_them_up_after_max_pending():
    one = (np.array([[5, 2, 4]], np.int32), np.zeros(1, np.int64), np.zeros((1, 19)))
    linker = SpotLinker(max_pending=2)
    assert linker.push(1, one).shape == (0, 19)
    assert linker.push(2, one).shape == (0, 19)
    assert linker.n_open == 0  # still waiting for frame 0
    linker.push(3, one)  # a third frame waits: frame 0 is given up
    assert linker.n_open == 1
    assert linker.push(0, one).shape == (0, 19) and linker.late == 1
    assert linker.flush().shape == (1, 19)


def test_2d_mode_rows_are_the_frames_spots_and_columns_are_declared():
    sim = DiffractionSimulator(shape=(96, 128), n_frames=4, seed=2, n_spots=12)
    params = SpotsParams(mode="2d", threads=2)
    rows, results, _ = run(sim, params)
    start = sim.series_start()
    op = Spots(params)
    op.start(start)
    assert set(op.rows) == set(ROW_COLUMNS) | {"d", "inv_d2"}  # the simulator's header has the geometry
    for i, (r, res) in enumerate(zip(rows, results)):
        expected = find_spots(sim.frame(i), start.mask, z=i)
        assert set(op.columns) <= set(res) and res["n_spots"] == expected["x"].size == r["x"].size > 0
        np.testing.assert_array_equal(r["x"], expected["x"])
        np.testing.assert_array_equal(r["z0"], expected["bbox"][:, 4])
        np.testing.assert_array_equal(r["npix"], expected["npix"])
        assert res["spots_rejected"] == 0 and 0 < res["strong_fraction"] < 0.05


def test_operator_rejects_frames_with_too_many_strong_pixels():
    sim = DiffractionSimulator(shape=(96, 128), n_frames=1, seed=2, n_spots=12)
    for mode in ("2d", "3d"):
        _, results, _ = run(sim, SpotsParams(mode=mode, max_strong_fraction=0.001))
        assert results[0]["spots_rejected"] == 1 and results[0]["n_spots"] == 0
        assert results[0]["rows"]["x"].size == 0


@pytest.mark.skipif("spots" not in REGISTRY, reason="the spots operator is not registered yet")
def test_config_checks_spots_parameters():
    params = parse({"operators": {"spots": {"mode": "3d", "kernel_size": [2, 4], "gain": 1.5}}}).operators[0].params
    assert params.mode == "3d" and params.kernel_size == (2, 4) and params.gain == 1.5
    with pytest.raises(ConfigError, match=r"operators.spots.sigma_strong: must be >= 0, got -3.0"):
        parse({"operators": {"spots": {"sigma_strong": -3.0}}})
    with pytest.raises(ConfigError, match="min_spot_size 9 > max_spot_size 5"):
        parse({"operators": {"spots": {"min_spot_size": 9, "max_spot_size": 5}}})


def test_gain_map_of_the_wrong_shape_is_refused_at_start():
    sim = DiffractionSimulator(shape=(96, 128), n_frames=1)
    op = Spots(SpotsParams(gain_map=np.ones((4, 4))))
    with pytest.raises(ValueError, match=r"gain_map: shape \(4, 4\) != frame shape \(96, 128\)"):
        op.start(sim.series_start())
