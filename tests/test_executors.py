"""Executors: any number of workers gives the answer of one, bit for bit; one kind may repeat under labels."""
from __future__ import annotations

import asyncio

import h5py
import numpy as np
import pytest

from harness import config, running
from livediff.config import parse
from livediff.executors.offline import process_frames
from livediff.model import Frame
from livediff.operators.stats import RunningStats
from livediff.sources.sender import stream_series
from simulators import DiffractionSimulator


def _drifting(n_frames=23, seed=21):
    sim = DiffractionSimulator(shape=(56, 83), n_frames=n_frames, n_spots=20, background=30.0, drift=0.8,
                               pattern="fixed", n_hot=3, seed=seed)
    start = sim.series_start()
    return sim, start, [sim.frame(i) for i in range(n_frames)]


_CHAIN = {"hot_pixels": {"window": 5}, "flatfield": {"dark_frames": 3},
          "align": {"reference": "mean", "update_every": 3, "max_shift": 8.0},
          "stats": {}, "spots": {"mode": "3d"}}


def test_a_chain_with_series_state_gives_bit_identical_results_for_1_2_and_4_workers():
    _, start, frames = _drifting()
    specs = parse({"operators": _CHAIN}).operators
    runs = {w: process_frames(specs, start, [Frame(1, i, f) for i, f in enumerate(frames)], workers=w)
            for w in (1, 2, 4)}
    ref_frames, ref_results = runs[1]
    assert not any(isinstance(f, Exception) for f in ref_frames)
    assert sum(f.results["align"]["aligned"] for f in ref_frames) > len(frames) // 2
    for workers in (2, 4):
        out, results = runs[workers]
        for a, b in zip(out, ref_frames):
            np.testing.assert_array_equal(a.data, b.data)
            np.testing.assert_array_equal(a.mask, b.mask)
            for label in ("hot_pixels", "flatfield", "align"):
                assert a.results[label] == b.results[label], (workers, label, a.index)
        assert results.keys() == ref_results.keys()
        for label in results:
            for name, value in results[label].items():
                if name == "rows":
                    for column, v in value.items():
                        np.testing.assert_array_equal(v, ref_results[label]["rows"][column])
                elif label == "stats":  # partial sums merged in another order: equal to rounding
                    np.testing.assert_allclose(value, ref_results[label][name], rtol=1e-12, atol=1e-12, equal_nan=True)
                else:
                    np.testing.assert_array_equal(value, ref_results[label][name], err_msg=f"{label}.{name}")


def _stats_of(frames: list[Frame]) -> RunningStats:
    rs = RunningStats()
    for f in frames:
        rs.update(f.data, mask=f.mask)
    return rs


async def test_one_kind_twice_under_labels_before_and_after_align_in_hdf5_and_on_the_wire(tmp_path):
    sim, start, frames = _drifting(n_frames=12, seed=22)
    chain = {"raw": {"kind": "stats"}, "summary": {}, "align": {"max_shift": 8.0},
             "aligned": {"kind": "stats"}, "aligned_summary": {"kind": "summary"}}
    cfg = config(tmp_path, pipeline={"workers": 2, "snapshot_period": 0}, operators=chain)
    async with running(cfg) as (service, sub):
        await asyncio.to_thread(stream_series, sim, cfg.source.endpoint)
        end = await sub.wait_for(lambda t, m: t == "series" and m["type"] == "end")
    assert end["processed"] == sim.n_frames and end["failed"] == 0
    # the same chain offline gives the expected reductions: the aligned frames' statistics differ from the raw ones
    specs = parse({"operators": chain}).operators
    out, _ = await asyncio.to_thread(process_frames, specs, start, [Frame(1, i, f) for i, f in enumerate(frames)])
    raw = _stats_of([Frame(1, i, f.astype(np.float64), mask=start.mask) for i, f in enumerate(frames)])
    with h5py.File(end["file"], "r") as f:
        red = f["entry/livediff/reductions"]
        table = f["entry/livediff/frames"][:]
        stored = {label: red[label]["mean"][:] for label in ("raw", "aligned")}
    valid = raw.count > 0
    np.testing.assert_allclose(stored["raw"][valid], raw.mean[valid], rtol=1e-12)
    assert not np.allclose(stored["aligned"][valid], stored["raw"][valid], equal_nan=True)
    # columns: the summary under its own name keeps plain names, the other label prefixes them
    assert {"sum", "aligned_summary.sum", "shift_y"} <= set(table.dtype.names)
    order = np.argsort(table["frame"])
    np.testing.assert_allclose(table["aligned_summary.sum"][order],
                               [f.results["aligned_summary"]["sum"] for f in out], rtol=1e-12)
    final = {m["operator"]: m for m in sub.of("image") if m["final"]}
    assert {"raw", "aligned"} <= final.keys()
    np.testing.assert_array_equal(final["raw"]["mean"], stored["raw"])
    np.testing.assert_array_equal(final["aligned"]["mean"], stored["aligned"])
    stats = sub.of("stats")
    assert len(stats) == sim.n_frames and all("aligned_summary.sum" in m for m in stats)


