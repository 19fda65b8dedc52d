"""Live control on loopback: a running service takes get/set/reset/reload/pause/resume/snapshot on its
control socket; every change is a configuration epoch, applied between frames, recorded in the messages
and the file; the references are offline runs of the same frames with each epoch's settings."""
from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time

import h5py
import msgpack
import numpy as np
import pytest
import tomli_w
import zmq

from harness import Recorder, config, free_endpoint, running, table
from livediff.config import load, parse
from livediff.control import ControlSettings, request
from livediff.errors import ConfigError
from livediff.executors import ThreadExecutor
from livediff.executors.offline import process_frames
from livediff.executors.runloop import STOP, RunLoop
from livediff.model import Frame, SeriesEnd
from livediff.queues import EventQueue
from livediff.sources.sender import stream_series
from simulators import DiffractionSimulator

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SPOTS = {"summary": {}, "spots": {}}


def _sim(n_frames: int = 40) -> DiffractionSimulator:
    return DiffractionSimulator(shape=(48, 70), n_frames=n_frames, n_spots=8, seed=11)


def _frames(sim: DiffractionSimulator, indices) -> list[Frame]:
    return [Frame(sim.series, i, sim.frame(i)) for i in indices]


def _offline(chain: dict, sim: DiffractionSimulator, indices) -> tuple[list[Frame], dict]:
    """The reference: ``indices``' frames through ``chain`` alone, as a series of their own."""
    return process_frames(parse({"operators": chain}).operators, sim.series_start(), _frames(sim, indices))


def _n_spots(frames: list[Frame]) -> list[int]:
    return [f.results["spots"]["n_spots"] for f in frames]


async def _ctl(service, **message) -> dict:
    return await asyncio.to_thread(request, service.control.endpoint, message)


async def _pause_after(service, sub, frame: int) -> dict:
    """Pause once frame ``frame`` was published."""
    await sub.wait_for(lambda t, m: t == "stats" and m["frame"] >= frame)
    reply = await _ctl(service, cmd="pause")
    assert reply["ok"] and reply["paused"]
    return reply


async def test_set_changes_spots_from_the_next_frame_on_with_two_workers_and_records_the_epoch(tmp_path):
    sim = _sim()
    cfg = config(tmp_path, pipeline={"workers": 2, "queue_size": 4}, operators=SPOTS)
    async with running(cfg) as (service, sub):
        sending = asyncio.create_task(asyncio.to_thread(stream_series, sim, cfg.source.endpoint, rate=100))
        paused = await _pause_after(service, sub, 5)
        changed = await _ctl(service, cmd="set", key="operators.spots.sigma_strong", value=1.5)
        assert (await _ctl(service, cmd="resume"))["ok"]
        end = await sub.wait_for(lambda t, m: t == "series" and m["type"] == "end")
        await sending
    assert changed["ok"] and changed["epoch"] == 1 and changed["changed"] == ["operators.spots.sigma_strong"]
    last = changed["after_frame"]
    assert last == paused["after_frame"] and 5 <= last < sim.n_frames - 5  # nothing ran while paused
    old = _n_spots((await asyncio.to_thread(_offline, SPOTS, sim, range(sim.n_frames)))[0])
    new = _n_spots((await asyncio.to_thread(_offline, {"summary": {}, "spots": {"sigma_strong": 1.5}}, sim,
                                            range(sim.n_frames)))[0])
    assert old[last + 1:] != new[last + 1:]  # the change shows in the counts
    expected = old[:last + 1] + new[last + 1:]
    epochs = [0] * (last + 1) + [1] * (sim.n_frames - last - 1)

    stats = sorted(sub.of("stats"), key=lambda m: m["frame"])
    assert [m["n_spots"] for m in stats] == expected and [m["epoch"] for m in stats] == epochs
    assert {m["epoch"] for m in sub.of("spots") if m["frame"] <= last} == {0}
    assert {m["epoch"] for m in sub.of("spots") if m["frame"] > last} == {1}
    assert end["epoch"] == 1 and end["processed"] == sim.n_frames
    with h5py.File(end["file"], "r") as f:
        rows = f["entry/livediff/frames"][:]
        spots = f["entry/livediff/spots"][:]
        history = f["entry/livediff/config"][:]
    assert list(rows["n_spots"]) == expected and list(rows["epoch"]) == epochs
    np.testing.assert_array_equal(spots["epoch"], np.array(epochs)[spots["frame"]])
    assert [(e, f) for e, f, _ in history] == [(0, 0), (1, last + 1)]
    assert history[0]["toml"].decode() == cfg.effective
    assert tomllib.loads(history[1]["toml"].decode())["operators"]["spots"]["sigma_strong"] == 1.5


