"""The live page, ``/api/status`` and ``/metrics``: what a person at the instrument looks at.

:class:`~livediff.web.sink.LiveView` is a :class:`~livediff.sinks.base.Sink` that keeps
the latest state of the open series (:mod:`.state`) and serves it over HTTP from the
service's own event loop (:mod:`.server`); ``livediff view`` (:mod:`.view`) feeds the
same state from a running service's PUB socket instead.  The page is built from the
outputs the operators declared, so a new operator shows up without page code.  Every
script, style and font is served by the package (``static/``, plotly's bundled
``plotly.min.js``): the page works on a closed network.

This module imports only the settings, so the config loader does not load the web server.
"""
from __future__ import annotations

from .settings import HttpSettings

__all__ = ["HttpSettings"]
