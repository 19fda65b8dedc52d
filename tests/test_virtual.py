"""Virtual detectors, centre of mass and scan maps against plain numpy on the whole 4D array."""
from __future__ import annotations

import asyncio
import dataclasses

import h5py
import numpy as np
import pytest
from harness import Recorder, config, run_series, running

from livediff.config import parse
from livediff.errors import DecodeError
from livediff.model import Frame, Scan, SeriesStart
from livediff.operators.virtual import Detector, MaskSet, apply_masks, center_of_mass, detector_mask
from livediff.replay import replay
from livediff.sources.sender import stream_series
from simulators.scan import ScanSimulator


def _random_masks(rng, shape, n=4):
    masks = rng.random((n, *shape)) > 0.6
    weights = rng.uniform(-1, 2, shape) * (rng.random(shape) > 0.3)
    return masks, weights


@pytest.mark.parametrize("dtype", ["uint16", "uint32", "float32"])
def test_apply_masks_equals_a_float64_tensordot(dtype):
    rng = np.random.default_rng(1)
    shape = (37, 53)
    image = (rng.poisson(300, shape) + (3e9 if dtype == "uint32" else 0)).astype(dtype)
    masks, weights = _random_masks(rng, shape)
    valid = rng.random(shape) > 0.1
    both = np.concatenate([masks.astype(np.float64), weights[None]])
    expected = np.tensordot(both * valid, image.astype(np.float64), axes=([1, 2], [0, 1]))
    got = MaskSet(np.concatenate([masks, weights[None] != 0]), valid)(image)  # bool masks: exact sums
    np.testing.assert_array_equal(got[:-1], expected[:-1])
    np.testing.assert_allclose(MaskSet(both, valid)(image), expected, rtol=1e-12)
    np.testing.assert_allclose(apply_masks(image, both), np.tensordot(both, image.astype(np.float64), 2),
                               rtol=1e-12)


def test_center_of_mass_equals_numpy_and_uses_the_pixel_centre_origin():
    rng = np.random.default_rng(2)
    image = rng.poisson(50, (41, 29)).astype(np.float32)
    mask = rng.random(image.shape) > 0.2
    w = np.where(mask, image, 0).astype(np.float64)
    rows, cols = np.indices(image.shape)
    assert center_of_mass(image, mask) == pytest.approx(((w * rows).sum() / w.sum(), (w * cols).sum() / w.sum()),
                                                        rel=1e-12)
    point = np.zeros((5, 7), np.uint16)
    point[3, 2] = 9
    assert center_of_mass(point) == (3.0, 2.0)
    assert np.isnan(center_of_mass(np.zeros((3, 3)))).all()


def test_detector_masks_are_disks_annuli_and_rectangles_around_the_centre():
    disk = detector_mask(Detector("disk", radius=2.0), (9, 11), (4.0, 5.0))
    assert disk.sum() == 13 and disk[4, 5] and disk[2, 5] and not disk[2, 4]
    ring = detector_mask(Detector("annulus", inner=1.0, outer=2.0), (9, 11), (4.0, 5.0))
    assert not ring[4, 5] and ring[3, 5] and not ring[2, 5]
    rect = detector_mask(Detector("rectangle", rows=(1, 3), cols=(2, 6)), (9, 11), (4.0, 5.0))
    assert rect.sum() == 8 and rect[1:3, 2:6].all()


def _run(sim: ScanSimulator, chain: dict, order: list[int], workers: int = 2) -> Recorder:
    """Run the chain over ``sim``'s frames in ``order`` through the real run loop; return what the sink got."""
    frames = [Frame(sim.series, i, sim.frame(i)) for i in order]
    return run_series(parse({"operators": chain}).operators, sim.series_start(), frames, workers)


_CHAIN = {"virtual": {"detectors": {"bf": {"shape": "disk", "radius": 9.0},
                                    "adf": {"shape": "annulus", "inner": 16.0, "outer": 36.0},
                                    "box": {"shape": "rectangle", "rows": [2, 20], "cols": [5, 40]}}},
          "com": {"radius": 14.0}}


