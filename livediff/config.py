"""TOML configuration -> frozen, validated dataclasses.

The whole file is parsed and checked at start-up: unknown keys (with the nearest valid
name suggested), wrong types and out-of-range values are all reported at once, each
error naming the file, the dotted key, what was expected and what was found::

    configs/mx.toml: operators.summary.sigma: unknown key (did you mean 'sigma_strong'?)

Operators get typed values, never raw dicts.  With no file, :func:`load` returns the
embedded default: the simulator feeds the service in-process.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import ConfigError
from .operators import REGISTRY
from .operators.base import param
from .readers.arrays import load_array


@dataclass(frozen=True)
class SourceConfig:
    """Where frames come from.  No ``endpoint`` = the embedded simulator."""

    protocol: Literal["native", "dectris-stream1", "dectris-stream2"] = param(
        "native", doc="wire protocol: livediff's own, DECTRIS SIMPLON Stream v1 (JSON multipart, detector "
                      "port 9999) or Stream v2 (CBOR, port 31001)")
    channel: str | None = param(None, doc="Stream v2 channel (threshold) to process, e.g. 'threshold_2'; "
                                          "unset = the first the detector announces")
    endpoint: str | None = None
    pattern: Literal["pull", "sub"] = "pull"
    bind: bool = False
    end_timeout: float = param(30.0, gt=0, doc="seconds without a frame before an open series is ended")
    rcvhwm: int = param(64, ge=1, doc="ZeroMQ receive high-water mark (messages)")


@dataclass(frozen=True)
class SimulatorConfig:
    """The embedded simulator's series (used when ``source.endpoint`` is not set)."""

    frames: int = param(200, ge=1)
    rate: float = param(100.0, ge=0, doc="frames per second; 0 = as fast as possible")
    shape: tuple[int, int] = param((256, 320), ge=8, doc="(rows, cols)")
    dtype: Literal["uint16", "uint32"] = "uint16"
    seed: int = 0
    n_spots: int = param(40, ge=0, doc="Bragg spots per frame")
    background: float = param(5.0, ge=0, doc="mean background counts per pixel")
    drift: float = param(0.0, ge=0, doc="pattern drift per frame, px (random walk step)")
    series: int = param(1, ge=0)


@dataclass(frozen=True)
class PipelineConfig:
    """How frames are buffered and processed."""

    workers: int = param(1, ge=1, le=64, doc="worker threads, each with its own chain")
    queue_size: int = param(64, ge=1, doc="frames buffered between receiver and pipeline")
    overflow: Literal["block", "drop"] = "block"
    snapshot_period: float = param(2.0, ge=0, doc="seconds between published/saved snapshots of running "
                                                  "results; 0 = only at series end")


@dataclass(frozen=True)
class PublisherConfig:
    """The msgpack PUB socket clients subscribe to."""

    endpoint: str = "tcp://127.0.0.1:5557"
    sndhwm: int = param(1000, ge=1)
    status_period: float = param(1.0, gt=0, doc="seconds between status heartbeats")


@dataclass(frozen=True)
class OutputConfig:
    """The HDF5 file written per series."""

    directory: str = "livediff-output"
    template: str = "series_{series:06d}.h5"
    flush_frames: int = param(50, ge=1, doc="flush at least every N frames")
    flush_seconds: float = param(1.0, gt=0, doc="flush at least every T seconds")
    queue_size: int = param(1024, ge=1, doc="frames buffered for the writer thread")
    max_pending_mb: float = param(512.0, gt=0, doc="frame data buffered for the writer before frames go unsaved")
    save_raw: bool = param(False, doc="record frames as received in /entry/data/data (bitshuffle-LZ4)")
    save_corrected: bool = param(False, doc="record the chain's output frames in /entry/livediff/corrected")


@dataclass(frozen=True)
class OperatorConfig:
    """One link of the chain: the registry name and its validated parameters."""

    name: str
    params: Any


