"""Config loading: the whole file checked up front, every error naming file, key and value."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from livediff.config import Config, load, parse
from livediff.operators import REGISTRY
from livediff.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_default_is_the_embedded_simulator():
    cfg = load()
    assert cfg.source.endpoint is None and [op.label for op in cfg.operators] == ["summary"]


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    assert isinstance(load(path), Config)


def test_demo_config_spells_out_the_defaults():
    demo, default = load(REPO / "configs" / "demo.toml"), load()
    for section in ("source", "simulator", "pipeline", "publisher", "output", "http", "control"):
        assert getattr(demo, section) == getattr(default, section), section
    assert demo.operators == default.operators


def _errors(table) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(table, origin="configs/x.toml")
    return str(info.value).splitlines()


def test_all_errors_are_reported_at_once_with_file_key_and_value():
    errors = _errors({
        "source": {"protocl": "native", "pattern": "push"},
        "simulator": {"rate": -1, "shape": [4, "a"], "frames": 2.5},
        "pipeline": {"workers": True},
        "operators": {"sumary": {}},
        "extra": {},
    })
    assert errors == [
        "configs/x.toml: extra: unknown section",
        "configs/x.toml: source.protocl: unknown key (did you mean 'protocol'?)",
        "configs/x.toml: source.pattern: must be one of 'pull', 'sub', got 'push'",
        "configs/x.toml: simulator.rate: must be >= 0, got -1.0",
        "configs/x.toml: simulator.shape: expected an integer, got 'a' (in [4, 'a'])",
        "configs/x.toml: simulator.frames: expected an integer, got 2.5",
        "configs/x.toml: pipeline.workers: expected an integer, got true",
        "configs/x.toml: operators.sumary: unknown operator (did you mean 'summary'?); known: "
        + ", ".join(sorted(REGISTRY)) + ' (a table labelled otherwise names its operator with kind = "...")',
    ]


def test_tuple_length_and_element_bounds_are_checked():
    assert _errors({"simulator": {"shape": [64]}}) == [
        "configs/x.toml: simulator.shape: expected a list of 2 values, got 1: [64]"]
    assert _errors({"simulator": {"shape": [64, 4]}}) == [
        "configs/x.toml: simulator.shape: must be >= 8, got [64, 4]"]


def test_section_that_is_not_a_table():
    assert _errors({"output": 3}) == ["configs/x.toml: output: expected a table, got 3"]


def test_optional_values_accept_absence_and_types():
    cfg = parse({"source": {"endpoint": "tcp://127.0.0.1:9999"}, "simulator": {"rate": 5}})
    assert cfg.source.endpoint == "tcp://127.0.0.1:9999" and cfg.simulator.rate == 5.0
    assert isinstance(cfg.simulator.rate, float)


def test_bad_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[source\n")
    with pytest.raises(ConfigError, match=r"bad.toml: not valid TOML"):
        load(bad)
    with pytest.raises(ConfigError, match=r"nope.toml: cannot read config file"):
        load(tmp_path / "nope.toml")


def test_cli_reports_config_error_in_one_line_and_exits_nonzero(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[pipeline]\noverflow = 'sometimes'\n")
    proc = subprocess.run([sys.executable, "-m", "livediff", "serve", "--config", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"{bad}: pipeline.overflow: must be one of 'block', 'drop', got 'sometimes'"


def test_effective_config_spells_out_every_default_and_parses_back_to_the_same(tmp_path):
    default = load()
    table = tomllib.loads(default.effective)
    assert table["pipeline"]["workers"] == 1 and table["operators"] == {"summary": {"kind": "summary"}}
    assert set(table) == {"source", "simulator", "pipeline", "publisher", "output", "http", "control", "operators"}
    again = parse(table)
    for section in ("source", "simulator", "pipeline", "publisher", "output", "http", "control"):
        assert getattr(again, section) == getattr(default, section), section
    assert again.operators == default.operators and again.effective == default.effective
    # a chain with labels and a file parameter: the file keeps its name, defaults are filled in
    np.save(tmp_path / "dark.npy", np.zeros((4, 5)))
    cfg = parse({"operators": {"flatfield": {"dark": str(tmp_path / "dark.npy")}, "raw": {"kind": "stats"}}})
    ops = tomllib.loads(cfg.effective)["operators"]
    assert ops["flatfield"]["dark"] == str(tmp_path / "dark.npy") and ops["flatfield"]["fill_value"] == 0.0
    assert ops["raw"]["ddof"] == 1 and cfg.digest != default.digest
