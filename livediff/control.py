"""The control socket: a ZeroMQ REP server on the service's event loop, and its client.

A request is one message holding a map ``{"cmd": NAME, ...}``, as JSON or as msgpack; the
reply comes in the request's encoding, ``{"ok": true, ...}`` or ``{"ok": false, "error":
"..."}``.  A malformed request (not a map, no ``cmd``, an unknown command, several parts)
gets an error reply; the service goes on.  What each command does is the service's
business (:mod:`livediff.commands`): the server only decodes, dispatches and answers.

The socket binds the loopback interface by default: it has no authentication, so anyone
who reaches it can change the running chain.  Another address is logged as a warning.
"""
from __future__ import annotations

import asyncio
import difflib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
import zmq
import zmq.asyncio

from .endpoints import check_endpoint
from .params import param

log = logging.getLogger(__name__)

#: a command: the request map in, the reply's fields out; ValueError = a refusal with its reason
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class ControlSettings:
    """The control socket ``livediff ctl`` talks to (``[control]``)."""

    endpoint: str = param("tcp://127.0.0.1:5558", doc="REP socket for live control (get, set, reset, reload, "
                                                      "pause, resume, snapshot); \"\" = no control socket")

    def __post_init__(self) -> None:
        if self.endpoint:
            check_endpoint(self.endpoint)


class ControlServer:
    """Owns the REP socket; :meth:`run` answers requests until cancelled.

    Parameters
    ----------
    context : the service's asyncio ZeroMQ context.
    endpoint : where to bind.
    handlers : command name -> :data:`Handler`.

    Raises
    ------
    OSError
        When the endpoint cannot be bound (e.g. the port is in use).
    """

    def __init__(self, context: zmq.asyncio.Context, endpoint: str, handlers: Mapping[str, Handler]) -> None:
        self._handlers = dict(handlers)
        self._sock = context.socket(zmq.REP)
        self._sock.setsockopt(zmq.LINGER, 0)
        try:
            self._sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self._sock.close(linger=0)
            raise OSError(f"cannot bind the control socket on {endpoint}: {exc.strerror} (set [control] endpoint, "
                          f"or \"\" for none)") from None
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        if not _loopback(self.endpoint):
            log.warning("control socket on %s: it has no authentication; anyone who reaches it can change the "
                        "chain (bind 127.0.0.1 and use an SSH tunnel)", self.endpoint)
        log.info("control socket on %s", self.endpoint)

    async def run(self) -> None:
        """Answer one request after another (REP: strictly alternating)."""
        while True:
            parts = await self._sock.recv_multipart()
            binary = bytes(parts[0][:1]) not in (b"{", b"[")
            reply = await self.answer(parts)
            await self._sock.send(msgpack.packb(reply, default=str) if binary else
                                  json.dumps(reply, default=str).encode())

    async def answer(self, parts: list[bytes]) -> dict[str, Any]:
        """The reply to the request ``parts``: ``{"ok": True, ...}`` or ``{"ok": False, "error": ...}``."""
        try:
            request = decode_request(parts)
        except ValueError as exc:
            return {"ok": False, "error": str(exc)}
        return await dispatch(self._handlers, request)

    def close(self) -> None:
        self._sock.close(linger=0)


async def dispatch(handlers: Mapping[str, Handler], request: dict[str, Any]) -> dict[str, Any]:
    """Run ``request`` (a map with a string ``cmd``) with its handler; the reply map.

    Whoever asks (the control socket, the live page's ``POST /api/control``) gets the same
    reply: ``{"ok": True, ...}``, or ``{"ok": False, "error": ...}`` for an unknown command, a
    refused one (the handler raised ValueError) or a bug (logged with its trace).
    """
    try:
        handler = handlers.get(request["cmd"])
        if handler is None:
            raise ValueError(f"unknown command {request['cmd']!r}{_suggest(request['cmd'], handlers)}; "
                             f"known: {', '.join(handlers)}")
        return {"ok": True, **await handler(request)}
    except ValueError as exc:
        return {"ok": False, "error": str(exc)}
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a bug: say so, keep serving
        log.exception("control: %s failed", request.get("cmd"))
        return {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}


def decode_request(parts: list[bytes]) -> dict[str, Any]:
    """A request map from a one-part JSON or msgpack message.

    Raises
    ------
    ValueError
        When it is not one part holding a map with a string ``cmd``.
    """
    if len(parts) != 1:
        raise ValueError(f"a request is one message part, got {len(parts)}")
    data = bytes(parts[0])
    try:
        request = json.loads(data) if data[:1] in (b"{", b"[") else msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise ValueError(f"a request is a JSON or msgpack map like {{\"cmd\": \"get\"}}: cannot decode it ({exc})")
    if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
        raise ValueError(f"a request is a map with a string \"cmd\", like {{\"cmd\": \"get\"}}, got "
                         f"{str(request)[:80]}")
    return request


def request(endpoint: str, message: dict[str, Any], *, timeout: float = 10.0) -> dict[str, Any]:
    """Send ``message`` (as JSON) to the control socket at ``endpoint``; the reply map.

    Raises
    ------
    TimeoutError
        When no reply came within ``timeout`` seconds (no service there?).
    """
    context = zmq.Context()
    sock = context.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(check_endpoint(endpoint))
        sock.send(json.dumps(message).encode())
        if not sock.poll(int(timeout * 1000)):
            raise TimeoutError(f"no reply from {endpoint} within {timeout:g} s: is a service running there with "
                               f"that [control] endpoint?")
        return json.loads(sock.recv())
    finally:
        sock.close(linger=0)
        context.term()


def _loopback(endpoint: str) -> bool:
    if not endpoint.startswith("tcp://"):
        return True  # ipc and inproc are local
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")


def _suggest(name: str, options: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
