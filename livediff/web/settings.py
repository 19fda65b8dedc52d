"""``[http]``: where the live page is served and how it behaves."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from ..params import param


@dataclass(frozen=True)
class HttpSettings:
    """The live page, ``/api/status`` and ``/metrics`` (``[http]``).

    The page listens on the loopback interface unless ``host`` says otherwise; another
    address is logged as a warning (reach a remote service through an SSH tunnel instead).
    """

    enabled: bool = param(True, doc="serve the live page (livediff serve --no-http turns it off)")
    host: str = param("127.0.0.1", doc="address to listen on; anything but loopback is logged as a warning")
    port: int = param(8557, ge=0, le=65535, doc="TCP port; 0 = any free port (logged)")
    update_period: float = param(0.5, gt=0, le=1.0, doc="seconds between page updates (latest state only)")
    history: int = param(1000, ge=10, le=100_000, doc="frames shown in the per-frame plots")
    image_size: int = param(320, ge=16, le=2048, doc="longest side of the images sent to the page, px")
    contrast: Literal["log", "percentile"] = param(
        "log", doc="image contrast: log of the values above the 1st percentile, or linear 1st-99.5th percentile")
    hit_min_spots: int = param(10, ge=1, doc="a frame with at least this many spots counts as a hit")
    max_clients: int = param(20, ge=1, doc="page connections served at once (more are refused)")

    def __post_init__(self) -> None:
        if not self.host or any(c.isspace() for c in self.host):
            raise ValueError(f"http.host must be an address or a host name, got {self.host!r}")


def is_loopback(host: str) -> bool:
    """True when ``host`` names the loopback interface (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
