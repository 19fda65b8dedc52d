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

#: (module imported, prefixes it must not load): a prefix ``p`` forbids ``p`` and ``p.*``.
RULES: list[tuple[str, tuple[str, ...]]] = [
    ("livediff.sources.sender", ("simulators",)),
    ("livediff.sources.dectris_encoders", ("simulators",)),
    ("livediff.replay", ("simulators",)),
    ("simulators", ("livediff.operators",)),
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
    bad = [n for n in names if any(n == p or n.startswith(p + ".") for p in forbidden)]
    assert not bad, f"importing {module} loads {', '.join(bad)}; it must not load {', '.join(forbidden)}"
