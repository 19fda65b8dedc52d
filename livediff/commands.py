"""Live control commands: what ``get``, ``set``, ``reset``, ``reload``, ``pause``, ``resume`` and
``snapshot`` do to a running service, whoever asks (the control socket, the HTTP API, SIGHUP).

A ``set`` or a ``reload`` builds the would-be configuration through the config loader
(:func:`livediff.config.parse`), so a bad value is refused with the loader's own message
and nothing changes.  Only operator parameters may change while the service runs: another
section, or the chain's operators or their order, is refused with the reason (restart the
service for those).  An accepted change, like a ``reset``, goes to the run loop, which
applies it between frames as a new configuration epoch (:meth:`RunLoop.change
<livediff.executors.runloop.RunLoop.change>`); the run loop's executor refuses new
parameters that would change the chain's outputs mid-series.
"""
from __future__ import annotations

import asyncio
import difflib
import sys
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import tomli_w

from .config import Config, load, parse
from .control import Handler
from .executors.runloop import RunLoop

#: the prefix of every key ``set`` may change
_OPERATORS = "operators"


class Commands:
    """The commands of one service, applied one at a time.

    Parameters
    ----------
    config : the configuration the service started with.
    run_loop : the service's run loop.
    """

    def __init__(self, config: Config, run_loop: RunLoop) -> None:
        self.config = config
        self.run_loop = run_loop
        self._lock = asyncio.Lock()  # one change at a time, whichever interface it came from

    def handlers(self) -> dict[str, Handler]:
        """Command name -> handler, for :class:`~livediff.control.ControlServer` and the HTTP API."""
        return {"get": self.get, "set": self.set, "reset": self.reset, "reload": self.reload, "pause": self.pause,
                "resume": self.resume, "snapshot": self.snapshot}

    async def get(self, request: dict[str, Any]) -> dict[str, Any]:
        """The running configuration, as TOML (``toml``) and as a map (``config``), its epoch, whether paused."""
        return {"toml": self.config.effective, "config": tomllib.loads(self.config.effective),
                "epoch": self.run_loop.epoch, "paused": self.run_loop.paused}

    async def set(self, request: dict[str, Any]) -> dict[str, Any]:
        """``{"cmd": "set", "key": "operators.LABEL.NAME", "value": V}`` (or ``"values": {key: V, ...}``):
        change operator parameters from the next frame on."""
        values = request.get("values")
        if values is None:
            if "key" not in request or "value" not in request:
                raise ValueError('set needs "key" and "value" (or "values": {key: value, ...}), e.g. '
                                 '{"cmd": "set", "key": "operators.spots.sigma_strong", "value": 4}')
            values = {request["key"]: request["value"]}
        if not isinstance(values, dict) or not values:
            raise ValueError(f'"values" must be a map of keys to values, got {str(values)[:80]}')
        async with self._lock:
            new = await asyncio.to_thread(assign, self.config, values)
            return await self._apply(new)

    async def reload(self, request: dict[str, Any]) -> dict[str, Any]:
        """Read the config file again and apply what changed (operator parameters only)."""
        if self.config.path == "<default>":
            raise ValueError("the service runs the embedded default configuration: there is no file to reload")
        async with self._lock:
            new = await asyncio.to_thread(load, self.config.path)
            return await self._apply(new)

    async def reset(self, request: dict[str, Any]) -> dict[str, Any]:
        """``{"cmd": "reset", "operator": LABEL}`` (default: the first): restart that operator and those after it."""
        labels = [spec.label for spec in self.config.operators]
        label = request.get("operator") or labels[0]
        if label not in labels:
            close = difflib.get_close_matches(str(label), labels, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"reset: no operator {label!r} in the chain{hint}; the chain: {', '.join(labels)}")
        async with self._lock:
            return await self.run_loop.change(self.config.operators, label, self.config.effective, self.config.digest)

    async def pause(self, request: dict[str, Any]) -> dict[str, Any]:
        return await self.run_loop.pause()

    async def resume(self, request: dict[str, Any]) -> dict[str, Any]:
        return await self.run_loop.resume()

    async def snapshot(self, request: dict[str, Any]) -> dict[str, Any]:
        return await self.run_loop.snapshot_now()

    async def _apply(self, new: Config) -> dict[str, Any]:
        first = first_change(self.config, new)
        if first is None:
            return {"epoch": self.run_loop.epoch, "changed": []}
        reply = await self.run_loop.change(new.operators, first, new.effective, new.digest)
        changed = changed_keys(self.config, new)
        self.config = new
        return {**reply, "changed": changed}


def assign(config: Config, values: dict[str, Any]) -> Config:
    """``config`` with the operator parameters ``values`` (dotted key -> value) changed, validated
    by :func:`~livediff.config.parse` as if the file said so (its errors name the file).

    Raises
    ------
    ValueError
        For a key outside ``operators.LABEL.*`` or of an operator not in the chain, or ``kind``.
    ConfigError
        For what the config loader refuses (unknown key, type, range), in its words.
    """
    table = tomllib.loads(config.effective)
    for key, value in values.items():
        path = str(key).split(".")
        if len(path) < 3 or path[0] != _OPERATORS or path[2] == "kind":
            raise ValueError(f"{key}: only operator parameters (operators.LABEL.NAME) can change while the service "
                             f"runs; for other settings and the chain itself, edit the config file and restart")
        if path[1] not in table[_OPERATORS]:
            labels = list(table[_OPERATORS])
            close = difflib.get_close_matches(path[1], labels, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{key}: no operator {path[1]!r} in the chain{hint}; the chain: {', '.join(labels)} "
                             f"(adding an operator needs a restart)")
        node = table
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"{key}: {part!r} is a value, not a table")
        node[path[-1]] = value
    return parse(table, text=tomli_w.dumps(table), origin=config.path)


def first_change(old: Config, new: Config) -> str | None:
    """The label of the first operator whose parameters differ (None: nothing changed).

    Raises
    ------
    ValueError
        When anything but operator parameters differs: another section, or the chain's
        operators (labels, kinds) or their order.
    """
    before, after = tomllib.loads(old.effective), tomllib.loads(new.effective)
    sections = [name for name in {**before, **after} if name != _OPERATORS and before.get(name) != after.get(name)]
    if sections:
        raise ValueError(f"[{'], ['.join(sections)}] changed: only operator parameters can change while the service "
                         f"runs; restart the service for the rest")
    chain = [(label, op["kind"]) for label, op in before[_OPERATORS].items()]
    wanted = [(label, op["kind"]) for label, op in after[_OPERATORS].items()]
    if chain != wanted:
        raise ValueError(f"the chain would change from {_chain(chain)} to {_chain(wanted)}: its operators and "
                         f"their order cannot change mid-series; restart the service with the new chain")
    return next((label for label, _ in chain if before[_OPERATORS][label] != after[_OPERATORS][label]), None)


def changed_keys(old: Config, new: Config) -> list[str]:
    """The dotted keys of the operator parameters that differ between ``old`` and ``new``."""
    before, after = tomllib.loads(old.effective)[_OPERATORS], tomllib.loads(new.effective)[_OPERATORS]
    return [f"{_OPERATORS}.{label}.{key}" for label in after
            for key in sorted({**before[label], **after[label]}) if before[label].get(key) != after[label].get(key)]


def _chain(ops: list[tuple[str, str]]) -> str:
    return ", ".join(label if label == kind else f"{label} ({kind})" for label, kind in ops) or "(none)"
