"""The benchmark commands run and report what they measured (their speeds are not asserted)."""
from __future__ import annotations

import json
import subprocess
import sys

from livediff.bench import e2e


def test_bench_json_rows_follow_the_design():
    proc = subprocess.run([sys.executable, "-m", "livediff", "bench", "--only", "hdf5", "--quick", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout.splitlines()[-1])
    assert {r["operator"] for r in rows} == {"HDF5 raw frames (bslz4 blobs, direct chunk)", "HDF5 frames table row"}
    for r in rows:
        assert set(r) == {"operator", "shape", "dtype", "threads", "ours_fps", "peer", "peer_fps", "ratio", "skipped"}
        assert r["skipped"] is None and r["ratio"] == r["ours_fps"] / r["peer_fps"]


def test_end_to_end_load_run_accounts_for_every_frame(tmp_path):
    config = tmp_path / "chain.toml"
    config.write_text("[operators.summary]\n[operators.stats]\n")
    report = e2e.run_load(detector="small", rate=50.0, seconds=1.0, config=str(config), protocol="dectris-stream2")
    assert report["sent"] == 50 and report["processed"] == 50 and report["dropped"] == report["lost"] == 0
    assert report["latency_ms"]["p50"] > 0 and report["peak_rss_mb"] > 0 and report["max_queue"] >= 0
    assert report["sender_cpu_ms_per_frame"] > 0 and "sender thread" in e2e.format_report(report)
