"""Replay of recorded series: livediff files and NXmx / EIGER master files, read lazily, sent in every protocol.

References are independent of the reader: the simulator's frames, the arrays the tests write with h5py, the
conventions spelled out by hand (NXmx beam centre from the pixel corner, pixel_mask 0 = good), and a first run
of the service whose results the replay must reproduce.
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from checks import pixels
from harness import config, free_endpoint, running
from livediff.cli import main
from livediff.model import Geometry, SeriesStart
from livediff.outputs import Layout
from livediff.readers.series import open_series
from livediff.replay import replay
from livediff.sinks.series_file import SeriesFile
from livediff.sources import codecs, native
from livediff.sources.dectris_v1 import StreamV1Decoder
from livediff.sources.dectris_v2 import StreamV2Decoder
from livediff.sources.sender import stream_series
from simulators import DiffractionSimulator

PROTOCOLS = ["native", "dectris-stream1", "dectris-stream2"]
ENCODINGS = ["raw", "bslz4", "lz4"]
_TIMING = ("timestamp", "received", "latency_s")
_OPERATORS = {"summary": {}, "spots": {}, "stats": {}}
_BSLZ4 = hdf5plugin.Bitshuffle(cname="lz4")


def _sim() -> DiffractionSimulator:
    return DiffractionSimulator(shape=(48, 70), n_frames=12, n_spots=6, seed=29, dtype="uint32")


async def _serve(tmp: Path, protocol: str, send) -> tuple[dict, Path]:
    """Run the service (summary, spots, stats; raw frames saved), feed it with ``send(endpoint)``."""
    cfg = config(tmp, source={"protocol": protocol, "endpoint": "tcp://127.0.0.1:*"}, output={"save_raw": True},
                 operators=_OPERATORS)
    async with running(cfg) as (service, sub):
        await asyncio.to_thread(send, service.receiver.endpoint_bound)
        end = await sub.wait_for(lambda t, m: t == "series" and m["type"] == "end")
    return end, Path(end["file"])


def _contents(path: Path) -> dict[str, object]:
    """Everything a run leaves in its file that must not depend on the run: datasets (frames table without its
    wall-clock columns) and the series attributes."""
    out: dict[str, object] = {}
    with h5py.File(path, "r") as f:
        def visit(name: str, obj) -> None:
            if isinstance(obj, h5py.Dataset) and name not in ("entry/start_time", "entry/end_time",
                                                               "entry/end_time_estimated", "entry/livediff/config") \
                    and name not in {f"entry/livediff/per_frame/{c}" for c in _TIMING} \
                    and "detectorSpecific" not in name:   # Stream v2's own detector_translation
                value = obj[()]
                if name == "entry/livediff/frames":
                    value = {c: value[c] for c in value.dtype.names if c not in _TIMING}
                if name == "entry/livediff/provenance":
                    value = {k: v for k, v in json.loads(value).items() if k != "detector_translation"}
                out[name] = value
        f.visititems(visit)
        # meta is what the sending protocol's header carried (its dates, its key names), like the instrument's
        # detector_translation (Stream v2 only): not compared
        out["attrs"] = {k: np.asarray(v).tolist() for k, v in f["entry/livediff"].attrs.items() if k != "meta"}
        out["attrs"]["instrument"] = {k: v for k, v in json.loads(out["attrs"]["instrument"]).items()
                                      if k != "detector_translation"}
    return out


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> tuple[DiffractionSimulator, Path]:
    """A series as a detector sends it (Stream v1, bslz4: stored by direct chunk writes)."""
    sim = _sim()
    end, path = asyncio.run(_serve(tmp_path_factory.mktemp("original"), "dectris-stream1",
                                   lambda ep: stream_series(sim, ep, protocol="dectris-stream1", encoding="bslz4")))
    assert end["processed"] == sim.n_frames and end["bad"] == end["lost"] == 0
    return sim, path


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_livediff_file_replays_to_identical_results(recording, tmp_path, protocol, encoding):
    sim, original = recording
    end, path = await _serve(tmp_path, protocol, lambda ep: replay(original, ep, protocol=protocol, encoding=encoding))
    assert end["received"] == end["processed"] == end["expected"] == sim.n_frames
    assert end["bad"] == end["lost"] == end["dropped"] == end["failed"] == 0
    want, got = _contents(original), _contents(path)
    assert sorted(got) == sorted(want)
    assert want["entry/livediff/spots"].size > 0 and "entry/livediff/reductions/stats/mean" in want
    np.testing.assert_array_equal(want["entry/data/data"], [sim.frame(i) for i in range(sim.n_frames)])
    for name, value in want.items():
        if isinstance(value, dict):
            assert got[name].keys() == value.keys(), name
            for column in value:
                np.testing.assert_array_equal(got[name][column], value[column], err_msg=f"{name} {column}")
        else:
            np.testing.assert_array_equal(got[name], value, err_msg=name)
    if encoding == "bslz4":   # forwarded unchanged, stored unchanged
        with h5py.File(original, "r") as a, h5py.File(path, "r") as b:
            for i in range(sim.n_frames):
                assert b["entry/data/data"].id.read_direct_chunk((i, 0, 0)) == \
                    a["entry/data/data"].id.read_direct_chunk((i, 0, 0)), i


def _start(rng: np.random.Generator, shape=(37, 61), dtype="uint16", **kw) -> SeriesStart:
    return SeriesStart(**{"series": 7, "shape": shape, "dtype": dtype, "n_frames": 9, "mask": rng.random(shape) > 0.1,
                          "geometry": Geometry((12.25, 40.5), (75e-6, 172e-6), 0.3125, 0.9537),
                          "count_time": 0.002, "saturation": 60000, **kw})


def _series_file(path: Path, start: SeriesStart, frames: dict[int, np.ndarray | tuple[str, bytes]]) -> None:
    f = SeriesFile(path, start, Layout(), "text", save_raw=True, save_corrected=False)
    for i, frame in frames.items():
        f.add_frame({"frame": i}, raw=frame)
    f.close({"reason": "end"})


@pytest.mark.parametrize("dtype", ["uint16", "uint32", "float32"])
def test_livediff_file_header_and_frames_read_back(tmp_path, dtype):
    rng = np.random.default_rng(3)
    start = _start(rng, dtype=dtype)
    frames = {i: (rng.poisson(30, start.shape) + 1000 * i).astype(dtype) for i in (0, 1, 3, 4, 8)}
    frames[1] = ("bslz4", codecs.encode_bslz4(frames[1]))   # as received from a detector: a direct chunk write
    _series_file(tmp_path / "s.h5", start, frames)
    with open_series(tmp_path / "s.h5") as rec:
        got = rec.series_start()
        assert rec.layout == "livediff" and rec.chunk_encoding == "bslz4"
        np.testing.assert_array_equal(rec.indices, [0, 1, 3, 4, 8])
        assert (rec.series, rec.n_frames, got.series, got.shape, got.dtype, got.n_frames) == (7, 9, 7, start.shape,
                                                                                               dtype, 9)
        np.testing.assert_array_equal(got.mask, start.mask)
        assert got.geometry == start.geometry   # exactly: the units are livediff's own
        assert (got.count_time, got.saturation, got.scan, got.meta) == (0.002, 60000, None, {})
        for i, frame in frames.items():
            want = codecs.decode(frame[1], "bslz4", start.shape, dtype) if isinstance(frame, tuple) else frame
            assert rec.frame(i).dtype == np.dtype(dtype)
            np.testing.assert_array_equal(rec.frame(i), want)
            np.testing.assert_array_equal(codecs.decode(rec.chunk(i), "bslz4", start.shape, dtype), want)
        assert rec.chunk(1) == frames[1][1]
        with pytest.raises(ValueError, match=r"frame 2 is not recorded \(5 recorded: frames 0..8\)"):
            rec.frame(2)


def test_scan_and_meta_attributes_reach_the_header(tmp_path):
    start = _start(np.random.default_rng(4), mask=None)
    _series_file(tmp_path / "s.h5", start, {0: np.ones(start.shape, "u2")})
    with h5py.File(tmp_path / "s.h5", "r+") as f:
        f["entry/livediff"].attrs.update({"scan": (3, 4), "meta": json.dumps({"sample": "LaB6", "run": 5})})
    with open_series(tmp_path / "s.h5", series=11) as rec:
        got = rec.series_start()
    assert (got.series, got.scan.shape, got.meta, got.mask) == (11, (3, 4), {"sample": "LaB6", "run": 5}, None)


_KILLED_WRITER = """
import os, signal, sys
import numpy as np
from livediff.model import SeriesStart
from livediff.outputs import Layout
from livediff.sinks.series_file import SeriesFile
start = SeriesStart(series=2, shape=(37, 61), dtype="uint16", n_frames=50)
f = SeriesFile(sys.argv[1], start, Layout(), "text", save_raw=True, save_corrected=False)
for i in range(6):
    f.add_frame({"frame": i}, raw=np.full((37, 61), 100 + i, "u2"))
