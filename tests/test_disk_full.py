"""A full disk mid-series is survived, counted and said (issue 18, rows 6 and 7).

The service runs in a child process (``disk_full_child.py``): before the fix libhdf5
crashed it.  Two ways to fill a disk: a small tmpfs in a mount namespace of its own
(``unshare``; skipped where mounting is not permitted), and a file size limit
(RLIMIT_FSIZE, with SIGXFSZ ignored so writes fail with EFBIG), which needs no privilege.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CHILD = Path(__file__).with_name("disk_full_child.py")
REPO = Path(__file__).resolve().parents[1]
TMPFS_BYTES = 4 * 2**20
FREE_BYTES = 2**20  # what the filler leaves free on the tmpfs


def _run(argv: list[str]) -> tuple[dict, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=100, env=env)
    assert proc.returncode == 0, f"the service died (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.splitlines()[-1]), proc.stderr


def _tmpfs_argv(directory: Path, mode: str) -> list[str]:
    """The child, in a mount namespace where ``directory`` is a small tmpfs almost filled by ``filler``."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no unshare(1) to mount a small tmpfs in a namespace of its own")
    user = [] if os.geteuid() == 0 else ["--map-root-user"]
    probe = subprocess.run([unshare, "--mount", *user, "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs",
                            str(directory)], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {probe.stderr.strip() or probe.returncode}")
    script = (f'mount -t tmpfs -o size={TMPFS_BYTES} tmpfs "$1" && '
              f'head -c {TMPFS_BYTES - FREE_BYTES} /dev/zero > "$1/filler" && shift && exec "$@"')
    return [unshare, "--mount", *user, "sh", "-c", script, "sh", str(directory),
            sys.executable, str(CHILD), mode, str(directory)]


def _check_common(report: dict, stderr: str) -> None:
    ends, beats = report["ends"], report["heartbeats"]
    end1, last = ends[0], ends[-1]
    # row 7: every frame not written is counted; the wire and the heartbeat agree at each series end
    assert end1["processed"] == 80 and end1["lost"] == end1["failed"] == end1["dropped"] == 0
    assert 0 < end1["not_saved"] < 80 and 80 - end1["not_saved"] <= report["first_error_at"]
    for k, beat in enumerate(beats):
        assert beat["hdf5_not_saved"] == sum(end["not_saved"] for end in ends[:k + 1])
    assert beats[0]["hdf5_errors"] >= 1
    # rows 6 and 7: the service lives on, the next series gets a fresh, complete, readable file
    assert last["file"] != end1["file"] and last["processed"] == 5 and last["not_saved"] == 0
    fresh = report["files"][-1]
    assert fresh["rows"] == 5
    assert fresh["summary"]["complete"] == 1 and fresh["summary"]["incomplete"] == ""
    # row 7: the errors are logged once per series, not once per frame
    for end in ends:
        assert sum(str(end["file"]) in line for line in stderr.splitlines() if "ERROR" in line) <= 2, stderr[-3000:]


def test_disk_full_mid_series_then_space_freed(tmp_path):
    directory = tmp_path / "small"
    directory.mkdir()
    report, stderr = _run(_tmpfs_argv(directory, "tmpfs"))
    _check_common(report, stderr)
    end1, first = report["ends"][0], report["files"][0]
    # the space came back before the series ended: the summary row says what happened
    assert first["rows"] == end1["processed"] - end1["not_saved"]
    summary = first["summary"]
    assert summary["not_saved"] == end1["not_saved"] and summary["processed"] == 80
    assert summary["complete"] == 0
    assert f"not_saved {end1['not_saved']}" in summary["incomplete"]
    assert "No space left on device" in summary["incomplete"]


def test_disk_full_mid_series_freed_after_it(tmp_path):
    directory = tmp_path / "small"
    directory.mkdir()
    report, stderr = _run(_tmpfs_argv(directory, "tmpfs-late"))
    _check_common(report, stderr)
    assert "summary not written" in stderr
    # series 2 came while the disk was still full: none of its frames were saved, and it said so
    full = report["ends"][1]
    assert full["processed"] == full["not_saved"] == 5 and full["file"] is None


def test_file_size_limit_mid_series(tmp_path):
    report, stderr = _run([sys.executable, str(CHILD), "fsize", str(tmp_path)])
    _check_common(report, stderr)
    # the file stays at its limit: no summary can be written, and the log says so
    assert "summary not written" in stderr
