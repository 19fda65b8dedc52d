"""The HTTP server of the live page, on the event loop that runs it (aiohttp).

Routes: ``/`` (the page), ``/static/NAME`` (its script, style and plotly's bundled
``plotly.min.js``, all loaded into memory at start: a request never touches the file
system, and a name outside that table is a 404), ``/api/status`` (the status topic's
fields as JSON), ``/metrics`` (Prometheus text format) and ``/ws`` (the page's updates).

Updates are throttled and latest-only: every ``update_period`` the ticker renders the
parts of the state that changed (off the event loop, and only while a page is
connected) and hands them to the :class:`~livediff.web.hub.Hub`; each connection has a
task that sends what its page has not seen once the page has taken what it was sent
before.  A slow page skips versions; a page that stops reading holds at most
:data:`WRITER_LIMIT` bytes and a message beyond what the kernel buffers, and is
disconnected after :data:`SEND_TIMEOUT_S`.  The pipeline never waits for
any of this.  Pages send nothing but ``{"type": "resync"}``; anything else closes that
connection (1003) and only that one.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import importlib.resources
import json
import logging
import math
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from .hub import Client, Hub, encode
from .metrics import CONTENT_TYPE, Metrics
from .settings import HttpSettings, is_loopback
from .state import LiveState

log = logging.getLogger(__name__)

#: a page whose socket accepts nothing for this long is disconnected
SEND_TIMEOUT_S = 30.0
#: the largest message a page may send, bytes
MAX_CLIENT_MESSAGE = 1024
#: a page whose socket holds more than this many bytes (beyond the kernel's buffers) is sent nothing new
WRITER_LIMIT = 1 << 16

_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8"}
_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                                "img-src 'self' data: blob:; connect-src 'self'; font-src 'self'; "
                                "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@functools.cache
def load_assets() -> dict[str, tuple[bytes, str]]:
    """The files the page may load: name -> (content, content type); read once per process."""
    from plotly.offline import get_plotlyjs

    static = importlib.resources.files("livediff.web") / "static"
    assets = {name: (static.joinpath(name).read_bytes(), _TYPES[name[name.rfind("."):]])
              for name in ("index.html", "app.js", "style.css")}
    assets["plotly.min.js"] = (get_plotlyjs().encode("utf-8"), _TYPES[".js"])
    return assets


class LiveServer:
    """Serve ``state`` over HTTP on ``settings.host``:``settings.port``.

    Parameters
    ----------
    settings : the ``[http]`` settings.
    state : what the page shows.
    metrics : what ``/metrics`` exposes.
    status : the service's status now (``Service.status``); None: the last heartbeat the
        state received (``livediff view``).
    control : runs a live-control request map (``{"cmd": "set", ...}``) and returns the reply
        map, as the control socket does; served as ``POST /api/control``.  None: no control
        (``livediff view``, which only watches).
    """

    def __init__(self, settings: HttpSettings, state: LiveState, metrics: Metrics, *,
                 status: Callable[[], dict[str, Any]] | None = None,
                 control: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]] | None = None) -> None:
        self.settings = settings
        self._control = control
        self.state = state
        self.metrics = metrics
        self._status = status
        self.hub = Hub(state.history.since)
        self.url: str | None = None
        self._assets = load_assets()
        self._sockets: dict[web.WebSocketResponse, web.Request] = {}
        self._kick = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Bind and serve; raises OSError (one line) when the address is taken or unusable."""
        host, port = self.settings.host, self.settings.port
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
            sock = socket.create_server((host, port), family=family)
        except OSError as exc:
            why = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            raise OSError(f"cannot serve the live page on {host}:{port}: {why}") from None
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_CLIENT_MESSAGE)
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/api/status", self._api_status)
        app.router.add_post("/api/control", self._api_control)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/ws", self._ws)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        bound = sock.getsockname()
        shown = f"[{bound[0]}]" if family == socket.AF_INET6 else bound[0]
        self.url = f"http://{shown}:{bound[1]}/"
        self._ticker = asyncio.create_task(self._tick(), name="web-ticker")
        if is_loopback(host):
            log.info("live page on %s (from another machine: ssh -L %d:localhost:%d THIS-HOST, then "
                     "http://localhost:%d/)", self.url, bound[1], bound[1], bound[1])
        else:
            log.warning("live page on %s, not on loopback: anyone who can reach this address can watch the "
                        "results; prefer [http] host = \"127.0.0.1\" and an SSH tunnel", self.url)

    async def close(self) -> None:
        """Disconnect every page and stop serving."""
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(code=WSCloseCode.GOING_AWAY, message=b"service stopping"), 1.0)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def clients(self) -> int:
        """Pages connected now."""
        return len(self._sockets)

    def buffered_bytes(self) -> list[int]:
        """Bytes each connection's socket holds, not yet taken by its page."""
        return [r.transport.get_write_buffer_size() for r in self._sockets.values() if r.transport is not None]

    # ------------------------------------------------------------------ updates
    async def _tick(self) -> None:
        period = self.settings.update_period
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            if self._status is not None:
                self.state.set_status(self._status())
            if self._sockets:
                try:
                    await self._update()
                except Exception:  # a rendering bug must not stop the page for good
                    log.exception("live page: update failed")
            self._kick.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._kick.wait(), max(0.0, period - (loop.time() - began)))

    async def _update(self) -> None:
        epoch, rows = self.state.epoch, self.state.history.seq
        builders = self.state.collect()
        rendered = await asyncio.to_thread(lambda: {key: encode(build()) for key, build in builders.items()})
        self.hub.publish(epoch, rendered, rows)

    # ------------------------------------------------------------------ requests
    @web.middleware
    async def _guard(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
        """Security headers on every answer; on loopback, only loopback host names (no DNS rebinding)."""
        if is_loopback(self.settings.host) and not is_loopback(_host_name(request.host)):
            raise web.HTTPForbidden(text="this page answers to localhost only\n", headers=_HEADERS)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            exc.headers.update(_HEADERS)
            raise
        if not response.prepared:
            response.headers.update(_HEADERS)
        return response

    async def _index(self, request: web.Request) -> web.Response:
        return self._asset("index.html")

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name == "index.html" or name not in self._assets:
            raise web.HTTPNotFound()
        return self._asset(name)

    def _asset(self, name: str) -> web.Response:
        body, content_type = self._assets[name]
        cache = "max-age=86400" if name == "plotly.min.js" else "no-cache"
        response = web.Response(body=body, headers={"Content-Type": content_type, "Cache-Control": cache})
        response.enable_compression()
        return response

    async def _api_status(self, request: web.Request) -> web.Response:
        status = self._status() if self._status is not None else self.state.status
        if status is None:
            return _json({"error": f"no heartbeat from {self.state.source} yet"}, status=503)
        return _json(status)

    async def _api_control(self, request: web.Request) -> web.Response:
        """The control socket's commands over HTTP: a JSON request map in, the reply map out."""
        if self._control is None:
            return _json({"ok": False, "error": "this page only watches: no live control here"}, status=404)
        # JSON only: a cross-site form cannot send it without a CORS preflight, which is never granted
        if request.content_type != "application/json":
            return _json({"ok": False, "error": 'send the command as JSON (Content-Type: application/json), '
                                                'e.g. {"cmd": "get"}'}, status=415)
        try:
            body = await request.json()
        except ValueError as exc:
            return _json({"ok": False, "error": f"the request is not JSON: {exc}"}, status=400)
        if not isinstance(body, dict) or not isinstance(body.get("cmd"), str):
            return _json({"ok": False, "error": 'a request is a map with a string "cmd", like {"cmd": "get"}'},
                         status=400)
        reply = await self._control(body)
        return _json(reply, status=200 if reply["ok"] else 400)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is not None and origin.split("://", 1)[-1] != request.host:
            raise web.HTTPForbidden(text="cross-origin connection refused\n")
        if len(self._sockets) >= self.settings.max_clients:
            raise web.HTTPServiceUnavailable(text=f"{self.settings.max_clients} pages are connected already\n")
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=MAX_CLIENT_MESSAGE, compress=False)
        await ws.prepare(request)
        self._sockets[ws] = request
        client = Client(version=self.hub.version)  # its first message: the update this connection asks for
        pump = asyncio.create_task(self._pump(request, ws, client))
        self._kick.set()  # a page that connects gets the current state at once
        try:
            async for msg in ws:
                problem = _client_message(msg)
                if problem is not None:
                    log.info("live page: closing a connection that sent %s", problem)
                    await ws.close(code=WSCloseCode.UNSUPPORTED_DATA, message=problem.encode()[:120])
                    break
                client.epoch = -1  # resync: everything again
                self._kick.set()
        finally:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
            self._sockets.pop(ws, None)
        return ws

    async def _pump(self, request: web.Request, ws: web.WebSocketResponse, client: Client) -> None:
        """Send ``client`` whatever it has not seen, one message at a time, latest only.

        While its socket still holds more than :data:`WRITER_LIMIT` bytes the page is sent
        nothing (it skips those updates); after :data:`SEND_TIMEOUT_S` of that it is dropped.
        """
        loop = asyncio.get_running_loop()
        stalled: float | None = None
        while not ws.closed:
            await self.hub.wait(client)
            transport = request.transport
            if transport is None:
                return
            if transport.get_write_buffer_size() > WRITER_LIMIT:  # it has not taken what it was sent
                client.version = self.hub.version  # skip this update: the next one brings what changed
                stalled = loop.time() if stalled is None else stalled
                if loop.time() - stalled > SEND_TIMEOUT_S:
                    break
                continue
            stalled = None
            text = self.hub.compose(client)
            if text is None:
                continue
            try:
                await asyncio.wait_for(ws.send_str(text), SEND_TIMEOUT_S)
            except asyncio.TimeoutError:
                break
            except (ConnectionError, RuntimeError):
                return
        else:
            return
        log.info("live page: a page read nothing for %.0f s: disconnected", SEND_TIMEOUT_S)
        transport.abort()


def _client_message(msg: Any) -> str | None:
    """None for the one message a page may send; else what is wrong with it."""
    if msg.type == WSMsgType.ERROR:
        return f"an unreadable message ({msg.data})"
    if msg.type != WSMsgType.TEXT:
        return "a binary message"
    try:
        body = json.loads(msg.data)
    except ValueError:
        return "a message that is not JSON"
    if body != {"type": "resync"}:
        return "an unknown message"
    return None


def _host_name(host: str) -> str:
    """The host of a Host header (``name:port``, ``[v6]:port``)."""
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    safe = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in body.items()}
    return web.Response(text=encode(safe), status=status, content_type="application/json")
