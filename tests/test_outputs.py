"""Operators' declared outputs reach the file and the wire: rows, per-frame arrays, reductions, raw frames."""
from __future__ import annotations

from pathlib import Path

import asyncio
import threading

import h5py
import numpy as np
import pytest

from harness import config, running
from livediff.operators.azimuthal import azimuthal_average
from livediff.operators.spots import find_spots
from livediff.sources.sender import stream_series
from simulators import DiffractionSimulator


def _chain() -> dict:
    return {"summary": {}, "stats": {}, "spots": {}, "azimuthal": {"bin_width": 2.0}}


@pytest.mark.parametrize("workers", [1, 2])
async def test_every_output_kind_is_written_and_published(tmp_path, workers):
    sim = DiffractionSimulator(shape=(48, 70), n_frames=9, n_spots=4, seed=workers)
    cfg = config(tmp_path, pipeline={"workers": workers, "snapshot_period": 0.01},
                 output={"save_raw": True}, operators=_chain())
    async with running(cfg) as (service, sub):
        await asyncio.to_thread(stream_series, sim, cfg.source.endpoint, encoding="bslz4")
        end = await sub.wait_for(lambda t, m: t == "series" and m["type"] == "end")
    frames = np.stack([sim.frame(i) for i in range(sim.n_frames)])
    mask = sim.detector_mask
    with h5py.File(end["file"], "r") as f:
        ld = f["entry/livediff"]
        raw = f["entry/data/data"][:]
        mean, count = ld["reductions/stats/mean"][:], ld["reductions/stats/count"][:]
        spots = ld["spots"][:]
        table = ld["frames"][:]
        profile, profile_frames = ld["azimuthal/profile"][:], ld["azimuthal/frame"][:]
        radius = ld["reductions/azimuthal/radius"][:]
    np.testing.assert_array_equal(raw, frames)  # bslz4 blobs stored as received, read back by the filter
    expected_mean = np.where(mask, frames.mean(axis=0, dtype=np.float64), np.nan)
    np.testing.assert_allclose(mean[mask], expected_mean[mask], rtol=1e-12)
    assert np.all(count[~mask] == 0) and np.all(count[mask] == sim.n_frames)

    order = np.argsort(table["frame"])
    for i in range(sim.n_frames):  # each frame's spots as find_spots finds them, once
        mine = spots[spots["frame"] == i]
        ref = find_spots(frames[i], mask)
        assert table["n_spots"][order][i] == len(ref["x"]) == len(mine)
        np.testing.assert_allclose(np.sort(mine["x"]), np.sort(ref["x"]))
    center = sim.series_start().geometry.beam_center
    for k, i in enumerate(profile_frames):
        r, ref = azimuthal_average(frames[i], center, mask, bin_width=2.0)
        np.testing.assert_allclose(profile[k], ref, rtol=1e-6)
    np.testing.assert_allclose(radius, r)

    snapshots = sub.of("image")
    final = [m for m in snapshots if m["final"]]
    assert {m["operator"] for m in final} == {"stats", "azimuthal"}
    stats_final = next(m for m in final if m["operator"] == "stats")
    np.testing.assert_allclose(stats_final["mean"][mask], expected_mean[mask], rtol=1e-12)
    assert sum(m["n"] for m in sub.of("spots")) == len(spots)


async def test_reader_in_swmr_mode_sees_rows_while_the_writer_runs(tmp_path):
    sim = DiffractionSimulator(shape=(40, 64), n_frames=400, n_spots=3)
    cfg = config(tmp_path, output={"flush_frames": 5, "flush_seconds": 0.05})
    stop = threading.Event()
    async with running(cfg) as (service, sub):
        sender = asyncio.create_task(asyncio.to_thread(stream_series, sim, cfg.source.endpoint, rate=200.0,
                                                       stop=stop))
        start = await sub.wait_for(lambda t, m: t == "series" and m["type"] == "start")
        await sub.wait_for(lambda t, m: t == "stats" and m["frame"] >= 20)
        seen = []
        with h5py.File(start["file"], "r", swmr=True) as f:
            table = f["entry/livediff/frames"]
            for _ in range(200):
                table.refresh()
                seen.append(table.shape[0])
                if len(set(seen)) >= 3:
                    break
                await asyncio.sleep(0.02)
        stop.set()
        await sender
    assert len(set(seen)) >= 3 and seen == sorted(seen) and seen[0] > 0


def test_unwritable_output_directory_is_a_clear_error(tmp_path):
    from livediff.sinks.hdf5 import HDF5Writer

    blocker = tmp_path / "file"
    blocker.write_text("")
    cfg = config(tmp_path, output={"directory": str(blocker / "sub")})
    with pytest.raises(OSError, match=r"output directory .*file/sub is not writable"):
        HDF5Writer(cfg.output)


async def test_an_existing_file_is_never_overwritten(tmp_path):
    from livediff.model import SeriesStart
    from livediff.outputs import Layout, SeriesContext
    from livediff.sinks.hdf5 import HDF5Writer

    cfg = config(tmp_path)
    start = SeriesStart(7, (4, 5), "uint16")
    out = tmp_path / "out"
    out.mkdir()
    (out / "series_000007.h5").write_bytes(b"yesterday's data")
    writer = HDF5Writer(cfg.output)
    try:
        first = Path(writer.start_series(SeriesContext(start, Layout(), "", ""))["file"])
        await writer.end_series({"reason": "end"})
        second = Path(writer.start_series(SeriesContext(start, Layout(), "", ""))["file"])
        await writer.end_series({"reason": "end"})
    finally:
        writer.close()
    assert (out / "series_000007.h5").read_bytes() == b"yesterday's data"
    assert (first.name, second.name) == ("series_000007_1.h5", "series_000007_2.h5")
    for path in (first, second):
        with h5py.File(path, "r") as f:
            assert f["entry/livediff/summary"][0]["complete"] == 1
