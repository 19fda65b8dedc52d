"""The live page's server in a running service, on loopback: API, metrics, security, slow pages, livediff view."""
from __future__ import annotations

import asyncio
import builtins
import json
import pathlib
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import aiohttp
import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

import harness
from livediff import schema
from livediff.config import parse
from livediff.errors import ConfigError
from livediff.sources import native
from livediff.sources.sender import stream_series
from livediff.web import HttpSettings
from livediff.web import server as web_server
from livediff.web import state as web_state
from livediff.web import view as web_view
from livediff.web.server import WRITER_LIMIT
from simulators import DiffractionSimulator

WEB = Path(__file__).resolve().parents[1] / "livediff" / "web"
CHAIN = {"summary": {}, "spots": {}}


def _config(tmp_path, **http):
    return harness.config(tmp_path, http={"port": 0, "update_period": 0.1, **http}, operators=CHAIN)


async def _stream(cfg, n: int = 30, rate: float = 0.0, stop: threading.Event | None = None) -> int:
    sim = DiffractionSimulator(shape=(64, 80), n_frames=n, n_spots=8, seed=2)
    return await asyncio.to_thread(stream_series, sim, cfg.source.endpoint, rate=rate, stop=stop)


async def _raw_get(url: str, target: str, host: str | None = None) -> tuple[int, bytes]:
    """GET ``target`` exactly as written (no client-side normalisation of ``..`` or escapes)."""
    address = re.match(r"http://([^/]+):(\d+)/", url)
    reader, writer = await asyncio.open_connection(address[1], int(address[2]))
    writer.write(f"GET {target} HTTP/1.1\r\nHost: {host or address[1]}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return int(answer.split(b" ", 2)[1]), answer


async def _until_ended(ws: aiohttp.ClientWebSocketResponse, timeout: float = 30.0) -> dict:
    """The page's parts, as updated message by message, once the counts say the series ended."""
    async def scan() -> dict:
        parts: dict = {}
        while parts.get("counts", {}).get("state") != "ended":
            parts.update(json.loads((await ws.receive(timeout=10)).data)["parts"])
        return parts
    return await asyncio.wait_for(scan(), timeout)


# ---------------------------------------------------------------------- API and metrics
async def test_status_matches_the_status_topic_and_metrics_count_every_frame_sent(tmp_path):
    cfg = _config(tmp_path)
    async with harness.running(cfg) as (service, collector):
        url = service.web.server.url
        assert url.startswith("http://127.0.0.1:")  # the default bind is loopback
        sent = await _stream(cfg, 30)
        await collector.wait_for(lambda t, m: t == "series" and m["type"] == "end")
        async with aiohttp.ClientSession() as http:
            for _ in range(100):  # the page's status (the service's, a few times a second) may lag the test's
                async with http.get(url + "api/status") as r:
                    assert r.status == 200 and r.content_type == "application/json"
                    status = await r.json()
                if status["total_processed"] == sent:
                    break
                await asyncio.sleep(0.05)
            async with http.get(url + "metrics") as r:
                assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                text = await r.text()
        heartbeat = await collector.wait_for(lambda t, m: t == "status" and m["total_processed"] == sent)
    assert set(status) == set(schema.MESSAGES["status", "heartbeat"].keys) == set(heartbeat) - {"v", "type"}
    for key in ("series", "received", "processed", "dropped", "total_processed", "total_failed", "messages", "bad",
                "orphans", "open_series", "hdf5_errors"):
        assert status[key] == heartbeat[key], key
    families = {f.name: f for f in text_string_to_metric_families(text)}
    counters = {name: families[f"livediff_frames_{name}"].samples[0].value
                for name in ("received", "processed", "dropped", "bad", "lost", "failed")}
    assert counters == {"received": sent, "processed": sent, "dropped": 0, "bad": 0, "lost": 0, "failed": 0}
    assert all(families[f"livediff_frames_{n}"].type == "counter" for n in counters)
    assert families["livediff_queue_depth"].type == families["livediff_frames_per_second"].type == "gauge"
    latency = families["livediff_frame_latency_seconds"]
    assert latency.type == "histogram"
    assert {s.name: s.value for s in latency.samples}["livediff_frame_latency_seconds_count"] == sent


async def test_the_control_commands_answer_on_the_http_api_as_on_the_control_socket(tmp_path):
    from livediff.control import request

    cfg = _config(tmp_path)
    async with harness.running(cfg) as (service, collector):
        url = service.web.server.url + "api/control"
        ctl = service.control.endpoint
        async with aiohttp.ClientSession() as http:
            async def post(body, **kw):
                async with http.post(url, json=body, **kw) as r:
                    return r.status, await r.json()

            got = await post({"cmd": "get"})
            bad = {"cmd": "set", "key": "operators.spots.sigma_strong", "value": -1.0}
            refused = await post(bad)
            by_socket = await asyncio.to_thread(request, ctl, bad)
            changed = await post({"cmd": "set", "key": "operators.spots.sigma_strong", "value": 4.5})
            unknown = await post({"cmd": "sett"})
            async with http.post(url, data=b'{"cmd": "get"}', headers={"Content-Type": "text/plain"}) as r:
                form = r.status  # what a cross-site form could send: refused
            async with http.post(url, data=b"{", headers={"Content-Type": "application/json"}) as r:
                broken = r.status, await r.json()
        after = await asyncio.to_thread(request, ctl, {"cmd": "get"})
        sent = await _stream(cfg, 5)
        end = await collector.wait_for(lambda t, m: t == "series" and m["type"] == "end")
    assert got[0] == 200 and got[1]["ok"] and got[1]["toml"] == cfg.effective and got[1]["epoch"] == 0
    assert refused[0] == 400 and refused[1] == by_socket and not by_socket["ok"] and "sigma_strong" in by_socket["error"]
    assert changed[0] == 200 and changed[1]["ok"] and changed[1]["epoch"] == 1
    assert after["epoch"] == 1 and after["config"]["operators"]["spots"]["sigma_strong"] == 4.5
    assert unknown[0] == 400 and "did you mean 'set'" in unknown[1]["error"]
    assert form == 415 and broken[0] == 400 and not broken[1]["ok"]
    assert end["processed"] == sent and end["epoch"] == 1  # the service kept running, in the new epoch


async def test_lost_and_bad_reach_the_metrics_when_the_series_ends(tmp_path):
    cfg = _config(tmp_path)
    async with harness.running(cfg) as (service, collector):
        sim = DiffractionSimulator(shape=(64, 80), n_frames=12, n_spots=4)
        sim.indices = [i for i in range(12) if i not in (3, 7)]  # two frames never sent
        await asyncio.to_thread(stream_series, sim, cfg.source.endpoint)
        end = await collector.wait_for(lambda t, m: t == "series" and m["type"] == "end")
        async with aiohttp.ClientSession() as http, http.get(service.web.server.url + "metrics") as r:
            families = {f.name: f for f in text_string_to_metric_families(await r.text())}
    assert end["lost"] == 2
    assert families["livediff_frames_lost"].samples[0].value == 2
    assert families["livediff_frames_received"].samples[0].value == 10


# ---------------------------------------------------------------------- security
TRAVERSALS = ["/../livediff/config.py", "/static/../server.py", "/static/..%2fserver.py", "/%2e%2e/%2e%2e/etc/passwd",
              "/static/%2e%2e/%2e%2e/etc/passwd", "/static/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/etc/passwd",
              "//etc/passwd", "/static//etc/passwd", "/static/%2fetc%2fpasswd", "/static/state.py",
              "/static/index.html/..", "/static/", "/static/app.js/../../../etc/passwd", "/..%5c..%5cetc/passwd"]


async def test_paths_outside_the_shipped_assets_are_404_and_read_nothing(tmp_path, monkeypatch):
    cfg = _config(tmp_path)
    async with harness.running(cfg) as (service, _):
        url = service.web.server.url
        opened: list[str] = []
        real_open, real_read = builtins.open, pathlib.Path.read_bytes
        monkeypatch.setattr(builtins, "open", lambda f, *a, **k: opened.append(str(f)) or real_open(f, *a, **k))
        monkeypatch.setattr(pathlib.Path, "read_bytes", lambda p: opened.append(str(p)) or real_read(p))
        answers = {t: await _raw_get(url, t) for t in TRAVERSALS}
        ok = [await _raw_get(url, t) for t in ("/", "/static/app.js", "/static/plotly.min.js")]
        monkeypatch.undo()
    assert {t: status for t, (status, _) in answers.items()} == dict.fromkeys(TRAVERSALS, 404)
    assert not any(b"root:" in body or b"import" in body for _, body in answers.values())
    assert [status for status, _ in ok] == [200, 200, 200]
    assert opened == []  # assets are served from memory: no request touches the file system


async def test_every_answer_carries_a_strict_content_security_policy_and_foreign_hosts_are_refused(tmp_path):
    cfg = _config(tmp_path)
    async with harness.running(cfg) as (service, _):
        url = service.web.server.url
        status, page = await _raw_get(url, "/")
        rebound, _ = await _raw_get(url, "/api/status", host="attacker.example:8557")
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(url + "ws", headers={"Origin": "http://attacker.example"})
    assert status == 200 and b"script-src 'self';" in page and b"X-Content-Type-Options: nosniff" in page
    assert rebound == 403  # DNS rebinding: a loopback service answers to loopback names only
    assert refused.value.status == 403  # cross-site WebSocket


def test_the_page_loads_nothing_from_elsewhere_and_never_builds_markup_from_data():
    html = (WEB / "static" / "index.html").read_text()
    script = (WEB / "static" / "app.js").read_text()
    assert re.findall(r'(?:src|href)="([^"]+)"', html) == ["data:,", "/static/style.css", "/static/plotly.min.js",
                                                           "/static/app.js"]
    assert not re.search(r"https?://", html + script + (WEB / "static" / "style.css").read_text())
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(|new Function", script)
    assert HttpSettings().host == "127.0.0.1"


async def test_a_malformed_websocket_message_closes_that_socket_only(tmp_path):
    cfg = _config(tmp_path)
    async with harness.running(cfg) as (service, collector), aiohttp.ClientSession() as http:
        url = service.web.server.url + "ws"
        good = await http.ws_connect(url)
        bad = [await http.ws_connect(url) for _ in range(4)]
        await bad[0].send_str("{not json")
        await bad[1].send_bytes(b"\x00\x01")
        await bad[2].send_str(json.dumps({"type": "resync", "x": "y" * 5000}))  # too long
        await bad[3].send_str(json.dumps({"type": "subscribe", "to": "everything"}))
        codes = []
        for ws in bad:
            msg = await ws.receive(timeout=10)
            while msg.type == aiohttp.WSMsgType.TEXT:  # updates sent before the close
                msg = await ws.receive(timeout=10)
            codes.append((msg.type, ws.close_code))
        await good.send_str(json.dumps({"type": "resync"}))  # the one message a page may send
        sent = await _stream(cfg, 20)
        await collector.wait_for(lambda t, m: t == "series" and m["type"] == "end")
        last = await _until_ended(good)
        await good.close()
    assert codes == [(aiohttp.WSMsgType.CLOSE, 1003)] * 2 + [(aiohttp.WSMsgType.CLOSE, 1009)] + \
        [(aiohttp.WSMsgType.CLOSE, 1003)]
    assert last["counts"]["processed"] == sent == 20


# ---------------------------------------------------------------------- slow and stuck pages
async def test_a_page_that_never_reads_neither_slows_the_pipeline_nor_grows_memory(tmp_path):
    cfg = _config(tmp_path, image_size=64)
    async with harness.running(cfg) as (service, collector), aiohttp.ClientSession() as http:
        server = service.web.server
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        host, port = re.match(r"http://([^/]+):(\d+)/", server.url).groups()
        stuck.connect((host, int(port)))
        stuck.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        while server.clients < 1:
            await asyncio.sleep(0.01)
        (request,) = server._sockets.values()  # the kernel holds little for it: its messages back up at once
        request.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        late = await http.ws_connect(server.url + "ws")
        buffered, sizes = [], []
        sending = asyncio.create_task(_stream(cfg, 600, rate=150.0))
        while not sending.done():
            buffered.append(max(server.buffered_bytes()))
            sizes.append(len((await late.receive(timeout=10)).data))  # a page that reads gets every update
        sent = await sending
        end = await collector.wait_for(lambda t, m: t == "series" and m["type"] == "end")
        assert server.clients == 2
        await late.close()
        stuck.close()
    assert end["processed"] == sent == 600 and end["dropped"] == 0
    assert max(buffered) > 0  # the stuck page's socket did fill up
    assert sum(sizes) > 2 * max(buffered)  # far less is held for it than was sent to the others
    assert max(buffered) <= WRITER_LIMIT + 2 * max(sizes), (buffered, sizes)


async def test_a_page_that_reads_nothing_for_long_is_disconnected_and_the_others_stay(tmp_path, monkeypatch):
    monkeypatch.setattr(web_server, "SEND_TIMEOUT_S", 0.5)
    cfg = _config(tmp_path, image_size=64)
    async with harness.running(cfg) as (service, _), aiohttp.ClientSession() as http:
        server = service.web.server
        host, port = re.match(r"http://([^/]+):(\d+)/", server.url).groups()
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect((host, int(port)))
        stuck.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        while server.clients < 1:
            await asyncio.sleep(0.01)
        (request,) = server._sockets.values()
        request.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        reader = await http.ws_connect(server.url + "ws")
        stop = threading.Event()
        sending = asyncio.create_task(_stream(cfg, 100_000, rate=100.0, stop=stop))
        try:
            async def until_dropped() -> None:
                while server.clients == 2:
                    await reader.receive(timeout=10)
            await asyncio.wait_for(until_dropped(), 30)
            assert server.clients == 1 and not reader.closed
            assert (await reader.receive(timeout=10)).type == aiohttp.WSMsgType.TEXT
        finally:
            stop.set()
            await sending
            await reader.close()
            stuck.close()


async def test_a_page_connecting_mid_series_gets_the_current_state_at_once(tmp_path):
    cfg = _config(tmp_path, update_period=1.0)
    async with harness.running(cfg) as (service, collector), aiohttp.ClientSession() as http:
        stop = threading.Event()
        sending = asyncio.create_task(_stream(cfg, 400, rate=200.0, stop=stop))
        try:
            await collector.wait_for(lambda t, m: t == "stats" and m["frame"] >= 100)
            ws = await http.ws_connect(service.web.server.url + "ws")
            first = json.loads((await ws.receive(timeout=0.5)).data)  # well before the next tick
            await ws.close()
        finally:
            stop.set()
            await sending
    assert first["reset"] and {"header", "counts", "latest", "banners", "image:frame"} <= set(first["parts"])
    assert first["parts"]["counts"]["processed"] >= 100 and first["rows"]["frames"][:3] == [0, 1, 2]
    assert {"x", "y", "intensity", "npix"} <= set(first["parts"]["header"]["declared"]["rows"]["spots"])


# ---------------------------------------------------------------------- configuration
async def test_a_port_in_use_stops_the_service_with_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg_path = tmp_path / "cfg.toml"
        cfg_path.write_text(f'[publisher]\nendpoint = "{harness.free_endpoint()}"\n[http]\nport = {port}\n'
                            f'[output]\ndirectory = "{tmp_path}"\n')
        done = subprocess.run([sys.executable, "-m", "livediff", "serve", "--config", str(cfg_path), "--no-progress"],
                              capture_output=True, text=True, timeout=120)
        again = subprocess.run([sys.executable, "-m", "livediff", "--log-level", "warning", "serve", "--config",
                                str(cfg_path), "--no-progress", "--no-http"], capture_output=True, text=True,
                               timeout=120)
        viewer = subprocess.run([sys.executable, "-m", "livediff", "view", harness.free_endpoint(), "--port",
                                 str(port)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1] == (f"livediff serve: cannot serve the live page on 127.0.0.1:{port}: address "
                                            f"already in use; set [http] port to a free port, or run without the "
                                            f"page (--no-http)")
    assert again.returncode == 0, again.stderr  # --no-http: the same config runs
    assert viewer.returncode == 1 and viewer.stderr.splitlines()[-1] == (
        f"livediff view: cannot serve the live page on 127.0.0.1:{port}: address already in use; choose another "
        f"--port")


async def test_binding_beyond_loopback_is_allowed_when_configured_and_warned_about(tmp_path, caplog):
    cfg = _config(tmp_path, host="0.0.0.0")
    async with harness.running(cfg) as (service, _):
        url = service.web.server.url
    assert url.startswith("http://0.0.0.0:")
    assert any(r.levelname == "WARNING" and "not on loopback" in r.getMessage() for r in caplog.records)


def test_the_http_section_is_checked_like_every_other():
    with pytest.raises(ConfigError) as info:
        parse({"http": {"port": 70000, "hots": "0.0.0.0", "contrast": "linear", "update_period": 2.0}}, origin="x.toml")
    lines = str(info.value).splitlines()
    assert "x.toml: http.port: must be <= 65535, got 70000" in lines
    assert "x.toml: http.hots: unknown key (did you mean 'host'?)" in lines
    assert "x.toml: http.contrast: must be one of 'log', 'percentile', got 'linear'" in lines
    assert "x.toml: http.update_period: must be <= 1.0, got 2.0" in lines  # the page updates at least once a second


async def test_no_page_when_disabled(tmp_path):
    async with harness.running(_config(tmp_path, enabled=False)) as (service, _):
        assert service.web is None


# ---------------------------------------------------------------------- livediff view
async def test_livediff_view_serves_the_same_state_from_the_pub_socket(tmp_path):
    cfg = _config(tmp_path, enabled=False)
    stop = asyncio.Event()
    async with harness.running(cfg) as (service, collector):
        settings = HttpSettings(port=0, update_period=0.1)
        original = web_view.LiveServer
        servers = []
        web_view.LiveServer = lambda *a, **k: servers.append(original(*a, **k)) or servers[-1]
        try:
            viewing = asyncio.create_task(web_view.run(service.publisher.endpoint, settings, stop))
            while not servers or servers[0].url is None:
                await asyncio.sleep(0.05)
        finally:
            web_view.LiveServer = original
        url = servers[0].url
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(url + "ws")
            await asyncio.sleep(0.3)  # the viewer's subscription is live (a heartbeat per 0.05 s comes through)
            sent = await _stream(cfg, 25)
            end = await collector.wait_for(lambda t, m: t == "series" and m["type"] == "end")
            parts = await _until_ended(ws)
            async with http.get(url + "api/status") as r:
                status = await r.json()
            async with http.get(url + "metrics") as r:
                families = {f.name: f for f in text_string_to_metric_families(await r.text())}
            await ws.close()
        stop.set()
        await viewing
    last = collector.of("stats")[-1]
    assert parts["counts"]["processed"] == end["processed"] == sent == 25
    assert parts["latest"]["frame"] == last["frame"] and parts["latest"]["values"]["n_spots"] == last["n_spots"]
    assert parts["latest"]["rows"]["spots"]["n"] == last["n_spots"]
    assert "n_spots" in parts["header"]["declared"]["columns"][""]  # learned from the messages
    assert set(status) == set(schema.MESSAGES["status", "heartbeat"].keys)
    assert families["livediff_frames_processed"].samples[0].value == 25
    assert families["livediff_frames_received"].samples[0].value == 25


# ---------------------------------------------------------------------- banners
async def test_banners_say_when_the_input_is_malformed_the_stream_stops_and_the_series_ends(tmp_path, monkeypatch):
    monkeypatch.setattr(web_state, "STALL_S", 0.5)
    cfg = _config(tmp_path)
    sim = DiffractionSimulator(shape=(64, 80), n_frames=6, n_spots=4)
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(cfg.source.endpoint)

    async def banners_until(ws, predicate) -> list[dict]:
        async def scan() -> list[dict]:
            while True:
                parts = json.loads((await ws.receive(timeout=10)).data)["parts"]
                if "banners" in parts and predicate(parts["banners"]):
                    return parts["banners"]
        return await asyncio.wait_for(scan(), 30)

    try:
        async with harness.running(cfg) as (service, collector), aiohttp.ClientSession() as http:
            ws = await http.ws_connect(service.web.server.url + "ws")
            good = [native.encode_start(sim.series_start()), *(native.encode_image(1, i, sim.frame(i)) for i in (0, 1))]
            for parts in [*good, *([b"\xc1 not msgpack", b""] for _ in range(3))]:
                await asyncio.to_thread(push.send_multipart, parts)
            malformed = await banners_until(ws, lambda bs: any("malformed input: 3 " in b["text"] for b in bs))
            stalled = await banners_until(ws, lambda bs: any("stopped" in b["text"] for b in bs))
            await asyncio.to_thread(push.send_multipart, native.encode_end(1))
            ended = await banners_until(ws, lambda bs: any("ended" in b["text"] for b in bs))
            await ws.close()
    finally:
        push.close(linger=0)
        ctx.term()
    assert malformed[0] == {"level": "error", "text": "malformed input: 3 messages failed to decode in the last 10 s "
                                                      "(see the service log)"}
    assert any(b["level"] == "warning" and b["text"].endswith("has the stream stopped?") for b in stalled)
    assert {"level": "warning", "text": "series 1 ended (end): 2 of 6 frames processed, 4 lost, 3 bad"} in ended


# ---------------------------------------------------------------------- load
def test_the_e2e_bench_holds_page_clients_open_during_the_run():
    from livediff.bench import e2e

    report = e2e.run_load(detector="small", rate=100.0, seconds=1.5, web_clients=2, web_stalled=1)
    assert report["processed"] == report["sent"] == 150 and report["dropped"] == 0
    assert (report["web_clients"], report["web_stalled"]) == (2, 1)
    assert report["web_messages"] >= 4  # each reading client got updates (>= 1 per second)
    assert report["rss_mb"]["max"] >= report["rss_mb"]["first"] > 0
    assert "page clients: 2 reading" in e2e.format_report(report)
