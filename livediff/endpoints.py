"""ZeroMQ endpoints: the form a configured one must have, and loopback ones for tests and benchmarks.

A port picked by binding to port 0 and releasing it sits in the kernel's ephemeral range,
where any outgoing connection may take it before we bind it again.  Ports below that
range are only ever taken on purpose, so a random free one there is safe to reuse.
(ipc:// endpoints avoid ports altogether, but libzmq 4.3 can lose the last messages of
a PUSH socket that closes while the receiver is behind, so streams use TCP.)
"""
from __future__ import annotations

import random
import re
import socket

_PORTS = range(20000, 32000)  # below Linux's ephemeral range (32768-60999)


def free_tcp_endpoint(host: str = "127.0.0.1") -> str:
    """``tcp://host:port`` with a random port outside the ephemeral range that is free now."""
    for _ in range(200):
        port = random.choice(_PORTS)
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        return f"tcp://{host}:{port}"
    raise OSError(f"no free TCP port found on {host} in {_PORTS.start}-{_PORTS.stop - 1}")


_TCP = re.compile(r"tcp://(?:[^;/\s]+;)?(?:\[[\w:.%]+\]|[\w.*-]+):(?:\*|\d{1,5})")
_FORMS = "tcp://HOST:PORT (PORT a number or *), ipc://PATH or inproc://NAME"


def check_endpoint(endpoint: str) -> str:
    """``endpoint`` if it has the form of a ZeroMQ endpoint livediff uses: ``tcp://HOST:PORT``
    (HOST a name, an address, ``[IPv6]`` or ``*``; PORT 0..65535 or ``*``), ``ipc://PATH`` or
    ``inproc://NAME``.

    Raises
    ------
    ValueError
        Any other string, saying the forms expected.
    """
    ok = isinstance(endpoint, str) and (
        (_TCP.fullmatch(endpoint) is not None and (endpoint.endswith("*") or int(endpoint.rsplit(":", 1)[1]) < 65536))
        or (endpoint.startswith(("ipc://", "inproc://")) and endpoint.split("://", 1)[1].strip() != ""))
    if not ok:
        raise ValueError(f"endpoint {endpoint!r} is not a ZeroMQ endpoint: expected {_FORMS}")
    return endpoint
