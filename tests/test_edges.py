"""Issue 18's smaller edges, sources side: a sender with nobody to receive says so and
exits non-zero; a malformed endpoint in the config is a config error (exit 2); anything a
decoder raises is one counted bad message and the service runs on."""
from __future__ import annotations

import asyncio
import logging
import struct
import time

import pytest

from harness import config, free_endpoint, running, send_messages
from livediff.cli import main
from livediff.config import parse
from livediff.errors import ConfigError
from livediff.sources import receiver
from livediff.sources.sender import stream_series
from simulators import DiffractionSimulator
from test_bad_headers import received


def _sim(**kw) -> DiffractionSimulator:
    return DiffractionSimulator(**{"shape": (24, 30), "n_frames": 3, "n_spots": 2, "seed": 4, **kw})


# ---------------------------------------------------------------------- nobody listening
@pytest.mark.parametrize("bind", [False, True])
def test_stream_to_an_endpoint_nobody_listens_on_raises_after_the_timeout(bind):
    endpoint = free_endpoint()
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=f"nobody receives at {endpoint}: no receiver .* within 0.5 s"):
        stream_series(_sim(), endpoint, bind=bind, peer_timeout=0.5)
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize("command", ["simulate", "replay"])
def test_cli_to_an_endpoint_nobody_listens_on_says_so_in_one_line_and_fails(command, tmp_path, capsys):
    endpoint = free_endpoint()
    if command == "simulate":
        args = ["simulate", "--endpoint", endpoint, "--frames", "3", "--shape", "16x20", "--timeout", "0.5"]
    else:
        from test_replay import _nxmx  # a recorded series to replay

        import numpy as np
        frames = np.zeros((2, 8, 12), np.uint16)
        args = ["replay", str(_nxmx(tmp_path, frames, np.zeros((8, 12), np.uint32), per_file=[2])),
                "--endpoint", endpoint, "--timeout", "0.5"]
    assert main(["--log-level", "error", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"livediff {command}: nobody receives at {endpoint}") and err.count("\n") == 1


# ---------------------------------------------------------------------- malformed endpoints
@pytest.mark.parametrize("section,endpoint", [("source", "tcp//127.0.0.1:9999"), ("source", "tcp://detector"),
                                              ("source", "tcp://detector:70000"), ("publisher", "127.0.0.1:5557"),
                                              ("publisher", "ipc://"), ("source", "udp://x:1")])
def test_malformed_endpoint_is_a_config_error(section, endpoint):
    with pytest.raises(ConfigError) as info:
        parse({section: {"endpoint": endpoint}}, origin="x.toml")
    assert str(info.value) == (f"x.toml: {section}: endpoint {endpoint!r} is not a ZeroMQ endpoint: expected "
                               "tcp://HOST:PORT (PORT a number or *), ipc://PATH or inproc://NAME")


@pytest.mark.parametrize("endpoint", ["tcp://*:9999", "tcp://[::1]:31001", "tcp://eiger-dcu.local:9999",
                                      "tcp://127.0.0.1:*", "ipc:///tmp/livediff.sock", "inproc://frames"])
def test_wellformed_endpoints_are_accepted(endpoint):
    assert parse({"source": {"endpoint": endpoint}, "publisher": {"endpoint": endpoint}}).source.endpoint == endpoint


def test_serve_with_a_malformed_endpoint_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[source]\nendpoint = 'tcp://detector'\n")
    assert main(["serve", "--config", str(bad)]) == 2
    assert capsys.readouterr().err.startswith(f"{bad}: source: endpoint 'tcp://detector' is not a ZeroMQ endpoint")


# ---------------------------------------------------------------------- nothing escapes a decoder
@pytest.mark.parametrize("error", [MemoryError(), struct.error("'I' format requires 0 <= number <= 4294967295"),
                                   RuntimeError("error decompressing stream"), KeyError("x"), RecursionError()])
async def test_anything_a_decoder_raises_is_one_bad_message_logged_once(tmp_path, monkeypatch, caplog, error):
    native = receiver.DECODERS["native"]

    def failing(settings):
        decode = native(settings)

        def call(parts, *, series=None):
            if bytes(parts[0]) == b"boom":
                raise error
            return decode(parts, series=series)
        return call

    monkeypatch.setitem(receiver.DECODERS, "native", failing)
    caplog.set_level(logging.WARNING)
    sim = _sim()
    cfg = config(tmp_path)
    async with running(cfg) as (service, sub):
        await asyncio.to_thread(send_messages, cfg.source.endpoint, [[b"boom"]] * 5)
        await received(service, 5)
        await asyncio.to_thread(stream_series, sim, cfg.source.endpoint)
        end = await sub.wait_for(lambda t, m: t == "series" and m["type"] == "end")
        assert service.receiver.bad == 5 and service.receiver.messages == 5 + sim.n_frames + 2
    assert end["received"] == end["processed"] == sim.n_frames and end["bad"] == 0
    lines = [r for r in caplog.records if type(error).__name__ in r.getMessage()]
    assert len(lines) == 1 and lines[0].getMessage().startswith(
        f"bad message #1 skipped: the decoder raised {type(error).__name__}")


async def test_large_messages_are_parsed_on_the_decode_thread_in_order(tmp_path, monkeypatch):
    """A message of 1 MB or more (here raw 600 x 512 uint32 frames) is parsed off the event loop,
    on the one decode thread, and the frames still arrive whole and in order."""
    import threading

    import h5py
    import numpy as np

    native = receiver.DECODERS["native"]
    where: list[tuple[int, str]] = []

    def recording(settings):
        decode = native(settings)

        def call(parts, *, series=None):
            event = decode(parts, series=series)
            where.append((type(event).__name__, threading.current_thread().name))
            return event
        return call

    monkeypatch.setitem(receiver.DECODERS, "native", recording)
    sim = DiffractionSimulator(shape=(600, 512), dtype="uint32", n_frames=6, n_spots=5, seed=2)
    cfg = config(tmp_path, output={"save_raw": True})
    async with running(cfg) as (service, sub):
        await asyncio.to_thread(stream_series, sim, cfg.source.endpoint)
        end = await sub.wait_for(lambda t, m: t == "series" and m["type"] == "end")
    assert end["received"] == end["processed"] == sim.n_frames and end["bad"] == 0
    threads = {kind: {name for k, name in where if k == kind} for kind, _ in where}
    assert [k for k, _ in where].count("Frame") == sim.n_frames
    assert threads["Frame"] == {"livediff-decode_0"} and threads["SeriesEnd"] == {"MainThread"}
    with h5py.File(end["file"], "r") as f:
        np.testing.assert_array_equal(f["entry/data/data"][:], np.stack([sim.frame(i) for i in range(sim.n_frames)]))
