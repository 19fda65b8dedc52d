"""Hand-off files: the DIALS .refl read back by an independent reader, the CrystFEL .cxi opened with h5py,
and ``livediff report`` on the series file, all against the HDF5 file of the same series."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading

import h5py
import hdf5plugin  # noqa: F401 - the bitshuffle-LZ4 filter of the .cxi frames
import msgpack
import numpy as np
import pytest
from harness import config, running

from livediff.cli import main
from livediff.config import parse
from livediff.errors import ConfigError
from livediff.model import Scan
from livediff.outputs import FrameOutput, Layout, SeriesContext
from livediff.report import format_report, load_report
from livediff.sinks.cxi import MAX_PEAKS, CxiExporter, _CxiFile
from livediff.sinks.refl import SPILL, ReflExporter, write_reflection_table
from livediff.sinks.series_file import SeriesFile
from livediff.sources.sender import stream_series
from simulators.diffraction import DiffractionSimulator

# --------------------------------------------------------------------------- an independent .refl reader
#: DIALS' column type names (reflection_table_msgpack_adapter.h, column_type<T>::name) -> element layout
DIALS_TYPES = {"bool": ("?", 1), "int": ("<i4", 1), "std::size_t": ("<u8", 1), "double": ("<f8", 1),
               "vec2<double>": ("<f8", 2), "vec3<double>": ("<f8", 3), "mat3<double>": ("<f8", 9),
               "int6": ("<i4", 6), "cctbx::miller::index<>": ("<i4", 3)}


def read_refl(path):
    """A reflection table as DIALS' msgpack reader takes it: ["dials::af::reflection_table", version,
    {"identifiers": {...}, "nrows": n, "data": {name: [type, [n, bin]]}}], each bin n raw elements."""
    with open(path, "rb") as f:
        raw = f.read()
    kind, version, body = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    assert kind == "dials::af::reflection_table" and version in (1, 2)
    assert list(body) == ["identifiers", "nrows", "data"]
    columns, types = {}, {}
    for name, (type_name, (count, blob)) in body["data"].items():
        dtype, width = DIALS_TYPES[type_name]
        assert isinstance(blob, bytes) and count == body["nrows"]
        assert len(blob) == count * width * np.dtype(dtype).itemsize
        values = np.frombuffer(blob, dtype=dtype)
        columns[name] = values.reshape(count, width) if width > 1 else values
        types[name] = type_name
    return body["identifiers"], body["nrows"], columns, types


STRONG_REFL = {"bbox": "int6", "flags": "std::size_t", "id": "int", "intensity.sum.value": "double",
               "intensity.sum.variance": "double", "n_signal": "int", "panel": "std::size_t",
               "xyzobs.px.value": "vec3<double>", "xyzobs.px.variance": "vec3<double>"}


def check_refl_against_spots(path, spots):
    identifiers, nrows, columns, types = read_refl(path)
    assert identifiers == {} and nrows == len(spots) > 0
    assert types == STRONG_REFL and list(types) == sorted(types)  # DIALS' std::map order
    np.testing.assert_array_equal(columns["xyzobs.px.value"], np.stack([spots[k] + 0.5 for k in "xyz"], 1))
    np.testing.assert_array_equal(columns["xyzobs.px.variance"],
                                  np.stack([spots[f"var_{k}"] for k in "xyz"], 1))
    np.testing.assert_array_equal(columns["bbox"], np.stack([spots[k] for k in ("x0", "x1", "y0", "y1", "z0",
                                                                                  "z1")], 1))
    np.testing.assert_array_equal(columns["intensity.sum.value"], spots["intensity"])
    np.testing.assert_array_equal(columns["intensity.sum.variance"], spots["intensity_var"])
    np.testing.assert_array_equal(columns["n_signal"], spots["npix"])
    assert (columns["flags"] == 32).all() and (columns["panel"] == 0).all() and (columns["id"] == 0).all()
    return columns


# --------------------------------------------------------------------------- one MX series through the service
MX = {"shape": (192, 224), "n_frames": 16, "n_spots": 40, "distance": 0.025, "b_factor": 10.0, "d_min": 2.2,
      "ice": True, "ice_spots": 4, "hit_fraction": 0.5, "seed": 12, "background": 3.0, "scan": Scan((4, 4))}


async def _serve(tmp_path, sim, operators, export=("refl", "cxi"), encoding="raw"):
    cfg = config(tmp_path, pipeline={"workers": 2, "snapshot_period": 0}, output={"export": list(export)},
                 operators=operators)
    async with running(cfg) as (service, sub):
        await asyncio.to_thread(stream_series, sim, cfg.source.endpoint, encoding=encoding)
        await sub.wait_for(lambda t, m: t == "series" and m["type"] == "end")
    return service.series_done[0]


@pytest.fixture(scope="module")
def mx_series(tmp_path_factory):
    sim = DiffractionSimulator(**MX)
    summary = asyncio.run(_serve(tmp_path_factory.mktemp("mx"), sim, {"spots": {}, "mx": {"min_spots": 10}},
                                 encoding="bslz4"))
    with h5py.File(summary["file"], "r") as f:
        frames, spots = f["entry/livediff/frames"][:], f["entry/livediff/spots"][:]
        maps = {name: f[f"entry/livediff/maps/mx/{name}"][:] for name in f["entry/livediff/maps/mx"]
                if name not in ("scan_y", "scan_x")}   # the NXdata's axes
    return sim, summary, frames, spots, maps


def test_a_grid_scan_fills_the_mx_maps_of_the_series_file(mx_series):
    sim, summary, frames, _, maps = mx_series
    assert set(maps) == {"n_spots_total", "n_spots_no_ice", "estimated_d_min", "hit"} and summary["map_holes"] == 0
    for row in frames:
        for name, values in maps.items():
            np.testing.assert_array_equal(values[sim.scan.position(row["frame"])], row[name])


def test_refl_round_trips_through_an_independent_reader(mx_series):
    sim, summary, _, spots, _ = mx_series
    assert summary["refl"] == summary["file"][:-3] + ".refl"
    columns = check_refl_against_spots(summary["refl"], spots)
    z = columns["xyzobs.px.value"][:, 2]
    np.testing.assert_array_equal(z, spots["frame"] + 0.5)  # a still: the middle of its frame, DIALS' way
    assert set(spots["frame"]) == set(range(sim.n_frames))


def test_cxi_holds_the_hit_frames_as_received_and_their_spots_in_crystfels_layout(mx_series):
    sim, summary, frames, spots, _ = mx_series
    hits = np.sort(frames["frame"][frames["hit"] == 1])
    assert 0 < hits.size < sim.n_frames and summary["cxi_hits"] == hits.size and summary["cxi_not_saved"] == 0
    assert hits.tolist() == [i for i in range(sim.n_frames) if sim.is_hit(i)]
    with h5py.File(summary["cxi"], "r", swmr=True) as f:
        assert f["cxi_version"][()] == 150
        data, result = f["entry_1/data_1/data"], f["entry_1/result_1"]
        assert data.shape == (hits.size, *sim.shape) and data.dtype == np.dtype(sim.dtype)
        assert result["nPeaks"].dtype == np.int32 and result["nPeaks"].shape == (hits.size,)
        for name in ("peakXPosRaw", "peakYPosRaw", "peakTotalIntensity"):
            assert result[name].dtype == np.float32 and result[name].shape == (hits.size, MAX_PEAKS)
        order = np.argsort(result["frame"][:])  # events are in arrival order
        assert np.array_equal(result["frame"][:][order], hits)
        for event in order:
            index = result["frame"][event]
            mine = spots[spots["frame"] == index]
            n = result["nPeaks"][event]
            assert n == len(mine) > 0
            np.testing.assert_array_equal(data[event], sim.frame(index))  # the bslz4 chunk as received
            for name, column in (("peakXPosRaw", "x"), ("peakYPosRaw", "y"), ("peakTotalIntensity", "intensity")):
                row = result[name][event]
                np.testing.assert_array_equal(row[:n], mine[column].astype(np.float32))
                assert not row[n:].any()


def test_report_prints_the_per_image_table_and_json(mx_series, capsys):
    sim, summary, frames, _, _ = mx_series
    assert main(["report", summary["file"], "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ended"] and report["complete"] and report["incomplete"] == ""
    assert [r["frame"] for r in report["frames"]] == list(range(sim.n_frames))
    by_frame = {row["frame"]: row for row in frames}
    for row in report["frames"]:
        mine = by_frame[row["frame"]]
        for name in ("n_spots_total", "n_spots_no_ice", "n_spots_4A", "hit"):
            assert row[name] == mine[name]
        d = mine["estimated_d_min"]
        assert row["estimated_d_min"] == (None if np.isnan(d) else pytest.approx(d))
    s = report["summary"]
    assert s["frames"] == sim.n_frames and s["hits"] == frames["hit"].sum()
    assert s["best_d_min"] == pytest.approx(np.nanmin(frames["estimated_d_min"]))
    assert main(["report", summary["file"]]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].split() == ["frame", "#spots", "#spots_no_ice", "#spots_4A", "total_intensity", "d_min", "hit"]
    assert len(text) == sim.n_frames + 3 and f"{s['hits']} hits" in text[-1]


def test_report_reads_a_series_file_while_it_is_written(tmp_path):
    start = DiffractionSimulator(shape=(32, 32), n_frames=3).series_start()
    layout = Layout()
    layout.add(_Declared(columns={"n_spots_total": "i8", "hit": "u1", "estimated_d_min": "f8"}))
    written = SeriesFile(tmp_path / "s.h5", start, layout, "", save_raw=False, save_corrected=False)
    for i, (n, d) in enumerate(((40, 2.5), (3, np.nan))):
        written.add_frame({"frame": i, "epoch": 0, "n_spots_total": n, "hit": int(n >= 10), "estimated_d_min": d})
    written.flush()
    report = load_report(tmp_path / "s.h5")  # the writer still has it open, in SWMR mode
    assert not report["ended"] and [r["estimated_d_min"] for r in report["frames"]] == [2.5, None]
    assert report["summary"] == {"frames": 2, "hits": 1, "hit_rate": 0.5, "best_d_min": 2.5, "best_frame": 0}
    assert format_report(report).endswith("best d_min 2.50 Å (frame 0) (still being written, or not closed)")
    written.close({"reason": "end", "expected": 3, "received": 2, "processed": 2, "lost": 1})
    report = load_report(tmp_path / "s.h5")
    assert report["ended"] and not report["complete"] and "lost 1" in report["incomplete"]


@dataclasses.dataclass
class _Declared:
    """An operator's declarations (``mx`` with these columns) for a Layout."""

    columns: dict
    kind: str = "mx"
    name: str = "mx"
    arrays: dict = dataclasses.field(default_factory=dict)
    rows: dict = dataclasses.field(default_factory=dict)
    reductions: dict = dataclasses.field(default_factory=dict)
    maps: dict = dataclasses.field(default_factory=dict)

    def derive_maps(self, maps):
        return {}


