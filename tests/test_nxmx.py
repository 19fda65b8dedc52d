"""Series files read by the field's own programs, not by livediff: nxmx (DIALS' NXmx reader), nexusformat's
validator, fabio and silx; the CrystFEL geometry beside a recording; missing frames flagged.

The references are the simulators' ground truth (the geometry and goniometer they send) and NXmx's conventions
spelled out here: beam centre from the corner of pixel (0, 0), so livediff's (row, col) + 0.5; the panel origin
in the NeXus (McStas) frame at (bx px, by py, distance).
"""
from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import fabio
import h5py
import numpy as np
import nxmx
import pytest
import silx.io
from nexusformat.nexus.validate import validate_application, validate_file
from silx.io.nxdata import NXdata, get_default

from harness import config, running
from livediff.model import Scan
from livediff.readers.series import open_series
from livediff.sources.sender import stream_series
from simulators import DiffractionSimulator
from simulators.powder import PowderSimulator
from simulators.rotation import RotationSimulator


async def _record(tmp: Path, sim, protocol: str, operators: dict, *, source: dict | None = None,
                  output: dict | None = None, indices=None) -> tuple[dict, Path]:
    cfg = config(tmp, source={"protocol": protocol, **(source or {})},
                 output={"save_raw": True, **(output or {})}, operators=operators)
    if indices is not None:
        sim.indices = indices   # the frames the detector gets out: the others are lost on the way
    async with running(cfg) as (service, sub):
        await asyncio.to_thread(stream_series, sim, cfg.source.endpoint, protocol=protocol, encoding="bslz4")
        end = await sub.wait_for(lambda t, m: t == "series" and m["type"] == "end")
    return end, Path(end["file"])


@pytest.fixture(scope="module")
def rotation(tmp_path_factory) -> tuple[RotationSimulator, Path]:
    """A rotation series as an EIGER sends it (Stream v1, bslz4), recorded."""
    sim = RotationSimulator(shape=(96, 128), n_frames=12, seed=1, n_spots=10, omega_start=-5.0, omega_increment=0.25)
    end, path = asyncio.run(_record(tmp_path_factory.mktemp("rotation"), sim, "dectris-stream1",
                                    {"summary": {}, "stats": {}}))
    assert end["processed"] == sim.n_frames
    return sim, path


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> tuple[DiffractionSimulator, Path]:
    """A grid scan of stills (Stream v2, the scan from the config), spots and mx maps, recorded."""
    sim = DiffractionSimulator(shape=(96, 128), n_frames=12, n_spots=20, seed=2, scan=Scan((3, 4)))
    end, path = asyncio.run(_record(tmp_path_factory.mktemp("grid"), sim, "dectris-stream2",
                                    {"summary": {}, "spots": {"mode": "2d"}, "mx": {"min_spots": 3}},
                                    source={"scan": [3, 4]}))
    assert end["processed"] == sim.n_frames
    return sim, path


def _nxmx_geometry(path: Path) -> dict:
    """What DIALS' nxmx reader derives from the file, in livediff's units (as dxtbx's FormatNXmx does)."""
    with h5py.File(path, "r") as f:
        (entry,) = nxmx.NXmx(f).entries
        instrument, sample = entry.instruments[0], entry.samples[0]
        detector = instrument.detectors[0]
        (module,) = detector.modules
        origin = nxmx.get_cumulative_transformation(nxmx.get_dependency_chain(module.module_offset))[0, :3, 3]
        px = module.fast_pixel_direction[()].to("mm").magnitude.item()
        py = module.slow_pixel_direction[()].to("mm").magnitude.item()
        out = {"definition": entry.definition, "origin_mm": origin, "pixel_mm": (py, px),
               "fast": tuple(module.fast_pixel_direction.vector), "slow": tuple(module.slow_pixel_direction.vector),
               "size": tuple(module.data_size), "data_origin": tuple(module.data_origin),
               "wavelength": instrument.beams[0].incident_wavelength.to("angstrom").magnitude,
               "sensor": (detector.sensor_material, detector.sensor_thickness.to("m").magnitude),
               "frames": entry.data[0]["data"].shape[0], "rotation": None}
        if sample.depends_on is not None:
            axes = nxmx.get_rotation_axes(nxmx.get_dependency_chain(sample.depends_on))
            out["rotation"] = {"names": list(axes.names), "vectors": axes.axes.tolist(),
                               "scan": list(axes.is_scan_axis),
                               "angles": sample.depends_on[()].to("deg").magnitude}
    return out