@pytest.mark.parametrize(("order", "flyback"), [("raster", 0), ("serpentine", 2)])
def test_maps_equal_numpy_on_the_4d_array_with_holes_nan_and_counted(order, flyback):
    sim = ScanSimulator(scan=(7, 9), shape=(48, 56), order=order, flyback=flyback, seed=3)
    scan = sim.grid
    missing = {5, 17, 30}
    arrived = [i for i in range(sim.n_frames) if i not in missing]
    rng = np.random.default_rng(4)
    sink = _run(sim, _CHAIN, list(rng.permutation(arrived)))  # out of order: each lands at its own position
    maps = sink.final.maps
    centre = sim.center
    masks = {name: detector_mask(Detector(**spec), sim.shape, centre)
             for name, spec in _CHAIN["virtual"]["detectors"].items()}
    disk = detector_mask(Detector("disk", radius=14.0), sim.shape, centre)
    rows, cols = np.indices(sim.shape)
    expected = {name: np.full(scan.shape, np.nan) for name in (*masks, "total", "com_dy", "com_dx")}
    holes = np.ones(scan.shape, bool)
    for i in arrived:
        pos = scan.position(i)
        if pos is None:  # fly-back frames belong nowhere
            continue
        holes[pos] = False
        f = sim.frame(i).astype(np.float64)
        for name, m in masks.items():
            expected[name][pos] = f[m].sum()
        expected["total"][pos] = f.sum()
        w = f * disk
        expected["com_dy"][pos] = (w * rows).sum() / w.sum() - centre[0]
        expected["com_dx"][pos] = (w * cols).sum() / w.sum() - centre[1]
    for name in (*masks, "total"):
        np.testing.assert_allclose(maps["virtual"][name], expected[name], rtol=1e-6, equal_nan=True, err_msg=name)
    for name in ("com_dy", "com_dx"):
        np.testing.assert_allclose(maps["com"][name], expected[name], rtol=1e-6, atol=1e-9, equal_nan=True)
    np.testing.assert_array_equal(np.isnan(maps["virtual"]["bf"]), holes)
    assert sink.summary["map_holes"] == holes.sum() > 0
    dy, dx = expected["com_dy"], expected["com_dx"]
    np.testing.assert_allclose(maps["com"]["divergence"], np.gradient(dx, axis=1) + np.gradient(dy, axis=0),
                               equal_nan=True, atol=1e-9)
    np.testing.assert_allclose(maps["com"]["curl"], np.gradient(dy, axis=1) - np.gradient(dx, axis=0),
                               equal_nan=True, atol=1e-9)


def test_the_phantom_is_recovered_bright_field_follows_thickness_and_com_the_tilt():
    sim = ScanSimulator(scan=(16, 20), shape=(64, 72), tilt=2.5, seed=5)
    sink = _run(sim, _CHAIN, list(range(sim.n_frames)))
    maps = sink.final.maps
    bf = maps["virtual"]["bf"]
    correlation = np.corrcoef(bf.ravel(), np.exp(-sim.thickness()).ravel())[0, 1]
    assert correlation > 0.99, correlation  # the bright field is the beam attenuated by the thickness
    ty, tx = sim.tilt_field()
    error = np.hypot(maps["com"]["com_dy"] - ty, maps["com"]["com_dx"] - tx)
    assert np.sqrt(np.mean(error ** 2)) < 0.02 * sim.tilt  # COM recovers the tilt to 2 % of its range
    adf = np.corrcoef(maps["virtual"]["adf"].ravel(), (sim.strength() * sim.thickness()).ravel())[0, 1]
    assert adf > 0.999, adf  # the dark field follows the scattering: heavy phase and thickness
    assert sink.summary["map_holes"] == 0


def test_maps_need_a_scan_and_say_so(caplog):
    sim = ScanSimulator(scan=(2, 3), shape=(32, 32))
    start = dataclasses.replace(sim.series_start(), scan=None)
    with caplog.at_level("WARNING"):
        sink = run_series(parse({"operators": {"virtual": {}}}).operators, start, [Frame(1, 0, sim.frame(0))], 1)
    assert "declare maps but the series has no scan" in caplog.text
    assert sink.summary["map_holes"] is None


def test_scan_positions_raster_serpentine_and_flyback():
    assert [Scan((2, 3)).position(i) for i in range(7)] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), None]
    serp = Scan((2, 3), order="serpentine", flyback=1)
    assert [serp.position(i) for i in range(8)] == [(0, 0), (0, 1), (0, 2), None, (1, 2), (1, 1), (1, 0), None]
    assert serp.n_frames == 8
    with pytest.raises(ValueError, match="scan order must be 'raster' or 'serpentine'"):
        Scan((2, 3), order="spiral")