f.flush()
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_file_of_a_killed_writer_replays(tmp_path):
    path = tmp_path / "killed.h5"
    done = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(path)], cwd=Path(__file__).parent.parent,
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == -9, done.stderr.decode()
    with open_series(path) as rec:
        np.testing.assert_array_equal(rec.indices, np.arange(6))
        assert rec.n_frames == 50
        for i in rec.indices:
            np.testing.assert_array_equal(rec.frame(i), np.full((37, 61), 100 + i, "u2"))


# ---------------------------------------------------------------- NXmx / EIGER master files
def _nxmx(directory: Path, frames: np.ndarray, flags: np.ndarray, *, per_file: list[int] | None = None,
          units: bool = False) -> Path:
    """An NXmx file as real detectors write it.

    Default: a DECTRIS EIGER master file (data_000001, ... external links to data files of ``per_file`` frames,
    bitshuffle-LZ4, one chunk per frame; DECTRIS names: detector_distance, detectorSpecific/
    countrate_correction_count_cutoff).  ``units``: one file, /entry/data/data, the NXmx names and other units
    (mm, um, nm, ms, beam centre as a length), and a second mask pixel_mask_2 OR-ed with the first.
    """
    master = directory / "sample_master.h5"
    rows, cols = frames.shape[1:]
    with h5py.File(master, "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        data = entry.create_group("data")
        data.attrs["NX_class"] = "NXdata"
        det = entry.create_group("instrument/detector")
        det.attrs["NX_class"] = "NXdetector"
        beam = entry.create_group("instrument/beam")
        beam.attrs["NX_class"] = "NXbeam"
        if units:
            data.create_dataset("data", data=frames, chunks=(1, rows, cols), **_BSLZ4)
            det["pixel_mask"] = flags & 0xFF
            det["pixel_mask_2"] = flags & ~np.uint32(0xFF)
            fields = {"x_pixel_size": (75.0, "um"), "y_pixel_size": (0.172, "mm"), "distance": (312.5, "mm"),
                      "beam_center_x": (41.0 * 0.075, "mm"), "beam_center_y": (12.75 * 0.172, "mm"),
                      "count_time": (2.0, "ms"), "saturation_value": (60000, None)}
            wavelength = (0.09537, "nm")
        else:
            det.create_dataset("pixel_mask", data=flags, compression="gzip")
            det["detectorSpecific/countrate_correction_count_cutoff"] = 60000
            fields = {"x_pixel_size": (75e-6, "m"), "y_pixel_size": (172e-6, "m"), "detector_distance": (0.3125, "m"),
                      "beam_center_x": (41.0, "pixel"), "beam_center_y": (12.75, "pixel"), "count_time": (0.002, "s")}
            wavelength = (0.9537, "angstrom")
            first = 0
            for k, n in enumerate(per_file, start=1):
                name = f"sample_data_{k:06d}.h5"
                with h5py.File(directory / name, "w") as d:
                    ds = d.create_dataset("entry/data/data", data=frames[first:first + n], chunks=(1, rows, cols),
                                          **_BSLZ4)
                    ds.attrs.update({"image_nr_low": first + 1, "image_nr_high": first + n})
                data[f"data_{k:06d}"] = h5py.ExternalLink(name, "/entry/data/data")
                first += n
        for name, (value, unit) in fields.items():
            det[name] = value
            if unit:
                det[name].attrs["units"] = unit
        beam["incident_wavelength"] = wavelength[0]
        beam["incident_wavelength"].attrs["units"] = wavelength[1]
    return master


def _flags(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """NXmx pixel flags: gap (bit 0), dead (1), noisy (4), user mask (8) and virtual pixel (31) = bad."""
    bits = rng.choice([0, 1, 2, 16, 256, 1 << 31], size=shape, p=[0.8, 0.04, 0.04, 0.04, 0.04, 0.04])
    return bits.astype(np.uint32)


def _frames(rng: np.random.Generator, n: int, shape: tuple[int, int], dtype: str) -> np.ndarray:
    frames = rng.poisson(20, (n, *shape)) + np.arange(n)[:, None, None] * 1000
    frames[:, 5, 7] = 60000 + np.arange(n)                     # saturated where the pixel is valid
    return frames.astype(dtype)


@pytest.mark.parametrize("units", [False, True])
@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_nxmx_header_and_frames(tmp_path, monkeypatch, dtype, units):
    rng = np.random.default_rng(8)
    shape = (37, 61)
    frames, flags = _frames(rng, 12, shape, dtype), _flags(rng, shape)
    master = _nxmx(tmp_path, frames, flags, per_file=[5, 5, 2], units=units)
    monkeypatch.chdir(tmp_path.parent)   # external links resolve next to the master file, not in the working dir
    with open_series(master) as rec:
        got = rec.series_start()
        assert (rec.layout, rec.series, rec.n_frames, rec.chunk_encoding) == ("nxmx", 1, 12, "bslz4")
        assert (got.shape, got.dtype, got.n_frames) == (shape, dtype, 12)
        np.testing.assert_array_equal(got.mask, flags == 0)
        assert got.geometry.beam_center == pytest.approx((12.25, 40.5), abs=1e-9)   # NXmx corner origin - 0.5
        assert got.geometry.pixel_size == pytest.approx((172e-6, 75e-6), rel=1e-12)
        assert (got.geometry.distance, got.geometry.wavelength, got.count_time) == pytest.approx(
            (0.3125, 0.9537, 0.002), rel=1e-12)
        assert got.saturation == 60000
        np.testing.assert_array_equal(rec.indices, np.arange(12))
        for i in range(12):
            np.testing.assert_array_equal(rec.frame(i), frames[i])
        if not units:
            with h5py.File(tmp_path / "sample_data_000003.h5", "r") as d:
                assert rec.chunk(11) == d["entry/data/data"].id.read_direct_chunk((1, 0, 0))[1]


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(per_file=st.lists(st.integers(1, 4), min_size=1, max_size=5), seed=st.integers(0, 2**16))
def test_nxmx_data_files_are_concatenated_in_name_order(per_file, seed):
    rng = np.random.default_rng(seed)
    frames = _frames(rng, sum(per_file), (9, 14), "uint16")
    with (tempfile.TemporaryDirectory() as tmp,
          open_series(_nxmx(Path(tmp), frames, _flags(rng, (9, 14)), per_file=per_file)) as rec):
        np.testing.assert_array_equal(rec.indices, np.arange(len(frames)))
        np.testing.assert_array_equal([rec.frame(i) for i in rec.indices], frames)
        np.testing.assert_array_equal([codecs.decode(rec.chunk(i), "bslz4", (9, 14), "uint16")
                                       for i in rec.indices], frames)


@pytest.mark.parametrize("protocol,encoding", [("dectris-stream2", "bslz4"), ("native", "raw"),
                                               ("dectris-stream1", "lz4")])
async def test_nxmx_file_replays_through_the_service(tmp_path, protocol, encoding):
    rng = np.random.default_rng(12)
    shape = (37, 61)
    frames, flags = _frames(rng, 7, shape, "uint32"), _flags(rng, shape)
    flags[5, 7] = 0                                            # the saturated pixel counts
    master = _nxmx(tmp_path, frames, flags, per_file=[3, 4])
    end, path = await _serve(tmp_path / "run", protocol,
                             lambda ep: replay(master, ep, protocol=protocol, encoding=encoding, series=5))
    assert end["series"] == 5 and end["received"] == end["processed"] == end["expected"] == 7
    valid = flags == 0
    with h5py.File(path, "r") as f:
        rows = f["entry/livediff/frames"][:]
        det = f["entry/instrument/detector"]
        np.testing.assert_array_equal(det["pixel_mask"][:] == 0, valid)
        assert (det["beam_center_x"][()], det["beam_center_y"][()]) == pytest.approx((41.0, 12.75), abs=1e-9)
        assert (det["x_pixel_size"][()], det["y_pixel_size"][()], det["distance"][()]) == pytest.approx(
            (75e-6, 172e-6, 0.3125), rel=1e-12)
        assert f["entry/instrument/beam/incident_wavelength"][()] == pytest.approx(0.9537, rel=1e-12)
        np.testing.assert_array_equal(f["entry/data/data"][:], frames)
    np.testing.assert_array_equal(rows["frame"], np.arange(7))
    np.testing.assert_array_equal(rows["sum"], [f[valid].sum(dtype=np.int64) for f in frames])
    np.testing.assert_array_equal(rows["n_saturated"], [(f[valid] >= 60000).sum() for f in frames])
    assert rows["n_saturated"].max() > 0


# ---------------------------------------------------------------- forwarding, without decompressing
class _ChunksOnly:
    """A recorded series whose frames cannot be decompressed: only its stored chunks can be sent."""

    def __init__(self, rec) -> None:
        self.rec, self.series, self.n_frames = rec, rec.series, rec.n_frames
        self.indices, self.chunk_encoding = rec.indices, rec.chunk_encoding

    def series_start(self) -> SeriesStart:
        return self.rec.series_start()

    def chunk(self, i: int) -> bytes | None:
        return self.rec.chunk(i)

    def frame(self, i: int) -> np.ndarray:
        raise AssertionError(f"frame {i} was decompressed")


def _receive(send, n: int) -> list[list[bytes]]:
    """Up to ``n`` messages that ``send(endpoint)``, run on a thread, sends; its exception is raised here."""
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    try:
        with ThreadPoolExecutor(1) as pool:
            sender = pool.submit(send, f"tcp://127.0.0.1:{port}")
            messages = [pull.recv_multipart() for _ in range(n) if pull.poll(20_000)]
            sender.result(timeout=30)
    finally:
        pull.close()
        ctx.term()
    return messages


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_stored_bslz4_chunks_are_forwarded_unchanged(tmp_path, protocol):
    rng = np.random.default_rng(21)
    frames = _frames(rng, 5, (37, 61), "uint16")
    master = _nxmx(tmp_path, frames, _flags(rng, (37, 61)), per_file=[2, 3])
    with open_series(master) as rec:
        chunks = [rec.chunk(i) for i in range(5)]
        messages = _receive(lambda ep: stream_series(_ChunksOnly(rec), ep, protocol=protocol, encoding="bslz4"), 7)
    decode = {"native": lambda parts: [native.decode(parts)], "dectris-stream1": StreamV1Decoder(),
              "dectris-stream2": StreamV2Decoder()}[protocol]
    events = [e for parts in messages for e in decode(parts)]
    start = events[0]
    np.testing.assert_array_equal(start.mask, rec.series_start().mask)
    got = [e for e in events if hasattr(e, "index")]
    assert [f.index for f in got] == list(range(5)) and all(f.payload.encoding == "bslz4" for f in got)
    assert [bytes(f.payload.buffer) for f in got] == chunks
    np.testing.assert_array_equal([pixels(f) for f in got], frames)


def test_other_encodings_send_the_decoded_frames(tmp_path):
    rng = np.random.default_rng(22)
    frames = _frames(rng, 4, (37, 61), "uint32")
    master = _nxmx(tmp_path, frames, _flags(rng, (37, 61)), per_file=[4])
    with open_series(master) as rec, pytest.raises(AssertionError, match="frame 0 was decompressed"):
        _receive(lambda ep: stream_series(_ChunksOnly(rec), ep, encoding="lz4"), 1)
    with open_series(master) as rec:
        messages = _receive(lambda ep: stream_series(rec, ep, encoding="lz4", rate=400.0), 6)
    got = [native.decode(parts) for parts in messages[1:-1]]
    assert [f.payload.encoding for f in got] == ["lz4"] * 4
    np.testing.assert_array_equal([pixels(f) for f in got], frames)


# ---------------------------------------------------------------- errors
def _write(path: Path, build) -> Path:
    with h5py.File(path, "w") as f:
        build(f)
    return path


def _broken_link(tmp: Path) -> Path:
    master = _nxmx(tmp, np.ones((3, 9, 14), "u2"), np.zeros((9, 14), "u4"), per_file=[1, 2])
    (tmp / "sample_data_000002.h5").unlink()
    return master


@pytest.mark.parametrize("make,error,message", [
    (lambda t: t / "nothing.h5", OSError, r"nothing.h5: no such file"),
    (lambda t: (t / "text.h5").write_text("not hdf5") and t / "text.h5", OSError, r"text.h5: cannot open as HDF5"),
    (lambda t: _write(t / "empty.h5", lambda f: f.create_group("entry/instrument")), ValueError,
     r"empty.h5: no frames: expected /entry/data/data_000001"),
    (lambda t: _write(t / "ours.h5", lambda f: f.create_group("entry/livediff")), ValueError,
     r"ours.h5: no recorded frames: /entry/data/data is missing \(.*save_raw = true\)"),
    (_broken_link, OSError,
     r"sample_master.h5: /entry/data/data_000002 links to sample_data_000002.h5:/entry/data/data, which cannot"),
    (lambda t: _write(t / "i16.h5", lambda f: f.create_dataset("entry/data/data", data=np.ones((2, 9, 14), "i2"))),
     ValueError, r"frames are int16, livediff takes uint8, uint16"),
    (lambda t: _write(t / "shapes.h5", lambda f: (f.create_dataset("entry/data_000001", data=np.ones((2, 9, 14))),
                                                   f.create_dataset("entry/data_000002", data=np.ones((2, 9, 15))))),
     ValueError, r"/entry/data_000002 holds float64 \(2, 9, 15\), expected \(frames, 9, 14\)"),
    (lambda t: _write(t / "mm.h5", lambda f: (f.create_dataset("entry/data/data", data=np.ones((2, 9, 14), "u2")),
                                               f.create_dataset("entry/instrument/detector/beam_center_x", data=3.0),
                                               f.create_dataset("entry/instrument/detector/beam_center_y", data=3.0),
                                               f["entry/instrument/detector/beam_center_x"].attrs.create("units",
                                                                                                          "mm"))),
     ValueError, r"beam_center_x is a length \(mm\) but the pixel size is not recorded"),
    (lambda t: _write(t / "furlong.h5", lambda f: (
        f.create_dataset("entry/data/data", data=np.ones((2, 9, 14), "u2")),
        f.create_dataset("entry/instrument/detector/distance", data=3.0),
        f["entry/instrument/detector/distance"].attrs.create("units", "furlong"))),
     ValueError, r"/entry/instrument/detector/distance has units 'furlong'"),
    (lambda t: _write(t / "mask.h5", lambda f: (f.create_dataset("entry/data/data", data=np.ones((2, 9, 14), "u2")),
                                                 f.create_dataset("entry/instrument/detector/pixel_mask",
                                                                  data=np.zeros((14, 9), "u4")))),
     ValueError, r"pixel_mask is uint32 \(14, 9\), expected integer flags of the frame shape \(9, 14\)"),
])
def test_unusable_files_are_refused_clearly(tmp_path, make, error, message):
    with pytest.raises(error, match=message):
        open_series(make(tmp_path))


@pytest.mark.parametrize("make", [lambda t: t / "nothing.h5", _broken_link,
                                  lambda t: _write(t / "empty.h5", lambda f: f.create_group("entry"))])
def test_cli_reports_a_bad_file_in_one_line(tmp_path, capsys, make):
    assert main(["--log-level", "error", "replay", str(make(tmp_path)), "--endpoint", free_endpoint()]) == 1
    err = capsys.readouterr().err
    assert err.startswith("livediff replay: ") and err.count("\n") == 1 and "Traceback" not in err


def test_cli_replays_a_file(tmp_path, capsys):
    rng = np.random.default_rng(30)
    frames = _frames(rng, 6, (37, 61), "uint16")
    master = _nxmx(tmp_path, frames, _flags(rng, (37, 61)), per_file=[6])
    args = ["--log-level", "error", "replay", str(master), "--protocol", "dectris-stream2", "--rate", "300"]
    codes: list[int] = []
    messages = _receive(lambda ep: codes.append(main([*args, "--endpoint", ep])), 8)
    assert codes == [0] and len(messages) == 8
    assert "sample_master.h5: 6 of 6 recorded frames sent to tcp://127.0.0.1:" in capsys.readouterr().out


def test_cli_refuses_an_unknown_protocol(tmp_path, capsys):
    master = _nxmx(tmp_path, np.ones((2, 9, 14), "u2"), np.zeros((9, 14), "u4"), per_file=[2])
    assert main(["replay", str(master), "--endpoint", free_endpoint(), "--protocol", "smoke-signals"]) == 1
    assert "protocol must be one of native, dectris-stream1, dectris-stream2, got 'smoke-signals'" in \
        capsys.readouterr().err
