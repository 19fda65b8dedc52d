"""The ledger of the dask executor: every frame of the series until its contribution is safe.

A frame's contribution to the reductions lives in the partial state of the worker chain
that processed it until the service pulls that state (at a snapshot, at the series end,
or when the ledger is full).  Until then the frame stays in the ledger with its pixels as
received, so that if the worker is lost the frame can be processed again elsewhere.  The
ledger knows nothing of Dask: an entry's ``slot`` is whatever stands for the chain it was
sent to.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .base import Job
from .dask_actor import FrameRecord


@dataclass(eq=False)
class Entry:
    """One frame in the ledger.

    ``job`` is the run loop's, until the frame's result goes out (then None: the ledger keeps
    the payload as received, not the decoded frame); ``epochs`` are the epochs its operators
    named (resolved into ``record.keys`` once the frame may run); ``slot`` is the chain it
    was last sent to (None while queued); ``done`` says that chain returned it, so its
    contribution is in that chain's partial state; ``attempts`` counts the chains lost while
    they held it.
    """

    job: Job | None
    record: FrameRecord
    epochs: dict[str, int | None]
    slot: Any = None
    done: bool = False
    attempts: int = 0
    queued: float = field(default_factory=time.monotonic)


class Ledger:
    """The entries of a series in arrival order, and the bytes their payloads hold."""

    def __init__(self) -> None:
        self._entries: dict[int, Entry] = {}
        self.nbytes = 0

    def add(self, entry: Entry) -> None:
        self._entries[entry.record.seq] = entry
        self.nbytes += entry.record.nbytes

    def remove(self, entry: Entry) -> None:
        if self._entries.pop(entry.record.seq, None) is not None:
            self.nbytes -= entry.record.nbytes

    def held_by(self, slot: Any) -> list[Entry]:
        """The entries last sent to ``slot``, in arrival order."""
        return [e for e in self._entries.values() if e.slot is slot]

    def safe(self, slot: Any) -> int:
        """``slot``'s partial state was pulled: drop the entries it returned; returns how many."""
        done = [e for e in self._entries.values() if e.slot is slot and e.done]
        for e in done:
            self.remove(e)
        return len(done)

    def oldest_keys(self) -> dict[str, int] | None:
        """The version keys of the oldest entry: no entry uses older versions (None: none settled)."""
        first = next(iter(self._entries.values()), None)
        return first.record.keys if first is not None and first.record.keys else None

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries.values())