def _beam_centre_and_distance(got: dict) -> tuple[tuple[float, float], float]:
    """Beam centre (row, col) with livediff's pixel-centre origin, and distance in m, from the panel origin: the
    beam (x = y = 0) lies origin / pixel size pixels from the corner along the -x (fast) and -y (slow) directions."""
    (py, px), (ox, oy, oz) = got["pixel_mm"], got["origin_mm"]
    assert got["fast"] == (-1, 0, 0) and got["slow"] == (0, -1, 0)
    return (oy / py - 0.5, ox / px - 0.5), oz / 1000.0


def test_nxmx_reads_a_rotation_series_as_the_simulator_sent_it(rotation):
    sim, path = rotation
    got = _nxmx_geometry(path)
    truth = sim.series_start().geometry
    centre, distance = _beam_centre_and_distance(got)
    assert got["definition"] == "NXmx"
    assert centre == pytest.approx(truth.beam_center, abs=1e-9)
    assert distance == pytest.approx(truth.distance, rel=1e-12)
    assert np.array(got["pixel_mm"]) * 1e-3 == pytest.approx(truth.pixel_size, rel=1e-12)
    assert got["wavelength"] == pytest.approx(truth.wavelength, rel=1e-12)
    assert got["size"] == sim.shape and got["data_origin"] == (0, 0) and got["frames"] == sim.n_frames
    assert got["sensor"] == ("Si", pytest.approx(450e-6))
    rot = got["rotation"]
    assert rot["names"] == ["omega"] and rot["scan"] == [True] and rot["vectors"] == [[-1.0, 0.0, 0.0]]
    np.testing.assert_allclose(rot["angles"], sim.angles(), rtol=0, atol=1e-12)
    with h5py.File(path, "r") as f:
        det = f["entry/instrument/detector"]
        np.testing.assert_array_equal(det["pixel_mask"][()], sim.pixel_flags)   # the detector's bits
        assert det["saturation_value"][()] == sim.series_start().saturation
        assert det["count_time"][()] == pytest.approx(0.01) and det["count_time"].attrs["units"] == "s"
        provenance = json.loads(f["entry/livediff/provenance"][()])
    assert provenance["sensor_material"] == provenance["rotation"] == provenance["distance"] == "header"
    assert provenance["rotation_vector"] == "default"


def test_nxmx_reads_a_grid_scan_as_stills(grid):
    sim, path = grid
    got = _nxmx_geometry(path)
    truth = sim.series_start().geometry
    centre, distance = _beam_centre_and_distance(got)
    assert centre == pytest.approx(truth.beam_center, abs=1e-9) and distance == pytest.approx(truth.distance)
    assert np.array(got["pixel_mm"]) * 1e-3 == pytest.approx(truth.pixel_size, rel=1e-12)
    assert got["wavelength"] == pytest.approx(truth.wavelength)
    assert got["rotation"] is None   # no goniometer turns: sample depends_on "."
    with h5py.File(path, "r") as f:
        assert f["entry/sample/depends_on"][()] == b"."
        np.testing.assert_array_equal(f["entry/instrument/detector/pixel_mask"][()], sim.pixel_flags)
        assert {1, 2} <= set(np.unique(f["entry/instrument/detector/pixel_mask"][()]))   # gap, dead bits


@pytest.mark.parametrize("which", ["rotation", "grid"])
def test_nexusformat_validates_the_tree(which, request, caplog):
    _, path = request.getfixturevalue(which)
    caplog.set_level(logging.INFO)
    assert validate_application(str(path))[1] == 0   # NXmx: no errors (warnings: recommended fields left out)
    warnings, errors = validate_file(str(path))
    invalid = [r.getMessage() for r in caplog.records if "invalid" in r.getMessage()]
    # NXmx puts NXsource in NXentry, which the NXentry base class does not list: that one error only
    assert errors == 1 and len(invalid) == 1 and "NXsource is an invalid class in NXentry" in invalid[0]


