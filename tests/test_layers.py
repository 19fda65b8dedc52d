"""Who may import whom (DESIGN.md), checked through ``sys.modules``, transitively.

Each case imports one module in a fresh interpreter and lists the modules it loaded;
none may fall under a forbidden prefix (the package itself or any of its submodules).
Add a rule by adding a row to :data:`RULES`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

_OPERATOR_MUST_NOT = ("zmq", "h5py", "asyncio", "livediff.config", "livediff.sources", "livediff.sinks",
                      "livediff.executors", "livediff.pipeline", "livediff.schema", "livediff.service", "simulators")
_SOURCE_MUST_NOT = ("livediff.operators", "numba", "h5py", "livediff.config", "livediff.sinks",
                    "livediff.executors", "livediff.pipeline", "simulators")
_SINK_MUST_NOT = ("livediff.operators", "numba", "livediff.config", "livediff.sources", "livediff.executors",
                  "livediff.pipeline", "simulators")
_WEB_MUST_NOT = ("livediff.operators", "numba", "h5py", "livediff.config", "livediff.sources", "livediff.executors",
                  "livediff.pipeline", "livediff.sinks.hdf5", "livediff.sinks.publisher", "livediff.service",
                  "livediff.cli", "simulators")
_RUNNER_MUST_NOT = ("zmq", "h5py", "livediff.sources", "livediff.sinks.hdf5", "livediff.sinks.publisher",
                    "livediff.config", "livediff.service", "simulators")

#: (module imported, prefixes it must not load): a prefix ``p`` forbids ``p`` and ``p.*``; ``p.*`` forbids
#: every submodule of ``p`` except the module imported itself.
RULES: list[tuple[str, tuple[str, ...]]] = [
    ("livediff.model", ("livediff.*",)),
    ("livediff.params", ("livediff.*",)),
    *((f"livediff.operators.{family}", _OPERATOR_MUST_NOT) for family in (
        "base", "registry", "spots", "align", "stats", "azimuthal", "powder_center", "flatfield", "corrections",
        "hot_pixels", "dynamic_background", "static_background", "bin", "preview", "summary", "mx", "geometry")),
    *((f"livediff.sources.{name}", _SOURCE_MUST_NOT) for name in (
        "receiver", "native", "dectris_v1", "dectris_v2", "codecs", "cbor_views", "sender", "dectris_encoders",
        "tracker")),
    ("livediff.sources", _SOURCE_MUST_NOT),
    *((f"livediff.sinks.{name}", _SINK_MUST_NOT) for name in ("base", "hdf5", "publisher", "series_file", "exports",
                                                               "refl", "cxi")),
    ("livediff.sinks", _SINK_MUST_NOT),
    *((f"livediff.web.{name}", _WEB_MUST_NOT) for name in ("sink", "server", "state", "view")),
    ("livediff.web", ("aiohttp", "prometheus_client", "plotly", "zmq", "numpy", "livediff.web.server")),
    ("livediff.schema", ("livediff.operators", "numba", "zmq", "livediff.config", "simulators")),
    ("livediff.outputs", ("livediff.operators", "numba", "zmq", "h5py", "livediff.config")),
    ("livediff.pipeline", (*_RUNNER_MUST_NOT, "livediff.operators.registry", "numba")),
    ("livediff.executors", _RUNNER_MUST_NOT),
    ("livediff.executors.runloop", _RUNNER_MUST_NOT),
    ("livediff.executors.dask", _RUNNER_MUST_NOT),  # Dask itself loads when a cluster is used, not before
    ("livediff.executors.dask_actor", (*_RUNNER_MUST_NOT, "dask", "distributed")),
    ("livediff.config", ("livediff.operators.registry", "numba", "livediff.readers", "livediff.service",
                         "livediff.cli", "simulators")),
    ("livediff.replay", ("simulators", "livediff.operators", "livediff.config")),
    ("livediff.service", ("simulators", "livediff.cli")),
    ("livediff.control", ("livediff.config", "livediff.operators", "numba", "h5py", "livediff.executors",
                          "livediff.sinks", "livediff.sources", "simulators")),
    ("livediff.commands", ("simulators", "livediff.cli", "livediff.service", "livediff.operators.registry")),
    ("livediff.cli", ("simulators", "livediff.operators.registry", "numba")),
    ("livediff.report", ("livediff.operators", "numba", "zmq", "livediff.config", "livediff.sinks", "simulators")),
    ("simulators", ("livediff.operators", "livediff.config", "livediff.service")),
    ("simulators.diffraction", ("livediff.operators",)),
    ("simulators.powder", ("livediff.operators",)),
    ("simulators.rotation", ("livediff.operators",)),
]

_LOADED = "import importlib, json, sys; importlib.import_module(sys.argv[1]); print(json.dumps(sorted(sys.modules)))"


def loaded_by(module: str) -> list[str]:
    """The names in ``sys.modules`` after importing ``module`` alone in a fresh interpreter."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", _LOADED, module], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, f"importing {module} failed:\n{proc.stderr}"
    return json.loads(proc.stdout)


@pytest.mark.parametrize(("module", "forbidden"), RULES, ids=[m for m, _ in RULES])
def test_module_does_not_load_what_it_must_not(module, forbidden):
    names = loaded_by(module)
    assert module in names
    bad = [n for n in names if n != module and any(_under(n, p) for p in forbidden)]
    assert not bad, f"importing {module} loads {', '.join(bad)}; it must not load {', '.join(forbidden)}"


def _under(name: str, prefix: str) -> bool:
    if prefix.endswith(".*"):
        return name.startswith(prefix[:-1])
    return name == prefix or name.startswith(prefix + ".")