def test_refl_of_3d_spots_holds_the_linked_spots(tmp_path):
    sim = DiffractionSimulator(shape=(96, 128), n_frames=6, n_spots=8, pattern="fixed", seed=3)
    summary = asyncio.run(_serve(tmp_path, sim, {"spots": {"mode": "3d"}}, export=("refl",)))
    with h5py.File(summary["file"], "r") as f:
        spots = f["entry/livediff/spots"][:]
    columns = check_refl_against_spots(summary["refl"], spots)
    z = columns["xyzobs.px.value"][:, 2]
    assert (spots["z1"] - spots["z0"] == sim.n_frames).sum() >= 3  # spots over the whole series, linked
    np.testing.assert_allclose(z[spots["z1"] - spots["z0"] == sim.n_frames], sim.n_frames / 2, atol=0.1)  # frames 0-5: [0, 6)
    assert "cxi" not in summary


def test_refl_bins_take_msgpacks_smallest_header(tmp_path):
    for n, first in ((2, 0xC4), (3000, 0xC6)):  # 48 B of xyz: bin 8; 72 kB: bin 32
        rows = np.zeros(n, SPILL)
        rows["x"] = np.arange(n)
        path = tmp_path / f"{n}.refl"
        with open(path, "wb") as out:
            write_reflection_table(out, rows)
        raw = path.read_bytes()
        assert raw[0] == 0x93  # an array of three
        head = msgpack.packb("xyzobs.px.value") + bytes([0x92]) + msgpack.packb("vec3<double>") + bytes([0x92])
        at = raw.index(head) + len(head) + len(msgpack.packb(n))
        assert raw[at] == first
        _, nrows, columns, _ = read_refl(path)
        assert nrows == n and np.array_equal(columns["xyzobs.px.value"][:, 0], np.arange(n) + 0.5)