def test_labels_and_kinds_are_checked():
    from livediff.errors import ConfigError

    with pytest.raises(ConfigError, match=r"operators.twice.kind: unknown operator 'stat' \(did you mean 'stats'\?\)"):
        parse({"operators": {"twice": {"kind": "stat"}}})
    with pytest.raises(ConfigError, match=r"operators.mine: unknown operator; .* kind = "):
        parse({"operators": {"mine": {}}})
    with pytest.raises(ConfigError, match=r"operators.a b: a label starts with a letter"):
        parse({"operators": {"a b": {"kind": "stats"}}})
    specs = parse({"operators": {"before": {"kind": "stats", "ddof": 0}, "stats": {}}}).operators
    assert [(s.label, s.kind, s.params.ddof) for s in specs] == [("before", "stats", 0), ("stats", "stats", 1)]


def test_an_executor_is_chosen_in_the_config():
    from livediff.errors import ConfigError

    assert parse({"pipeline": {"executor": "threads"}}).pipeline.executor == "threads"
    with pytest.raises(ConfigError, match=r"pipeline.executor: must be one of 'threads', 'dask', got 'mpi'"):
        parse({"pipeline": {"executor": "mpi"}})
    pipeline = parse({"pipeline": {"executor": "dask", "scheduler": "tcp://10.0.0.5:8786", "workers": 8}}).pipeline
    assert (pipeline.executor, pipeline.scheduler, pipeline.workers) == ("dask", "tcp://10.0.0.5:8786", 8)
    with pytest.raises(ConfigError, match=r"scheduler must be 'local' or an address like 'tcp://host:8786', "
                                          r"got '10.0.0.5:8786'"):
        parse({"pipeline": {"executor": "dask", "scheduler": "10.0.0.5:8786"}})


async def test_kernels_are_compiled_when_a_series_of_a_new_pixel_type_starts(caplog):
    from livediff.executors.threads import ThreadExecutor
    from livediff.model import SeriesStart
    from livediff.operators.summary import _summarise_int

    executor = ThreadExecutor(parse({"operators": {"summary": {}, "spots": {}}}).operators, 2)
    mask = np.ones((40, 52), bool)
    mask[3, 4] = False
    try:
        with caplog.at_level("INFO", logger="livediff.executors.threads"):
            await executor.start(SeriesStart(1, (40, 52), "int32", mask=mask))
            assert "kernels ready for int32 frames with a mask" in caplog.text
            assert any(str(sig[0].dtype) == "int32" for sig in _summarise_int.signatures)  # before any real frame
            caplog.clear()
            await executor.start(SeriesStart(2, (64, 64), "int32", mask=np.ones((64, 64), bool)))
            assert "kernels ready" not in caplog.text  # this pixel type and a mask: compiled already
    finally:
        executor.close()
