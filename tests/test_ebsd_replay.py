"""EBSD files as users have them (image folders, zips, h5ebsd, NORDIF, EDAX), replayed: the same maps as live."""
from __future__ import annotations

import asyncio
import tomllib
import zipfile
from pathlib import Path

import h5py
import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from harness import config, running

from livediff.model import Scan
from livediff.readers.ebsd import is_ebsd, open_patterns
from livediff.replay import replay
from livediff.sources.sender import stream_series
from simulators.ebsd import EbsdSimulator

REPO = Path(__file__).resolve().parent.parent
SIM = EbsdSimulator(scan=(6, 7), shape=(40, 44), grains=4, seed=8)


def _chain() -> dict:
    with open(REPO / "configs" / "ebsd.toml", "rb") as f:
        chain = tomllib.load(f)["operators"]
    chain["static"]["min_patterns"] = 8  # a small scan: the running mean applies from pattern 16 on
    chain["static"]["update_every"] = 8
    return chain


async def _maps(tmp_path: Path, send) -> dict[str, np.ndarray]:
    cfg = config(tmp_path, pipeline={"workers": 2, "snapshot_period": 0}, operators=_chain())
    async with running(cfg) as (service, sub):
        await asyncio.to_thread(send, cfg.source.endpoint)
        end = await sub.wait_for(lambda t, m: t == "series" and m["type"] == "end")
    with h5py.File(end["file"], "r") as f:
        maps = f["entry/livediff/maps"]
        return {f"{op}/{name}": maps[op][name][:] for op in maps for name in maps[op]
                if name not in ("scan_y", "scan_x")}  # NXdata axes


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> dict[str, np.ndarray]:
    maps = asyncio.run(_maps(tmp_path_factory.mktemp("live"), lambda ep: stream_series(SIM, ep)))
    assert set(maps) == {"average/iq", "quality/iq", "quality/adp"}
    assert not any(np.isnan(m).any() for m in maps.values())
    return maps


def _write_images(folder: Path, name, suffix: str) -> None:
    folder.mkdir()
    patterns = SIM.patterns()
    for y in range(SIM.scan[0]):
        for x in range(SIM.scan[1]):
            path = folder / f"{name(y, x)}{suffix}"
            tifffile.imwrite(path, patterns[y, x]) if suffix == ".tif" else iio.imwrite(path, patterns[y, x])


def _tiff_folder(tmp_path: Path) -> tuple[Path, Scan | None]:
    """Natural order: pattern_2 before pattern_10 (a plain sort would swap them); the scan is given."""
    cols = SIM.scan[1]
    _write_images(tmp_path / "tiffs", lambda y, x: f"pattern_{y * cols + x + 1}", ".tif")
    return tmp_path / "tiffs", SIM.grid


def _zip_of_named_pngs(tmp_path: Path) -> tuple[Path, Scan | None]:
    """Positions in the names (NORDIF's export: x is the column, y the row), in a zip in scrambled order."""
    _write_images(tmp_path / "pngs", lambda y, x: f"scan_x{x}y{y}", ".png")
    archive = tmp_path / "patterns.zip"
    files = sorted((tmp_path / "pngs").iterdir(), key=lambda p: hash(p.name))
    with zipfile.ZipFile(archive, "w") as zf:
        for path in files:
            zf.write(path, f"patterns/{path.name}")
    return archive, None


def _h5ebsd(tmp_path: Path) -> tuple[Path, Scan | None]:
    """kikuchipy's h5ebsd layout: patterns (N, H, W) in Scan 1/EBSD/Data, the scan size in the header."""
    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as f:
        f.attrs["manufacturer"], f.attrs["version"] = "kikuchipy", "0.13"
        scan = f.create_group("Scan 1")
        scan.create_dataset("EBSD/Data/patterns", data=SIM.patterns().reshape(-1, *SIM.shape),
                            chunks=(1, *SIM.shape))
        scan["EBSD/Header/n_rows"], scan["EBSD/Header/n_columns"] = SIM.scan
        scan["EBSD/Header/pattern_height"], scan["EBSD/Header/pattern_width"] = SIM.shape
    return path, None


@pytest.mark.parametrize("make", [_tiff_folder, _zip_of_named_pngs, _h5ebsd], ids=["tiff-folder", "zip", "h5ebsd"])
async def test_replayed_files_give_the_maps_of_the_live_scan(tmp_path, live, make):
    path, scan = make(tmp_path)
    assert is_ebsd(path)
    with open_patterns(path, scan=scan) as source:
        assert source.scan.shape == SIM.scan and source.indices == list(range(SIM.n_frames))
        np.testing.assert_array_equal(source.frame(9), SIM.frame(9))
    replayed = await _maps(tmp_path / "out", lambda ep: replay(path, ep, scan=scan, encoding="raw"))
    assert replayed.keys() == live.keys()
    for name in live:
        np.testing.assert_array_equal(replayed[name], live[name], err_msg=name)


def test_missing_files_are_holes_and_bruker_h5ebsd_names_its_patterns_rawpatterns(tmp_path):
    _write_images(tmp_path / "bmps", lambda y, x: f"x{x}y{y}", ".bmp")
    (tmp_path / "bmps" / "x3y2.bmp").unlink()
    with open_patterns(tmp_path / "bmps") as source:
        assert source.scan == Scan(SIM.scan) and len(source.indices) == SIM.n_frames - 1
        assert 2 * SIM.scan[1] + 3 not in source.indices
        np.testing.assert_array_equal(source.frame(2 * SIM.scan[1] + 4), SIM.patterns()[2, 4])
    path = tmp_path / "bruker.h5"
    with h5py.File(path, "w") as f:
        f["Scan 0/EBSD/Data/RawPatterns"] = SIM.patterns().reshape(-1, *SIM.shape)
        f["Scan 0/EBSD/Header/NROWS"], f["Scan 0/EBSD/Header/NCOLS"] = SIM.scan
    with open_patterns(path, scan=Scan(SIM.scan, order="serpentine")) as source:  # the caller's scan wins
        assert source.scan.order == "serpentine" and source.n_frames == SIM.n_frames
    with pytest.raises(ValueError, match="no .tif, .tiff, .png, .bmp files"):
        (tmp_path / "empty").mkdir()
        open_patterns(tmp_path / "empty")
    with pytest.raises(OSError, match="no such file"):
        open_patterns(tmp_path / "nothing.zip")
    (tmp_path / "other.h5").write_bytes(b"")
    assert not is_ebsd(tmp_path / "other.h5")


@pytest.mark.filterwarnings("ignore:Returned signal has one navigation dimension")  # EDAX's hexagonal grid
@pytest.mark.parametrize("name", ["nordif/Pattern.dat", "edax_binary/edax_binary.up1", "edax_binary/edax_binary.up2"])
def test_nordif_and_edax_binary_files_are_read_through_kikuchipy(name):
    kp = pytest.importorskip("kikuchipy")
    path = Path(kp.__file__).parent / "data" / name  # the small files kikuchipy ships for its tests
    expected = kp.load(path).data
    grid = expected.shape[:-2] if expected.ndim == 4 else (1, expected.shape[0])  # a line scan: one row
    flat = expected.reshape(-1, *expected.shape[-2:])
    with open_patterns(path) as source:
        assert source.scan.shape == grid and source.shape == expected.shape[-2:]
        for i in (0, source.n_frames - 1):
            np.testing.assert_array_equal(source.frame(i), flat[i])