def test_cxi_is_readable_while_it_is_written(tmp_path):
    cxi = _CxiFile(tmp_path / "a.cxi", (8, 6), "uint16")
    frame = np.arange(48, dtype=np.uint16).reshape(8, 6)
    cxi.append(3, frame, {"x": np.array([1.0, 2.5]), "y": np.array([4.0, 0.25]), "intensity": np.array([9.0, 7.0])},
               series=1)
    with h5py.File(tmp_path / "a.cxi", "r", swmr=True) as f:
        n = f["entry_1/result_1/nPeaks"]
        assert n[:].tolist() == [2]
        many = np.arange(MAX_PEAKS + 5, dtype=float)
        cxi.append(4, frame, {"x": many, "y": many, "intensity": many}, series=1)
        n.refresh()
        f["entry_1/result_1/peakTotalIntensity"].refresh()
        assert n[:].tolist() == [2, MAX_PEAKS]
        kept = f["entry_1/result_1/peakTotalIntensity"][1]
        assert kept.min() == 5 and kept.max() == MAX_PEAKS + 4  # the strongest kept, in their order
    cxi.close()


def test_cxi_needs_an_mx_hit_column_and_says_so(tmp_path, caplog):
    context = SeriesContext(DiffractionSimulator(shape=(32, 32), n_frames=1).series_start(), Layout(), "", "",
                            facts={"file": str(tmp_path / "s.h5")})
    exporter = CxiExporter()
    with caplog.at_level(logging.WARNING):
        assert exporter.start_series(context) == {}
        assert exporter.end_series({}) == {}
    exporter.close()
    assert "cxi export: the chain finds no spots; no .cxi file" in caplog.text
    assert not (tmp_path / "s.cxi").exists()


