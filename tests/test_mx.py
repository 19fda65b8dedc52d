"""Per-image analysis for crystallography: d against Bragg's law, counts against the ice ring table,
estimated d_min against the simulator's diffraction limit, hits, and grid maps through the run loop."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import math

import numpy as np
import pytest
from harness import config, run_series, running

from livediff.config import parse
from livediff.executors.offline import process_frames
from livediff.model import Frame, Geometry, Scan
from livediff.operators import mx
from livediff.operators.spots import FRAME_SPOTS, Spots, SpotsParams
from livediff.sources.sender import stream_series
from simulators.diffraction import ICE_RINGS_D, DiffractionSimulator

#: a crystal to 2.4 Å (B = 10 Å²) with spotty ice rings on a 512 x 512 detector reaching 1.94 Å
MX_SIM = {"shape": (512, 512), "n_spots": 150, "distance": 0.05, "b_factor": 10.0, "d_min": 2.4, "ice": True,
          "background": 3.0}

#: |estimated d_min / simulated limit - 1| stays below this for a simulator crystal of 150 spots
D_MIN_TOLERANCE = 0.03


def bragg_d(rows, cols, beam_center, pixel_size, distance, wavelength):
    """d from the lab-frame vector of each position: 2θ = angle(beam, sample -> pixel), d = λ / (2 sin θ)."""
    (r0, c0), (py, px) = beam_center, pixel_size
    p = np.stack(np.broadcast_arrays((np.asarray(cols) - c0) * px, (np.asarray(rows) - r0) * py, distance), -1)
    two_theta = np.arccos(p[..., 2] / np.linalg.norm(p, axis=-1))
    with np.errstate(divide="ignore"):
        return wavelength / (2 * np.sin(two_theta / 2))


def direct_ice(d, width=0.004):
    """On an ice ring of the cited table: |1/d² - 1/d_ring²| < width / 2 for some ring."""
    inv = 1 / np.asarray(d)[:, None] ** 2
    return (np.abs(inv - 1 / np.array(ICE_RINGS_D)[None, :] ** 2) < width / 2).any(axis=1)


def chain(**mx_params):
    return parse({"operators": {"spots": {}, "mx": mx_params}}).operators


@pytest.mark.parametrize(("beam_center", "pixel_size"), [((255.5, 300.25), (75e-6, 75e-6)),
                                                         ((-40.0, 812.7), (172e-6, 75e-6))],
                         ids=["centred-square", "off-detector-non-square"])
def test_resolution_equals_bragg_from_the_lab_geometry(beam_center, pixel_size):
    geometry = Geometry(beam_center=beam_center, pixel_size=pixel_size, distance=0.123, wavelength=0.9537)
    rng = np.random.default_rng(1)
    rows, cols = rng.uniform(-0.5, 511.5, 500), rng.uniform(-0.5, 639.5, 500)
    expected = bragg_d(rows, cols, beam_center, pixel_size, 0.123, 0.9537)
    np.testing.assert_allclose(mx.resolution(rows, cols, geometry), expected, rtol=1e-12)
    assert mx.resolution(*beam_center, geometry) == np.inf


def test_spot_rows_carry_d_and_inv_d2_from_the_config_geometry_and_pass_it_on():
    sim = DiffractionSimulator(shape=(96, 128), n_frames=1, seed=2, n_spots=12)
    start = dataclasses.replace(sim.series_start(), geometry=Geometry())  # a stream without geometry
    given = {"beam_center": (20.0, 150.0), "pixel_size": (172e-6, 75e-6), "distance": 0.08, "wavelength": 1.2}
    op = Spots(SpotsParams(**given))
    op.start(start)
    assert {"d": "f8", "inv_d2": "f8"}.items() <= op.rows.items()
    assert op.output_series(start).geometry == Geometry(**given)  # what mx after it sees
    rows = op.process(Frame(1, 0, sim.frame(0), mask=start.mask)).results["spots"]["rows"]
    d = bragg_d(rows["y"], rows["x"], given["beam_center"], given["pixel_size"], 0.08, 1.2)
    assert rows["x"].size > 5
    np.testing.assert_allclose(rows["d"], d, rtol=1e-12)
    np.testing.assert_allclose(rows["inv_d2"], 1 / d ** 2, rtol=1e-12)
    bare = Spots(SpotsParams())
    bare.start(start)
    assert "d" not in bare.rows and bare.output_series(start) is start


def test_ice_rings_are_the_cited_table():
    rings = mx.ice_rings(1.47)
    np.testing.assert_allclose(1 / np.sqrt(rings), ICE_RINGS_D, atol=6e-5)
    np.testing.assert_allclose(ICE_RINGS_D[:10], [3.895, 3.669, 3.441, 2.671, 2.249, 2.071, 1.948, 1.917, 1.883, 1.835],
                               atol=6e-4)  # as mx.md lists them
    assert mx.ice_rings(3.4).size == 3  # 100, 002, 101: 001 and 003 are absent in P6_3/mmc


def test_counts_equal_a_direct_count_with_the_ring_table():
    rng = np.random.default_rng(3)
    on_rings = np.array(ICE_RINGS_D)[rng.integers(0, len(ICE_RINGS_D), 60)] * (1 + rng.normal(0, 2e-4, 60))
    d = rng.uniform(1.5, 12.0, 420)
    edge = np.abs(np.abs(1 / d[:, None] ** 2 - 1 / np.array(ICE_RINGS_D) ** 2) - 0.002).min(axis=1)
    d = np.concatenate([d[edge > 1e-4][:400], on_rings, [np.inf]])  # not within the table's rounding of
    # a ring's edge; one spot at the beam centre
    intensity = rng.exponential(500.0, d.size) + 1
    figures = mx.per_image_analysis(d, intensity, intensity)
    finite = np.isfinite(d)
    ice = direct_ice(d[finite])
    assert figures["n_spots_total"] == finite.sum() == 460
    assert figures["n_spots_no_ice"] == (~ice).sum() < 400
    assert figures["n_spots_4A"] == (d[finite] > 4).sum()
    assert figures["total_intensity"] == pytest.approx(intensity[finite][~ice].sum(), rel=1e-12)
    assert 1.5 <= figures["estimated_d_min"] < 12


def test_no_d_min_with_ten_spots_off_the_ice_or_fewer():
    d = np.array([*np.linspace(4.5, 9.0, 10), *ICE_RINGS_D[:5]])
    figures = mx.per_image_analysis(d, np.full(d.size, 100.0), np.full(d.size, 100.0))
    assert figures["n_spots_no_ice"] == 10 and math.isnan(figures["estimated_d_min"])


def test_estimated_d_min_lands_near_the_simulated_limit_and_ice_spots_are_excluded():
    sim = DiffractionSimulator(n_frames=6, seed=4, hit_fraction=0.7, **MX_SIM)
    start = sim.series_start()
    frames, _ = process_frames(chain(), start, (Frame(1, i, sim.frame(i)) for i in range(sim.n_frames)), workers=2)
    hits = [sim.is_hit(i) for i in range(sim.n_frames)]
    assert 0 < sum(hits) < sim.n_frames
    for i, frame in enumerate(frames):
        figures, spots = frame.results["mx"], frame.results["spots"][FRAME_SPOTS]
        truth = sim.spots(i)
        d = mx.resolution(spots["y"], spots["x"], start.geometry)
        np.testing.assert_allclose(spots["d"], d)
        assert figures["n_spots_total"] == spots["x"].size
        assert figures["n_spots_no_ice"] == (~direct_ice(d)).sum()
        assert figures["n_spots_4A"] == (d > 4).sum()
        # every simulated ice spot that was found is on a ring, and so left out
        distance = np.hypot(spots["y"][:, None] - truth["row"], spots["x"][:, None] - truth["col"])
        ice_found = truth["ice"][distance.argmin(axis=1)] & (distance.min(axis=1) < 1.5)
        assert direct_ice(d[ice_found]).all() and ice_found.sum() > 20
        if hits[i]:
            assert figures["hit"] == 1
            assert abs(figures["estimated_d_min"] / sim.d_min - 1) < D_MIN_TOLERANCE, figures
        else:  # ice alone: no hit, no resolution
            assert figures["hit"] == 0 and math.isnan(figures["estimated_d_min"])
    rates = [f.results["mx"]["hit_rate"] for f in frames]
    np.testing.assert_allclose(rates, np.cumsum(hits) / np.arange(1, len(hits) + 1))


def test_in_3d_mode_mx_analyses_each_frames_own_spots():
    sim = DiffractionSimulator(n_frames=3, seed=4, **MX_SIM)
    specs = parse({"operators": {"spots": {"mode": "3d"}, "mx": {}}}).operators
    frames, _ = process_frames(specs, sim.series_start(), [Frame(1, i, sim.frame(i)) for i in range(3)])
    for frame in frames:
        assert frame.results["mx"]["n_spots_total"] == frame.results["spots"]["n_spots"] > 100
        assert abs(frame.results["mx"]["estimated_d_min"] / sim.d_min - 1) < D_MIN_TOLERANCE


def test_missing_geometry_leaves_the_figures_out_and_says_so_once(caplog):
    sim = DiffractionSimulator(shape=(96, 128), n_frames=4, seed=2, n_spots=12)
    start = dataclasses.replace(sim.series_start(), geometry=Geometry(beam_center=(40.0, 60.0)))
    with caplog.at_level(logging.INFO):
        frames, _ = process_frames(chain(), start, (Frame(1, i, sim.frame(i)) for i in range(4)), workers=2)
    assert [set(f.results["mx"]) for f in frames] == [{"n_spots_total"}] * 4
    assert [f.results["mx"]["n_spots_total"] for f in frames] == [f.results["spots"]["n_spots"] for f in frames]
    lacks = [r for r in caplog.records if "the geometry lacks pixel_size, distance, wavelength" in r.message]
    assert len(lacks) == 2 and {r.name for r in lacks} == {"livediff.operators.mx",
                                                           "livediff.operators.spots.operator"}


class _WithoutGeometry:
    """A simulator whose header carries no geometry."""

    def __init__(self, sim):
        self.sim = sim

    def series_start(self):
        return dataclasses.replace(self.sim.series_start(), geometry=Geometry())

    def __getattr__(self, name):
        return getattr(self.sim, name)


async def test_a_stream_without_geometry_is_said_once_per_series_warm_up_included(tmp_path, caplog):
    sim = _WithoutGeometry(DiffractionSimulator(shape=(96, 128), n_frames=5, seed=2, n_spots=12, dtype="uint32"))
    cfg = config(tmp_path, pipeline={"workers": 2, "snapshot_period": 0}, operators={"spots": {}, "mx": {}})
    with caplog.at_level(logging.INFO):
        async with running(cfg) as (service, sub):
            await asyncio.to_thread(stream_series, sim, cfg.source.endpoint)
            await sub.wait_for(lambda t, m: t == "series" and m["type"] == "end")
    lacks = [r.name for r in caplog.records if "the geometry lacks" in r.message]
    assert sorted(lacks) == ["livediff.operators.mx", "livediff.operators.spots.operator"]


def test_config_geometry_fills_what_the_stream_lacks():
    sim = DiffractionSimulator(n_frames=1, seed=4, **MX_SIM)
    header = sim.series_start().geometry
    start = dataclasses.replace(sim.series_start(), geometry=Geometry())
    given = {"beam_center": list(header.beam_center), "pixel_size": header.pixel_size[0],
             "distance": header.distance, "wavelength": header.wavelength}
    on_spots = parse({"operators": {"spots": given, "mx": {}}}).operators  # spots passes it on to mx
    on_mx = chain(**given)
    full, _ = process_frames(chain(), sim.series_start(), [Frame(1, 0, sim.frame(0))])
    for specs, spots_have_d in ((on_spots, True), (on_mx, False)):
        frames, _ = process_frames(specs, start, [Frame(1, 0, sim.frame(0))])
        assert frames[0].results["mx"] == full[0].results["mx"]
        assert ("d" in frames[0].results["spots"]["rows"]) is spots_have_d


def test_mx_without_spots_before_it_says_how_to_fix_it():
    sim = DiffractionSimulator(shape=(96, 128), n_frames=1)
    frames, _ = process_frames(parse({"operators": {"mx": {}}}).operators, sim.series_start(),
                               [Frame(1, 0, sim.frame(0))])
    assert isinstance(frames[0], ValueError)
    assert "put [operators.spots] (kind spots) before [operators.mx]" in str(frames[0])


@pytest.mark.parametrize("order", ["raster", "serpentine"])
def test_grid_maps_equal_the_per_frame_figures_at_their_scan_positions(order):
    scan = Scan((3, 4), order=order)
    sim = DiffractionSimulator(n_frames=scan.n_frames, seed=9, hit_fraction=0.6, scan=scan,
                               **{**MX_SIM, "shape": (256, 256), "n_spots": 40, "distance": 0.025})
    missing = {2, 7}
    arrived = [i for i in range(sim.n_frames) if i not in missing]
    order = np.random.default_rng(5).permutation(arrived)  # out of order: each lands at its own position
    sink = run_series(chain(), sim.series_start(), [Frame(sim.series, i, sim.frame(i)) for i in order])
    maps = sink.final.maps["mx"]
    assert set(maps) == {"n_spots_total", "n_spots_no_ice", "estimated_d_min", "hit"}
    expected = {name: np.full(scan.shape, np.nan) for name in maps}
    for index, row in sink.rows:
        for name in maps:
            expected[name][scan.position(index)] = row[name]
    for name in maps:
        np.testing.assert_array_equal(maps[name], expected[name], err_msg=name)
    holes = np.isnan(maps["n_spots_total"])
    assert holes.sum() == len(missing) == sink.summary["map_holes"]
    assert {scan.position(i) for i in missing} == set(zip(*np.nonzero(holes)))
    hit = maps["hit"][~holes]
    assert 0 < hit.sum() < hit.size  # a crystal search: some positions hold one
    assert np.array_equal(hit, [sim.is_hit(i) for i in sorted(arrived, key=lambda i: scan.position(i))])


def test_no_maps_without_a_scan():
    sim = DiffractionSimulator(n_frames=2, seed=9, **{**MX_SIM, "shape": (128, 128), "n_spots": 10})
    op = mx.Mx()
    op.start(sim.series_start())
    assert op.maps == {} and "hit" in op.columns


def test_bench_times_mx_next_to_spotfinding():
    from livediff.bench import core
    from livediff.bench import mx as bench_mx

    (case,) = bench_mx.cases(quick=True)
    row = core.run_case(case, min_seconds=0.05)
    assert row["skipped"] is None and row["ratio"] > 1  # the analysis costs less than finding the spots


# ---------------------------------------------------------------- estimate_d_min against a plain NumPy transcription
def _reference_d_min(inv_d2, intensity, variance, ice):
    """DIALS' ``estimate_resolution_limit`` written out in NumPy, step by step (the docstring of
    ``mx.estimate_d_min``): the compiled version must give the same value, bit for bit."""
    keep = (variance > 0) & (intensity > 0)
    x, i_obs, var, ice = inv_d2[keep], intensity[keep], variance[keep], ice[keep]
    if x.size == 0:
        return math.nan
    y = np.log(i_obs / np.sqrt(var))
    d = 1.0 / np.sqrt(x)
    n_slots = min(max(x.size // 20, 5), 20)
    d_sorted = 1.0 / np.sqrt(np.sort(x))
    edges = [d_sorted[max(int(math.floor((i + 1) * x.size / n_slots + 0.5)) - 1, 0)] for i in range(n_slots)]
    outliers = np.zeros(x.size, bool)
    upper, lower = [], []
    for d_lo, d_hi in zip(edges, [d_sorted[0], *edges[:-1]]):
        in_bin = (d < d_hi) & (d >= d_lo)
        if not (in_bin & ~ice).any():
            continue
        flagged = np.zeros(in_bin.sum(), bool)
        while True:
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = i_obs[in_bin][~flagged & ~ice[in_bin]].mean() if (~flagged & ~ice[in_bin]).any() else np.nan
                new = ~flagged & (np.sqrt(i_obs[in_bin]) / math.sqrt(mean) >= math.sqrt(-math.log(0.01)))
            if not new.any():
                break
            flagged |= new
        outliers[in_bin] = flagged
        sel = np.flatnonzero(in_bin & ~outliers & ~ice)
        order = np.argsort(y[sel], kind="stable")
        lo, hi = sel[order[int(0.1 * sel.size)]], sel[order[int(0.9 * sel.size)]]
        upper.append((x[lo], y[hi]))
        lower.append((x[hi], y[lo]))
    fits = []
    for points in (upper, lower):
        px, py = np.array(points).T if len(points) >= 2 else (np.zeros(1), np.zeros(1))
        fits.append(None if len(points) < 2 or np.ptp(px) == 0 else tuple(np.polyfit(px, py, 1)))
    if any(f is None for f in fits) or fits[0][0] == fits[1][0]:
        return math.nan
    m, c = fits[0]
    below = (y < m * x + c) & ~outliers & ~ice
    return float(1.0 / math.sqrt(x[below].max())) if below.any() else math.nan


@pytest.mark.parametrize("seed", range(40))
def test_estimated_d_min_is_that_of_a_plain_numpy_transcription_bit_for_bit(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.choice([3, 11, 40, 137, 400, 1500]))
    d = rng.uniform(1.2, 25.0, n)
    intensity = rng.lognormal(6, 1.5, n) * (d / 10) ** 2
    intensity[rng.random(n) < 0.05] *= 50  # strong outliers
    variance = intensity * rng.uniform(0.5, 2.0, n)
    variance[rng.random(n) < 0.03] = 0  # left out
    ice = rng.random(n) < rng.choice([0.0, 0.2, 0.9])
    inv_d2 = 1.0 / d ** 2
    expected = _reference_d_min(inv_d2, intensity, variance, ice)
    got = mx.estimate_d_min(inv_d2, intensity, variance, ice)
    assert (math.isnan(got) and math.isnan(expected)) or got == expected


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 16, 63, 128, 129, 130, 257, 1000])
def test_the_compiled_means_add_up_as_numpy_adds(n):
    values = np.random.default_rng(n).lognormal(3, 2, n)
    assert mx._numpy_sum(values) == values.sum()


def test_the_warm_up_runs_the_resolution_estimate_so_the_first_hit_does_not_wait_for_numba(monkeypatch):
    from livediff.executors.warmup import warm_up

    calls = []
    kernel = mx._bin_points
    monkeypatch.setattr(mx, "_bin_points", lambda *args: calls.append(args) or kernel(*args))
    start = DiffractionSimulator(n_frames=1, **MX_SIM).series_start()
    warm_up(chain(), start)
    assert calls  # the kernel ran, so it was compiled (or loaded from numba's cache), before any real frame