async def _maps_through_the_service(tmp_path, send) -> dict:
    cfg = config(tmp_path, pipeline={"workers": 2, "snapshot_period": 0}, operators=_CHAIN)
    async with running(cfg) as (service, sub):
        await asyncio.to_thread(send, cfg.source.endpoint)
        end = await sub.wait_for(lambda t, m: t == "series" and m["type"] == "end")
    with h5py.File(end["file"], "r") as f:
        return {f"{op}/{name}": f[f"entry/livediff/maps/{op}/{name}"][:] for op in ("virtual", "com")
                for name in f[f"entry/livediff/maps/{op}"] if name not in ("scan_y", "scan_x")}   # NXdata axes


async def test_a_4d_stack_replays_to_the_maps_of_the_live_scan(tmp_path):
    sim = ScanSimulator(scan=(5, 6), shape=(40, 44), seed=6)
    stack = tmp_path / "scan.h5"
    with h5py.File(stack, "w") as f:  # as 4D-STEM users store them: (rows, cols, H, W), chunked per pattern
        data = np.stack([sim.frame(i) for i in range(sim.n_frames)]).reshape(*sim.scan, *sim.shape)
        f.create_dataset("experiment/data", data=data, chunks=(1, 1, *sim.shape), compression="gzip")
    live = await _maps_through_the_service(tmp_path / "live", lambda ep: stream_series(sim, ep))
    replayed = await _maps_through_the_service(
        tmp_path / "replay", lambda ep: replay(f"{stack}::/experiment/data", ep, rate=0, encoding="raw"))
    assert live.keys() == replayed.keys() and "virtual/bf" in live and "com/curl" in live
    for name in live:
        np.testing.assert_array_equal(replayed[name], live[name], err_msg=name)
    assert not np.isnan(live["virtual/bf"]).any()


@pytest.mark.parametrize("protocol", ["native", "dectris-stream2"])
async def test_the_scan_reaches_the_service_from_the_native_start_or_the_config(tmp_path, protocol):
    """Native: the start message carries order and fly-back; DECTRIS sends none: [source] scan gives it."""
    sim = ScanSimulator(scan=(4, 5), shape=(40, 44), order="serpentine", flyback=1, seed=7)
    source = {} if protocol == "native" else {"scan": list(sim.scan), "scan_order": "serpentine", "scan_flyback": 1}
    cfg = config(tmp_path, source={"protocol": protocol, **source}, pipeline={"snapshot_period": 0},
                 operators=_CHAIN)
    async with running(cfg) as (service, sub):
        await asyncio.to_thread(stream_series, sim, cfg.source.endpoint, protocol=protocol)
        end = await sub.wait_for(lambda t, m: t == "series" and m["type"] == "end")
    with h5py.File(end["file"], "r") as f:
        bf = f["entry/livediff/maps/virtual/bf"][:]
    expected = (await asyncio.to_thread(_run, sim, _CHAIN, list(range(sim.n_frames)))).final.maps["virtual"]["bf"]
    np.testing.assert_array_equal(bf, expected)
    assert end["map_holes"] == 0 and not np.isnan(bf).any()


def test_native_start_and_image_carry_the_scan_and_explicit_positions():
    from livediff.sources import native

    start = ScanSimulator(scan=(3, 4), order="serpentine", flyback=2).series_start()
    decoded = native.decode(native.encode_start(start))
    assert decoded.scan == start.scan and decoded.scan.step == 1.5 and decoded.scan.unit == "nm"
    assert native.decode(native.encode_start(SeriesStart(1, (8, 8), "uint16", scan=Scan((3, 4))))).scan == Scan((3, 4))
    series = SeriesStart(1, (40, 44), "uint16", scan=start.scan)
    image = native.decode(native.encode_image(1, 5, np.zeros((40, 44), np.uint16), position=(2, 1)), series=series)
    assert image.position == (2, 1)
    with pytest.raises(DecodeError, match=r"'position' must be \[row, col\] within the scan \[3, 4\]"):
        native.decode(native.encode_image(1, 5, np.zeros((40, 44), np.uint16), position=(3, 0)), series=series)