def test_export_names_are_checked():
    assert parse({"output": {"export": ["cxi", "refl"]}}).output.export == ("cxi", "refl")
    with pytest.raises(ConfigError, match=r"output.export: must be one of 'refl', 'cxi', got 'mtz'"):
        parse({"output": {"export": ["mtz"]}}, origin="x.toml")


def test_refl_without_a_series_file_writes_nothing():
    start = DiffractionSimulator(shape=(32, 32), n_frames=1).series_start()
    layout = Layout()
    layout.kinds["spots"] = "spots"
    exporter = ReflExporter()
    assert exporter.start_series(SeriesContext(start, layout, "", "")) == {}
    exporter.add_rows(1, 0, {"spots": {"x": np.ones(2)}}, 0)
    assert exporter.end_series({}) == {} and exporter.rows == 0
    exporter.close()


def test_a_cxi_export_that_falls_behind_counts_every_hit_not_saved_and_says_so_now_and_then(caplog):
    """A disk too slow for the hits: each refused hit is counted, the log gets a line, not one per hit
    (a service whose stderr nobody reads must not block on its own log)."""
    exporter = CxiExporter()
    exporter._hit, exporter._spots = "hit", "spots"  # as start_series sets them for a chain with mx and spots
    release = threading.Event()
    exporter._worker.offer(release.wait)  # the writer thread stuck, as on a disk that does not keep up
    frame = np.zeros((4, 5), np.uint16)
    try:
        with caplog.at_level("ERROR", logger="livediff.sinks.cxi"):
            for i in range(200):
                exporter.add_frame(FrameOutput(1, i, 0, {"hit": 1}, {}, {"spots": {}}, frame))
    finally:
        release.set()
        exporter._worker.close()
    lines = [r for r in caplog.records if "cxi export is behind" in r.getMessage()]
    assert exporter.hits + exporter.not_saved == 200 and exporter.not_saved >= 200 - 32 - 1
    assert 1 <= len(lines) <= 2 and "1 hits not saved so far" in lines[0].getMessage()