def test_fabio_and_silx_open_the_recording(rotation):
    sim, path = rotation
    image = fabio.open(str(path))
    assert image.nframes == sim.n_frames
    for i in (0, 7):
        np.testing.assert_array_equal(image.getframe(i).data, sim.frame(i))
    with silx.io.open(str(path)) as f:
        default = get_default(f)
        assert default is not None and default.is_valid and default.group.name == "/entry/livediff/reductions/stats"
        assert default.signal_name == "mean" and default.signal.shape == sim.shape
        raw = NXdata(f["entry/data"])
        assert raw.is_valid and raw.signal.shape == (sim.n_frames, *sim.shape) and raw.interpretation == "image"
        per_frame = NXdata(f["entry/livediff/per_frame"])
        assert per_frame.is_valid and per_frame.axes_dataset_names == ["frame"]
        np.testing.assert_array_equal(per_frame.axes[0][()], np.arange(sim.n_frames))


def test_scan_maps_are_the_default_plot_and_every_result_group_is_valid_nxdata(grid):
    sim, path = grid
    with silx.io.open(str(path)) as f:
        default = get_default(f)
        assert default.group.name == "/entry/livediff/maps/mx" and default.signal.shape == sim.scan.shape
        assert default.axes_dataset_names == ["scan_y", "scan_x"]
        found = []
        f.visititems(lambda name, obj: found.append(name) if obj.attrs.get("NX_class") == "NXdata" else None)
        assert {"entry/data", "entry/livediff/maps/mx", "entry/livediff/per_frame"} <= set(found)
        for name in found:
            assert NXdata(f[name]).is_valid, (name, NXdata(f[name]).issues)


def test_powder_chain_plots_i_of_q_with_units(tmp_path):
    sim = PowderSimulator(n_frames=4, seed=3)
    end, path = asyncio.run(_record(tmp_path, sim, "native", {"summary": {}, "stats": {},
                                                               "azimuthal": {"bin_width": 2.0}},
                                    output={"save_raw": False}))
    with silx.io.open(str(path)) as f:
        default = get_default(f)
        assert default.group.name == "/entry/livediff/reductions/azimuthal"
        assert default.signal_name == "mean" and default.axes_dataset_names == ["q"]
        assert f["entry/livediff/reductions/azimuthal/q"].attrs["units"] == "1/angstrom"
        assert f["entry/livediff/reductions/azimuthal"].attrs["radius_indices"] == 0
        profile = NXdata(f["entry/livediff/azimuthal"])   # the per-frame profiles, against frame and q
        assert profile.is_valid and profile.axes_dataset_names == ["frame", "q"]
        # without raw frames /entry/data is the default plot, not an empty NXdata, and the entry claims no NXmx
        assert NXdata(f["entry/data"]).is_valid and f["entry/data"] == f["entry/livediff/reductions/azimuthal"]
        assert "definition" not in f["entry"]
    assert not path.with_suffix(".geom").exists()


def test_crystfel_geometry_beside_the_recording(rotation):
    sim, path = rotation
    geom = dict(line.split(" = ", 1) for line in path.with_suffix(".geom").read_text().splitlines()
                if " = " in line)
    truth = sim.series_start().geometry
    (row, col), (_, px) = truth.beam_center, truth.pixel_size
    assert float(geom["p0/corner_x"]) == pytest.approx(-(col + 0.5)) and float(geom["p0/corner_y"]) == pytest.approx(
        -(row + 0.5))
    assert float(geom["res"]) == pytest.approx(1 / px) and geom["clen"] == f"{truth.distance:.8g} m"
    assert float(geom["photon_energy"].split()[0]) == pytest.approx(12398.419843320026 / truth.wavelength)
    assert (geom["data"], geom["dim0"], geom["dim1"], geom["dim2"]) == ("/entry/data/data", "%", "ss", "fs")
    assert (geom["p0/max_fs"], geom["p0/max_ss"], geom["mask"]) == (
        str(sim.shape[1] - 1), str(sim.shape[0] - 1), "/entry/instrument/detector/pixel_mask")