@dataclass(frozen=True)
class Config:
    """The whole, validated configuration."""

    source: SourceConfig = field(default_factory=SourceConfig)
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    publisher: PublisherConfig = field(default_factory=PublisherConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    operators: tuple[OperatorConfig, ...] = (OperatorConfig("summary", REGISTRY["summary"].Params()),)
    text: str = ""
    path: str = "<default>"

    @property
    def digest(self) -> str:
        """Short hash of the config text, published with every series."""
        return hashlib.sha256(self.text.encode()).hexdigest()[:12]


_SECTIONS = {f.name: f.type for f in dataclasses.fields(Config) if f.name not in ("operators", "text", "path")}


def load(path: str | Path | None = None, *, overrides: dict[str, Any] | None = None) -> Config:
    """Read and validate a TOML config file; ``None`` gives the embedded default.

    Raises
    ------
    ConfigError
        Listing every problem as ``FILE: dotted.key: message``.
    """
    if path is None:
        return parse({}, text="", origin="<default>")
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from exc
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    return parse(table, text=text, origin=str(path))


def parse(table: dict[str, Any], *, text: str = "", origin: str = "<string>") -> Config:
    """Validate an already-parsed TOML table (see :func:`load`)."""
    errors: list[str] = []
    sections: dict[str, Any] = {}
    hints = typing.get_type_hints(Config)
    for key in table:
        if key not in _SECTIONS and key != "operators":
            errors.append(f"{key}: unknown section{_suggest(key, [*_SECTIONS, 'operators'])}")
    for name in _SECTIONS:
        sub = table.get(name, {})
        if not isinstance(sub, dict):
            errors.append(f"{name}: expected a table, got {_show(sub)}")
            continue
        sections[name] = _build(hints[name], sub, name, errors)
    ops = table.get("operators", None)
    if ops is None:
        operators = Config.operators
    elif not isinstance(ops, dict):
        errors.append(f"operators: expected tables [operators.NAME], got {_show(ops)}")
        operators = ()
    else:
        operators = tuple(_build_operator(name, body, errors) for name, body in ops.items())
    if errors:
        raise ConfigError("\n".join(f"{origin}: {e}" for e in errors))
    return Config(**sections, operators=operators, text=text, path=origin)


def _build_operator(name: str, body: Any, errors: list[str]) -> OperatorConfig:
    key = f"operators.{name}"
    if name not in REGISTRY:
        errors.append(f"{key}: unknown operator{_suggest(name, REGISTRY)}; known: {', '.join(sorted(REGISTRY))}")
        return OperatorConfig(name, None)
    if not isinstance(body, dict):
        errors.append(f"{key}: expected a table, got {_show(body)}")
        return OperatorConfig(name, None)
    return OperatorConfig(name, _build(REGISTRY[name].Params, body, key, errors))


def _build(cls: type, table: dict[str, Any], prefix: str, errors: list[str]) -> Any:
    """Instantiate dataclass ``cls`` from ``table``, appending problems to ``errors``."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in table.items():
        where = f"{prefix}.{key}"
        if key not in fields:
            errors.append(f"{where}: unknown key{_suggest(key, fields)}")
            continue
        problem, converted = _check_type(value, hints[key])
        if problem is None:
            problem = _check_bounds(converted, fields[key].metadata.get("bounds", {}))
        if problem is None and fields[key].metadata.get("file") and converted is not None:
            problem, converted = _read_array(converted)
        if problem is not None:
            errors.append(f"{where}: {problem}")
        else:
            values[key] = converted
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        errors.append(f"{prefix}: {exc}")
        return None


def _check_type(value: Any, hint: Any) -> tuple[str | None, Any]:
    """(problem or None, value converted to the hinted type)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None, None
        problems = []
        for arg in args:
            if arg is type(None):
                continue
            problem, converted = _check_type(value, arg)
            if problem is None:
                return None, converted
            problems.append(problem)
        return problems[0], None
    if origin is Literal:
        if value in args:
            return None, value
        return f"must be one of {', '.join(repr(a) for a in args)}, got {_show(value)}", None
    if origin is tuple:
        if not isinstance(value, list):
            return f"expected a list of {len(args)} values, got {_show(value)}", None
        variadic = len(args) == 2 and args[1] is Ellipsis
        if not variadic and len(value) != len(args):
            return f"expected a list of {len(args)} values, got {len(value)}: {_show(value)}", None
        out = []
        for v, a in zip(value, [args[0]] * len(value) if variadic else args):
            problem, converted = _check_type(v, a)
            if problem is not None:
                return f"{problem} (in {_show(value)})", None
            out.append(converted)
        return None, tuple(out)
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return None, float(value)
        return f"expected a number, got {_show(value)}", None
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return None, value
        return f"expected an integer, got {_show(value)}", None
    if hint in (str, bool):
        if isinstance(value, hint):
            return None, value
        return f"expected {'a string' if hint is str else 'true or false'}, got {_show(value)}", None
    raise TypeError(f"config type {hint!r} is not supported")  # a programming error, not user input


def _read_array(spec: str) -> tuple[str | None, Any]:
    try:
        return None, load_array(spec)
    except (OSError, ValueError) as exc:
        return f"cannot read {spec!r}: {exc}", None


def _check_bounds(value: Any, bounds: dict[str, float]) -> str | None:
    tests = {"gt": (lambda v, b: v > b, ">"), "ge": (lambda v, b: v >= b, ">="),
             "lt": (lambda v, b: v < b, "<"), "le": (lambda v, b: v <= b, "<=")}
    for key, bound in bounds.items():
        ok, sign = tests[key]
        for v in value if isinstance(value, tuple) else (value,):
            if not ok(v, bound):
                return f"must be {sign} {bound}, got {_show(value)}"
    return None


def _suggest(name: str, options: Any) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        value = list(value)
    text = repr(value) if not isinstance(value, bool) else str(value).lower()
    return text if len(text) <= 60 else text[:57] + "..."

