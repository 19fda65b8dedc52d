"""The PUB socket live clients subscribe to; messages are built by :mod:`livediff.schema`.

PUB never blocks: a subscriber that cannot keep up loses messages at its high-water
mark, and the pipeline never waits for it.  Messages the socket refuses are counted.
"""
from __future__ import annotations

import logging
from typing import Any

import zmq

from .. import schema
from ..config import PublisherConfig

log = logging.getLogger(__name__)


class Publisher:
    """Owns the PUB socket; :meth:`publish` encodes and sends without blocking."""

    def __init__(self, context: zmq.Context, config: PublisherConfig) -> None:
        self.sent = 0
        self.refused = 0
        self._sock = context.socket(zmq.PUB)
        self._sock.setsockopt(zmq.SNDHWM, config.sndhwm)
        self._sock.setsockopt(zmq.LINGER, 0)
        try:
            self._sock.bind(config.endpoint)
        except zmq.ZMQError as exc:
            self._sock.close(linger=0)
            raise OSError(f"cannot publish on {config.endpoint}: {exc}") from None
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        log.info("publishing on %s", self.endpoint)

    def publish(self, topic: str, type_: str, body: dict[str, Any]) -> None:
        try:
            self._sock.send_multipart(schema.encode(topic, type_, body), flags=zmq.NOBLOCK, copy=False)
            self.sent += 1
        except zmq.Again:
            self.refused += 1

    def close(self) -> None:
        self._sock.close(linger=0)