def test_missing_frames_are_flagged_counted_and_skipped_on_replay(tmp_path):
    sim = RotationSimulator(shape=(40, 48), n_frames=10, seed=4, n_spots=3)
    sent = [0, 1, 2, 4, 5, 7, 8]   # 3 and 6 lost on the way, 9 (the last) too
    end, path = asyncio.run(_record(tmp_path, sim, "native", {"summary": {}}, indices=sent))
    assert end["processed"] == len(sent)
    with h5py.File(path, "r") as f:
        written = f["entry/livediff/written"][()]
        summary = f["entry/livediff/summary"][0]
        assert f["entry/data/data"].shape[0] == sim.n_frames   # one slot per announced frame
        assert len(f["entry/sample/transformations/omega"]) == sim.n_frames
    np.testing.assert_array_equal(np.flatnonzero(written), sent)
    assert len(written) == sim.n_frames
    assert (summary["written"], summary["missing"], summary["complete"]) == (7, 3, 0)
    with open_series(path) as rec:   # the reader uses the flags: an unwritten frame is never replayed as zeros
        np.testing.assert_array_equal(rec.indices, sent)
        got = rec.series_start()
        assert got.instrument.goniometer == (("omega", sim.omega_start, sim.omega_increment),)
        np.testing.assert_array_equal(got.instrument.pixel_flags, sim.pixel_flags)


def test_config_fills_what_the_header_lacks_and_says_so(tmp_path):
    sim = DiffractionSimulator(shape=(40, 48), n_frames=3, n_spots=2, seed=5)
    instrument = {"sensor_material": "CdTe", "sensor_thickness": 1e-3, "saturation_value": 12345,
                  "distance": 9.0, "rotation": [30.0, 0.5]}
    end, path = asyncio.run(_record(tmp_path, sim, "native", {"summary": {}}, output={"instrument": instrument}))
    with h5py.File(path, "r") as f:
        det = f["entry/instrument/detector"]
        provenance = json.loads(f["entry/livediff/provenance"][()])
        # the simulator's header sends a silicon sensor and the distance: they win; the rest is the config's
        assert det["sensor_material"][()] == b"Si" and det["sensor_thickness"][()] == pytest.approx(450e-6)
        assert det["distance"][()] == pytest.approx(sim.distance) and det["saturation_value"][()] == 12345
        np.testing.assert_allclose(f["entry/sample/transformations/omega"][()], 30.0 + 0.5 * np.arange(3))
    assert (provenance["sensor_material"], provenance["distance"]) == ("header", "header")
    assert (provenance["saturation_value"], provenance["rotation"]) == ("config", "config")


@pytest.mark.parametrize("protocol", ["native", "dectris-stream1", "dectris-stream2"])
def test_every_protocol_carries_the_instrument(protocol):
    from livediff.sources.dectris_v1 import StreamV1Decoder
    from livediff.sources.dectris_v2 import StreamV2Decoder
    from livediff.sources.native import decode
    from livediff.sources.sender import ENCODERS

    sim = RotationSimulator(shape=(40, 48), n_frames=3, seed=6, n_spots=2)
    truth = sim.series_start()
    encoder = ENCODERS[protocol](encoding="bslz4")
    decoder = {"native": lambda parts: [decode(parts)], "dectris-stream1": StreamV1Decoder(),
               "dectris-stream2": StreamV2Decoder()}[protocol]
    events = decoder(encoder.start(truth)) + decoder(encoder.image(1, 0, sim.frame(0)))
    got = events[0].instrument
    assert (got.sensor_material, got.sensor_thickness, got.frame_time, got.description, got.serial_number) == (
        "Si", 450e-6, 0.01, "simulated EIGER2", "SIM-ROT")
    assert got.rotation == ("omega", sim.omega_start, sim.omega_increment)
    np.testing.assert_array_equal(got.pixel_flags, sim.pixel_flags)
    assert got.pixel_flags.dtype == np.uint32 and not got.pixel_flags.flags.writeable


def test_instrument_settings_are_checked_like_every_other_key(tmp_path):
    from livediff.errors import ConfigError

    with pytest.raises(ConfigError, match=r"output.instrument.sensor_thicknes: unknown key \(did you mean "
                                          r"'sensor_thickness'\?\)\n.*output.instrument.distance: must be > 0"):
        config(tmp_path, output={"instrument": {"sensor_thicknes": 1e-3, "distance": -1.0}})
    cfg = config(tmp_path, output={"instrument": {"sensor_material": "GaAs"}})
    assert cfg.output.instrument.sensor_material == "GaAs"
    assert 'sensor_material = "GaAs"' in cfg.effective and "[output.instrument]" in cfg.effective
