"""The service as a process: SIGTERM and SIGKILL mid-series leave readable files; inspect prints."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import zmq

from harness import free_endpoint
from livediff.client import Subscriber
from livediff.sources.sender import stream_series
from simulators import DiffractionSimulator


def _write_config(tmp_path: Path, source: str, publisher: str, flush_frames: int = 50) -> Path:
    path = tmp_path / "cfg.toml"
    path.write_text(f"""
[source]
endpoint = "{source}"
bind = true

[publisher]
endpoint = "{publisher}"
status_period = 0.05

[http]
port = 0

[control]
endpoint = "tcp://127.0.0.1:*"

[output]
directory = "{tmp_path / 'out'}"
flush_frames = {flush_frames}
flush_seconds = 0.2

[operators.summary]
""")
    return path


def until(sub: Subscriber, predicate, timeout: float = 60.0) -> dict:
    """The first message from ``sub`` with ``predicate(topic, msg)`` true, within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (got := sub.recv(max(0.0, deadline - time.monotonic()))) is not None:
        if predicate(*got):
            return got[1]
    raise TimeoutError("message never came")


@pytest.fixture
def service_process(tmp_path):
    procs, subs = [], []

    def start(**kw):
        source, publisher = free_endpoint(), free_endpoint()
        cfg = _write_config(tmp_path, source, publisher, **kw)
        proc = subprocess.Popen([sys.executable, "-m", "livediff", "serve", "--config", str(cfg), "--no-progress"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        sub = Subscriber(publisher, strict=True)
        subs.append(sub)
        until(sub, lambda t, m: t == "status")  # the service is up and our subscription is live
        return proc, source, sub

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=30)
    for sub in subs:
        sub.close()


def _stream_in_background(sim: DiffractionSimulator, endpoint: str, rate: float) -> threading.Event:
    stop = threading.Event()
    threading.Thread(target=stream_series, args=(sim, endpoint), kwargs={"rate": rate, "stop": stop},
                     daemon=True).start()
    return stop


def _check_rows(path: str, sim: DiffractionSimulator) -> np.ndarray:
    # swmr=True: a killed SWMR writer leaves the file marked open for writing; SWMR readers
    # (and `h5clear -s` for others) read it regardless
    with h5py.File(path, "r", swmr=True) as f:
        rows = f["entry/livediff/frames"][:]
    mask = sim.detector_mask
    for r in rows:
        assert r["sum"] == sim.frame(int(r["frame"]))[mask].sum(dtype=np.int64)
    return rows


def test_sigterm_mid_series_flushes_and_closes_the_file(service_process):
    sim = DiffractionSimulator(shape=(40, 64), n_frames=400, n_spots=3)
    proc, source, sub = service_process()
    stop = _stream_in_background(sim, source, rate=100.0)
    start = until(sub, lambda t, m: t == "series" and m["type"] == "start")
    until(sub, lambda t, m: t == "stats" and m["frame"] >= 15)
    proc.send_signal(signal.SIGTERM)
    end = until(sub, lambda t, m: t == "series" and m["type"] == "end")
    out, err = proc.communicate(timeout=60)
    stop.set()
    assert proc.returncode == 0, err
    assert end["reason"] == "shutdown" and 15 <= end["processed"] < sim.n_frames
    assert f"series 1: {end['processed']} of 400 frames processed" in out
    rows = _check_rows(start["file"], sim)
    assert sorted(rows["frame"]) == list(range(end["processed"]))
    with h5py.File(start["file"], "r") as f:
        summary = f["entry/livediff/summary"][0]
    assert summary["reason"] == b"shutdown" and summary["processed"] == end["processed"]
    assert summary["complete"] == 0 and summary["incomplete"] == f"reason shutdown, lost {end['lost']}".encode()


def test_sigkill_mid_series_leaves_a_valid_file_with_flushed_rows(service_process):
    sim = DiffractionSimulator(shape=(40, 64), n_frames=400, n_spots=3)
    proc, source, sub = service_process(flush_frames=5)
    stop = _stream_in_background(sim, source, rate=100.0)
    start = until(sub, lambda t, m: t == "series" and m["type"] == "start")
    until(sub, lambda t, m: t == "stats" and m["frame"] >= 30)
    time.sleep(0.5)  # let at least one time-based flush (0.2 s) happen after frame 30
    proc.kill()
    proc.communicate(timeout=30)
    stop.set()
    rows = _check_rows(start["file"], sim)
    assert len(rows) >= 30
    assert list(rows["frame"]) == list(range(len(rows)))
    with h5py.File(start["file"], "r", swmr=True) as f:
        assert f["entry/livediff/summary"][0]["complete"] == 0


def test_inspect_prints_published_messages(service_process):
    sim = DiffractionSimulator(shape=(40, 64), n_frames=5, n_spots=3)
    proc, source, sub = service_process()
    inspect = subprocess.Popen([sys.executable, "-m", "livediff", "inspect", sub.endpoint, "--json",
                                "--topics", "series,stats,status"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = iter(inspect.stdout)
        assert json.loads(next(lines))["topic"] == "status"  # inspect's subscription is live
        stream_series(sim, source)
        got = []
        for line in lines:
            msg = json.loads(line)
            if msg["topic"] != "status":
                got.append(msg)
            if msg["topic"] == "series" and msg["type"] == "end":
                break
    finally:
        inspect.kill()
        inspect.communicate(timeout=30)
    assert [m["topic"] for m in got] == ["series"] + ["stats"] * 5 + ["series"]
    assert [m["frame"] for m in got[1:6]] == list(range(5))
    assert got[-1]["processed"] == 5 and got[0]["shape"] == [40, 64]


def test_inspect_exits_non_zero_when_nothing_arrives_before_its_timeout():
    done = subprocess.run([sys.executable, "-m", "livediff", "inspect", free_endpoint(), "--timeout", "0.5"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "nothing received from" in done.stderr and "in 0.5 s" in done.stderr


def test_serve_json_prints_each_series_summary_as_a_json_line(tmp_path):
    source, publisher = free_endpoint(), free_endpoint()
    cfg = _write_config(tmp_path, source, publisher)
    sim = DiffractionSimulator(shape=(40, 64), n_frames=4, n_spots=3)
    proc = subprocess.Popen([sys.executable, "-m", "livediff", "serve", "--config", str(cfg), "--no-progress",
                             "--max-series", "1", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        sub = Subscriber(publisher)
        sub.recv(timeout=60)  # the service is up
        stream_series(sim, source)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        sub.close()
    assert proc.returncode == 0, err
    (summary,) = [json.loads(line) for line in out.splitlines()]
    assert summary["processed"] == 4 and summary["reason"] == "end" and Path(summary["file"]).exists()


@pytest.mark.parametrize("taken", ["source", "publisher"])
def test_a_port_in_use_is_one_line_and_exit_1(tmp_path, taken):
    source, publisher = free_endpoint(), free_endpoint()
    ctx = zmq.Context()
    squatter = ctx.socket(zmq.PULL)
    squatter.bind(source if taken == "source" else publisher)
    try:
        done = subprocess.run([sys.executable, "-m", "livediff", "serve", "--config",
                               str(_write_config(tmp_path, source, publisher)), "--no-progress"],
                              capture_output=True, text=True, timeout=120)
    finally:
        squatter.close(linger=0)
        ctx.term()
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    verb = "receive" if taken == "source" else "publish"
    assert last.startswith(f"livediff serve: cannot {verb} on tcp://127.0.0.1:") and "Address already in use" in last
