"""What the terminal shows while ``livediff serve`` runs.

On a terminal, a live progress display from ``rich``: one line per open series with its
frames done of those announced, frames/s, queue depth, drops and bad messages, fitted to
the terminal's width, with every log line printed above it (``rich``'s logging handler
shares the display's console, so a log line never lands on the progress line).  Elsewhere
(a pipe, a file, a service manager's journal), plain log lines: the service's own, and a
status line every :data:`PLAIN_PERIOD_S` seconds while a series runs.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

log = logging.getLogger("livediff")

#: seconds between plain status lines when the output is not a terminal
PLAIN_PERIOD_S = 10.0


class TerminalProgress:
    """A live progress display on stderr with the log printed above it.

    Use as a context manager around the service; :meth:`update` takes the service's
    status dict (its heartbeat's content).
    """

    def __init__(self, level: int) -> None:
        self.console = Console(stderr=True)
        self._stdout = Console()
        self._progress = Progress(
            TextColumn("series {task.fields[series]}"), BarColumn(bar_width=None), MofNCompleteColumn(),
            TextColumn("{task.fields[fps]:>6.1f} fr/s  queue {task.fields[queue]}  dropped {task.fields[dropped]}"
                       "  bad {task.fields[bad]}"),
            console=self.console, expand=True, refresh_per_second=4, transient=True)
        self._handler = RichHandler(console=self.console, show_path=False, markup=False,
                                    log_time_format="%H:%M:%S")
        self._level = level
        self._task: int | None = None
        self._series: int | None = None

    def __enter__(self) -> TerminalProgress:
        logging.basicConfig(level=self._level, format="%(name)s: %(message)s", handlers=[self._handler], force=True)
        self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.stop()

    def result(self, text: str) -> None:
        """A line of the command's result on stdout, wrapped to the terminal's width."""
        self._stdout.print(text, markup=False, highlight=False)

    def update(self, status: dict[str, Any]) -> None:
        series = status["series"]
        if series != self._series and self._task is not None:
            self._progress.remove_task(self._task)
            self._task = None
        self._series = series
        if series is None:
            return
        fields = {"fps": status["fps"], "queue": status["queue"], "dropped": status["dropped"], "bad": status["bad"]}
        if self._task is None:
            self._task = self._progress.add_task("", total=status["n_frames"], series=series, **fields)
        self._progress.update(self._task, completed=status["processed"], total=status["n_frames"], **fields)


class PlainProgress:
    """Plain log lines: the service's, and a status line every :data:`PLAIN_PERIOD_S` s during a series."""

    def __init__(self) -> None:
        self._last = time.monotonic()

    def __enter__(self) -> PlainProgress:
        return self  # the log goes where the command line's logging set it up

    def __exit__(self, *exc: Any) -> None:
        return None

    def result(self, text: str) -> None:
        """A line of the command's result on stdout."""
        print(text, flush=True)

    def update(self, status: dict[str, Any]) -> None:
        now = time.monotonic()
        if status["series"] is None or now - self._last < PLAIN_PERIOD_S:
            return
        self._last = now
        total = status["n_frames"] if status["n_frames"] is not None else "?"
        log.info("series %s: %d of %s frames, %.1f frames/s, queue %d, dropped %d, bad %d", status["series"],
                 status["processed"], total, status["fps"], status["queue"], status["dropped"], status["bad"])


def display(live: bool, level: int) -> TerminalProgress | PlainProgress:
    """The live display when ``live`` (a terminal), else plain lines; either sets up logging."""
    return TerminalProgress(level) if live else PlainProgress()