def test_every_frame_of_an_epoch_uses_its_parameters_with_two_workers():
    """Three epochs through the run loop and a 2-thread executor; each frame's spots are its epoch's."""
    sim = _sim(30)
    sigmas = [3.0, 1.5, 5.0]
    chains = [{"summary": {}, "spots": {"sigma_strong": s}} for s in sigmas]
    references = [_n_spots(_offline(chain, sim, range(sim.n_frames))[0]) for chain in chains]

    async def main() -> Recorder:
        queue = EventQueue(4, "block", Frame)
        executor = ThreadExecutor(parse({"operators": chains[0]}).operators, 2, warm=False)
        sink = Recorder()
        loop = RunLoop(queue, executor, [sink], snapshot_period=0, config_text="e0", config_hash="",
                       on_series_end=lambda summary: None)
        task = asyncio.create_task(loop.run())
        await queue.put(sim.series_start())
        for epoch, chain in enumerate(chains):
            if epoch:
                reply = await loop.change(parse({"operators": chain}).operators, "spots", f"e{epoch}", "")
                assert reply == {"epoch": epoch, "after_frame": 10 * epoch - 1, "restarted": ["spots"]}
            for frame in _frames(sim, range(10 * epoch, 10 * epoch + 10)):
                await queue.put(frame)
            while len(getattr(sink, "rows", [])) < 10 * epoch + 10:
                await asyncio.sleep(0.01)
        await queue.put(SeriesEnd(sim.series, counts={"received": sim.n_frames}))
        await queue.put(STOP)
        await task
        executor.close()
        return sink

    sink = asyncio.run(main())
    assert [row["epoch"] for _, row in sink.rows] == [i // 10 for i in range(30)]
    assert [row["n_spots"] for _, row in sink.rows] == [references[i // 10][i] for i in range(30)]
    assert sink.summary["epoch"] == 2


async def test_reset_restarts_reductions_as_a_run_started_there_and_keeps_the_old_under_its_epoch(tmp_path):
    sim = _sim(30)
    chain = {"stats": {}}
    cfg = config(tmp_path, pipeline={"workers": 2, "queue_size": 4, "snapshot_period": 0}, operators=chain)
    async with running(cfg) as (service, sub):
        sending = asyncio.create_task(asyncio.to_thread(stream_series, sim, cfg.source.endpoint, rate=100))
        paused = await _pause_after(service, sub, 5)
        snap = await _ctl(service, cmd="snapshot")
        reset = await _ctl(service, cmd="reset", operator="stats")
        await _ctl(service, cmd="resume")
        end = await sub.wait_for(lambda t, m: t == "series" and m["type"] == "end")
        await sending
    last = paused["after_frame"]
    assert snap == {"ok": True, "frame": last}
    assert reset["ok"] and reset["epoch"] == 1 and reset["after_frame"] == last and reset["restarted"] == ["stats"]
    before = (await asyncio.to_thread(_offline, chain, sim, range(last + 1)))[1]["stats"]
    after = (await asyncio.to_thread(_offline, chain, sim, range(last + 1, sim.n_frames)))[1]["stats"]
    images = [m for m in sub.of("image") if m["operator"] == "stats"]
    assert [(m["epoch"], m["closed"], m["final"]) for m in images] == [(0, False, False), (0, True, False),
                                                                       (1, False, True)]
    for message, reference in zip(images, (before, before, after)):
        np.testing.assert_allclose(message["mean"], reference["mean"], rtol=1e-6)
    with h5py.File(end["file"], "r") as f:
        red = {k: f[f"entry/livediff/reductions/stats/{k}"][()] for k in ("mean", "var", "count")}
        old = {k: f[f"entry/livediff/epochs/stats/{k}"][()] for k in ("mean", "var", "count", "epoch", "frame")}
        history = f["entry/livediff/config"][:]
    for k in ("mean", "var", "count"):
        np.testing.assert_allclose(red[k], after[k], rtol=1e-6)
        np.testing.assert_allclose(old[k][0], before[k], rtol=1e-6)
    assert list(old["epoch"]) == [0] and list(old["frame"]) == [last]
    assert [(e, f) for e, f, _ in history] == [(0, 0), (1, last + 1)]
    assert history[0]["toml"] == history[1]["toml"]  # a reset changes no setting


async def test_invalid_or_structural_changes_are_refused_with_the_loaders_words_and_change_nothing(tmp_path):
    sim = _sim(6)
    chain = {"bin": {"k": 2}, "spots": {}}
    values = table(tmp_path, operators=chain)
    path = tmp_path / "live.toml"
    path.write_text(tomli_w.dumps(values))
    cfg = load(path)

    def loader_says(key: str, value) -> str:
        """What the config loader says of the file with ``key`` set to ``value``."""
        bad = json.loads(json.dumps(values))
        bad["operators"]["spots"][key] = value
        path.write_text(tomli_w.dumps(bad))
        try:
            with pytest.raises(ConfigError) as info:
                load(path)
        finally:
            path.write_text(tomli_w.dumps(values))
        return str(info.value)

    async with running(cfg) as (service, sub):
        for key, value in [("sigma_strong", -1.0), ("sigma_strng", 4.0), ("kernel_size", [3]), ("mode", "4d")]:
            reply = await _ctl(service, cmd="set", key=f"operators.spots.{key}", value=value)
            assert reply == {"ok": False, "error": loader_says(key, value)}
        refusals = {
            "pipeline.workers": "only operator parameters (operators.LABEL.NAME) can change",
            "operators.spots.kind": "only operator parameters",
            "operators.stats.ddof": "no operator 'stats' in the chain",
        }
        for key, words in refusals.items():
            reply = await _ctl(service, cmd="set", key=key, value=1)
            assert not reply["ok"] and words in reply["error"], reply
        path.write_text(tomli_w.dumps({**values, "operators": {**chain, "stats": {}}}))
        reply = await _ctl(service, cmd="reload")
        assert not reply["ok"] and "the chain would change from bin, spots to bin, spots, stats" in reply["error"]
        got = await _ctl(service, cmd="get")
        assert got["ok"] and got["epoch"] == 0 and got["toml"] == cfg.effective
        assert got["config"]["operators"]["spots"]["sigma_strong"] == 3.0

        sending = asyncio.create_task(asyncio.to_thread(stream_series, sim, cfg.source.endpoint, rate=20))
        await _pause_after(service, sub, 1)  # a series is open: its outputs are fixed
        reply = await _ctl(service, cmd="set", key="operators.bin.k", value=4)
        assert not reply["ok"] and "operators.bin: its output frames (shape, dtype) would change" in reply["error"]
        path.write_text(tomli_w.dumps({**values, "operators": {**chain, "spots": {"sigma_strong": 4.0}}}))
        reloaded = await _ctl(service, cmd="reload")
        await _ctl(service, cmd="resume")
        end = await sub.wait_for(lambda t, m: t == "series" and m["type"] == "end")
        await sending
    assert reloaded["ok"] and reloaded["epoch"] == 1 and reloaded["changed"] == ["operators.spots.sigma_strong"]
    assert end["processed"] == sim.n_frames and end["epoch"] == 1  # the service kept running
    assert {m["epoch"] for m in sub.of("stats")} == {0, 1}


def test_the_control_socket_binds_loopback_by_default():
    assert ControlSettings().endpoint == "tcp://127.0.0.1:5558" == load().control.endpoint
    with pytest.raises(ValueError, match="is not a ZeroMQ endpoint"):
        ControlSettings(endpoint="127.0.0.1:5558")


async def test_malformed_requests_get_an_error_reply_and_the_service_keeps_running(tmp_path):
    sim = _sim(5)
    cfg = config(tmp_path, control={"endpoint": ControlSettings().endpoint})
    async with running(cfg) as (service, sub):
        assert service.control.endpoint == "tcp://127.0.0.1:5558"
        ctx = zmq.Context()
        try:
            def ask(*parts: bytes) -> bytes:
                sock = ctx.socket(zmq.REQ)
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(service.control.endpoint)
                try:
                    sock.send_multipart(list(parts))
                    assert sock.poll(10_000), "no reply"
                    return sock.recv()
                finally:
                    sock.close()

            errors = {
                "not a map": json.loads(await asyncio.to_thread(ask, b'["get"]'))["error"],
                "not msgpack": msgpack.unpackb(await asyncio.to_thread(ask, b"\xc1\x00"))["error"],
                "two parts": json.loads(await asyncio.to_thread(ask, b'{"cmd": "get"}', b"x"))["error"],
                "unknown": msgpack.unpackb(await asyncio.to_thread(ask, msgpack.packb({"cmd": "snapshoot"})))["error"],
                "no key": json.loads(await asyncio.to_thread(ask, b'{"cmd": "set"}'))["error"],
            }
        finally:
            ctx.destroy(linger=0)
        assert errors["not a map"].startswith('a request is a map with a string "cmd"')
        assert errors["not msgpack"].startswith("a request is a JSON or msgpack map")
        assert errors["two parts"] == "a request is one message part, got 2"
        assert errors["unknown"].startswith("unknown command 'snapshoot' (did you mean 'snapshot'?)")
        assert errors["no key"].startswith('set needs "key" and "value"')
        assert (await _ctl(service, cmd="get"))["epoch"] == 0
        await asyncio.to_thread(stream_series, sim, cfg.source.endpoint)
        end = await sub.wait_for(lambda t, m: t == "series" and m["type"] == "end")
    assert end["processed"] == sim.n_frames


def _ctl_cli(endpoint: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "livediff", "ctl", endpoint, *args], capture_output=True, text=True,
                          timeout=60)


def _until(condition, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not (got := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError("condition never met")
        time.sleep(0.1)
    return got


def _epoch(endpoint: str) -> int | None:
    try:
        return request(endpoint, {"cmd": "get"}, timeout=1.0)["epoch"]
    except TimeoutError:
        return None


def test_sighup_reloads_the_file_and_ctl_sets_and_reports_refusals(tmp_path):
    endpoint = free_endpoint()
    values = table(tmp_path, operators=SPOTS, control={"endpoint": endpoint}, http={"enabled": False})
    path = tmp_path / "live.toml"
    path.write_text(tomli_w.dumps(values))
    proc = subprocess.Popen([sys.executable, "-m", "livediff", "serve", "--config", str(path), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _until(lambda: _epoch(endpoint) is not None) is not None
        assert _epoch(endpoint) == 0
        path.write_text(tomli_w.dumps({**values, "operators": {**SPOTS, "spots": {"sigma_strong": 4.0}}}))
        proc.send_signal(signal.SIGHUP)
        _until(lambda: _epoch(endpoint) == 1)
        got = json.loads(_ctl_cli(endpoint, "get", "--json").stdout)
        assert got["config"]["operators"]["spots"]["sigma_strong"] == 4.0
        done = _ctl_cli(endpoint, "set", "operators.spots.sigma_strong=2.5", "operators.spots.min_spot_size=2")
        assert done.returncode == 0 and "epoch=2" in done.stdout, done.stderr
        refused = _ctl_cli(endpoint, "set", "operators.spots.sigma_strong=-1")
        assert refused.returncode == 1
        assert f"{path}: operators.spots.sigma_strong: must be >= 0, got -1.0" in refused.stderr
        assert _epoch(endpoint) == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "SIGHUP received: reloading" in err and "reloaded: operators.spots.sigma_strong" in err
