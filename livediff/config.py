"""TOML configuration -> frozen, validated dataclasses: the top of the stack.

The whole file is parsed and checked at start-up: unknown keys (with the nearest valid
name suggested), wrong types and out-of-range values are all reported at once, each
error naming the file, the dotted key, what was expected and what was found::

    configs/mx.toml: operators.summary.sigma: unknown key (did you mean 'sigma_strong'?)

Each section is a settings dataclass defined beside the code that uses it (the receiver's
:class:`~livediff.sources.receiver.SourceSettings`, the executors'
:class:`~livediff.executors.PipelineSettings`, the sinks' ``OutputSettings`` and
``PublisherSettings``, the live page's :class:`~livediff.web.HttpSettings`, the control
socket's :class:`~livediff.control.ControlSettings`); nothing below
this module imports it.  The operator chain is
``[operators.LABEL]`` tables in order, each with an optional ``kind`` (default: the label),
so one kind may appear several times under different labels.  The operator registry and
the array-file reader are handed to :func:`parse` by the caller (the built-in ones by
default, imported only then).  With no file, :func:`load` returns the embedded default:
the simulator feeds the service in-process.  :attr:`Config.effective` is the whole
configuration as TOML, every default spelled out: what each series file records.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import tomli_w

from .control import ControlSettings
from .errors import ConfigError
from .executors import PipelineSettings
from .params import param
from .pipeline import OperatorSpec
from .sinks.hdf5 import OutputSettings
from .sinks.publisher import PublisherSettings
from .sources.receiver import SourceSettings
from .web import HttpSettings

#: an operator label: it names HDF5 groups and topics
_LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


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
class Config:
    """The whole, validated configuration."""

    source: SourceSettings = field(default_factory=SourceSettings)
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    publisher: PublisherSettings = field(default_factory=PublisherSettings)
    output: OutputSettings = field(default_factory=OutputSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    control: ControlSettings = field(default_factory=ControlSettings)
    operators: tuple[OperatorSpec, ...] = ()
    text: str = ""
    path: str = "<default>"
    effective: str = ""

    @property
    def digest(self) -> str:
        """Short hash of the effective configuration, published with every series."""
        return hashlib.sha256(self.effective.encode()).hexdigest()[:12]


_SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)
             if f.name not in ("operators", "text", "path", "effective")}

#: the chain when the config names none
DEFAULT_CHAIN = ("summary",)


def load(path: str | Path | None = None, *, registry: Mapping[str, type] | None = None,
         read_array: Callable[[str], Any] | None = None) -> Config:
    """Read and validate a TOML config file; ``None`` gives the embedded default.

    ``registry`` and ``read_array`` are passed to :func:`parse`.

    Raises
    ------
    ConfigError
        Listing every problem as ``FILE: dotted.key: message``.
    """
    if path is None:
        return parse({}, text="", origin="<default>", registry=registry, read_array=read_array)
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from exc
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    return parse(table, text=text, origin=str(path), registry=registry, read_array=read_array)


def parse(table: dict[str, Any], *, text: str = "", origin: str = "<string>",
          registry: Mapping[str, type] | None = None, read_array: Callable[[str], Any] | None = None) -> Config:
    """Validate an already-parsed TOML table (see :func:`load`).

    Parameters
    ----------
    registry : operator kind -> class (default: livediff's operators).
    read_array : reads the array file a ``file`` parameter names (default:
        :func:`livediff.readers.arrays.load_array`).
    """
    if registry is None:
        from .operators import REGISTRY as registry
    if read_array is None:
        from .readers.arrays import load_array as read_array
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
        sections[name] = _build(hints[name], sub, name, errors, read_array)
    ops = table.get("operators", None)
    if ops is None:
        ops = {kind: {} for kind in DEFAULT_CHAIN}
    if not isinstance(ops, dict):
        errors.append(f"operators: expected tables [operators.LABEL], got {_show(ops)}")
        operators: tuple[OperatorSpec, ...] = ()
    else:
        operators = tuple(_build_operator(label, body, registry, read_array, errors)
                          for label, body in ops.items())
    if errors:
        raise ConfigError("\n".join(f"{origin}: {e}" for e in errors))
    effective = {name: _as_toml(value, sub if isinstance(sub := table.get(name), dict) else {})
                 for name, value in sections.items()}
    effective["operators"] = {spec.label: {"kind": spec.kind, **_as_toml(spec.params, ops[spec.label])}
                              for spec in operators}
    return Config(**sections, operators=operators, text=text, path=origin, effective=tomli_w.dumps(effective))


def _as_toml(settings: Any, given: dict[str, Any]) -> dict[str, Any]:
    """A settings dataclass as a TOML table, every field spelled out; a file parameter keeps the
    name it was given (its array is what the code received), and an unset value is left out
    (TOML has no null)."""
    out = {}
    for f in dataclasses.fields(settings):
        value = given.get(f.name) if f.metadata.get("file") else getattr(settings, f.name)
        if isinstance(value, dict):  # {name: settings}
            value = {name: _as_toml(sub, given.get(f.name, {}).get(name, {})) for name, sub in value.items()}
        elif dataclasses.is_dataclass(value):  # a sub-table
            value = _as_toml(value, given.get(f.name, {}))
        if value is not None:
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def _build_operator(label: str, body: Any, registry: Mapping[str, type], read_array: Callable[[str], Any],
                    errors: list[str]) -> OperatorSpec | None:
    key = f"operators.{label}"
    if not isinstance(body, dict):
        errors.append(f"{key}: expected a table, got {_show(body)}")
        return None
    if not _LABEL.match(label):
        errors.append(f"{key}: a label starts with a letter and holds only letters, digits, '_' and '-'")
        return None
    body = dict(body)
    explicit = "kind" in body
    kind = body.pop("kind", label)
    if not isinstance(kind, str) or kind not in registry:
        hint = _suggest(kind, registry) if isinstance(kind, str) else ""
        known = ", ".join(sorted(registry))
        if explicit:
            errors.append(f"{key}.kind: unknown operator {_show(kind)}{hint}; known: {known}")
        else:
            errors.append(f"{key}: unknown operator{hint}; known: {known} (a table labelled otherwise "
                          f"names its operator with kind = \"...\")")
        return None
    cls = registry[kind]
    return OperatorSpec(label, cls, _build(cls.Params, body, key, errors, read_array))


def _build(cls: type, table: dict[str, Any], prefix: str, errors: list[str],
           read_array: Callable[[str], Any]) -> Any:
    """Instantiate dataclass ``cls`` from ``table``, appending problems to ``errors``."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in table.items():
        where = f"{prefix}.{key}"
        if key not in fields:
            errors.append(f"{where}: unknown key{_suggest(key, fields)}")
            continue
        if dataclasses.is_dataclass(hints[key]):  # a sub-table: [prefix.KEY], checked like a section
            if not isinstance(value, dict):
                errors.append(f"{where}: expected a table [{where}], got {_show(value)}")
            else:
                values[key] = _build(hints[key], value, where, errors, read_array)
            continue
        entry = _table_of(hints[key])
        if entry is not None:  # {name: settings}: [...KEY.NAME] tables, each checked like a section
            if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
                errors.append(f"{where}: expected tables [{where}.NAME], got {_show(value)}")
            else:
                values[key] = {name: _build(entry, sub, f"{where}.{name}", errors, read_array)
                               for name, sub in value.items()}
            continue
        problem, converted = _check_type(value, hints[key])
        if problem is None:
            problem = _check_bounds(converted, fields[key].metadata.get("bounds", {}))
        if problem is None and fields[key].metadata.get("file") and converted is not None:
            problem, converted = _read_array(converted, read_array)
        if problem is not None:
            errors.append(f"{where}: {problem}")
        else:
            values[key] = converted
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        errors.append(f"{prefix}: {exc}")
        return None


def _table_of(hint: Any) -> type | None:
    """The settings class of a ``dict[str, SomeSettings]`` field, else None."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is dict and len(args) == 2 and dataclasses.is_dataclass(args[1]):
        return args[1]
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


def _read_array(spec: str, read_array: Callable[[str], Any]) -> tuple[str | None, Any]:
    try:
        return None, read_array(spec)
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

