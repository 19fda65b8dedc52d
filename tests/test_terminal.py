"""``livediff serve`` on a terminal: the progress display and the log never share a line, nothing overflows."""
from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pyte
import pytest

from livediff.endpoints import free_tcp_endpoint

COLS, ROWS = 80, 24
_LOG = re.compile(r"^(\[?\d\d:\d\d:\d\d\]?)?\s+(DEBUG|INFO|WARNING|ERROR|CRITICAL)\s")  # rich's log lines
_PROGRESS = re.compile(r"^series \d+ ")


def _run_on_a_terminal(args: list[str], cwd: Path) -> list[str]:
    """Run ``livediff ARGS`` with a pseudo-terminal of COLS x ROWS as its stdout and stderr; return what it
    wrote, in the pieces the terminal received."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["TERM"] = "xterm-256color"
    proc = subprocess.Popen([sys.executable, "-m", "livediff", *args], stdin=slave, stdout=slave, stderr=slave,
                            cwd=cwd, env=env, close_fds=True)
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert proc.returncode == 0, b"".join(chunks).decode(errors="replace")[-2000:]
    return [chunk.decode(errors="replace") for chunk in chunks]


def test_serve_on_a_terminal_keeps_progress_and_log_apart_and_within_its_width(tmp_path):
    chunks = _run_on_a_terminal(["serve", "--config", _embedded_default(tmp_path)], tmp_path)
    screen = pyte.HistoryScreen(COLS, ROWS, history=10000)
    screen.set_mode(pyte.modes.LNM)  # a pty turns "\n" into "\r\n"
    stream = pyte.Stream(screen)
    progress_seen = set()
    for chunk in chunks:  # every state of the screen the user saw
        stream.feed(chunk)
        for line in screen.display:
            if "fr/s" in line and "queue" in line:
                progress_seen.add(line.rstrip())
                assert _PROGRESS.match(line) and not _LOG.match(line), line  # never on a log line
    assert progress_seen, "the live display was never drawn"
    history = ["".join(line[x].data for x in range(COLS)) for line in screen.history.top]
    lines = [line.rstrip() for line in (*history, *screen.display) if line.strip()]
    assert any(_LOG.match(line) for line in lines), lines
    assert any("series 1: 200 of 200 frames processed" in line for line in lines), lines
    raw_lines = "".join(chunks).replace("\r\n", "\n").split("\n")  # the terminal never had to wrap a line
    assert all(len(_strip_ansi(line).split("\r")[-1]) <= COLS for line in raw_lines)


def _embedded_default(tmp_path: Path) -> str:
    """The embedded default on free ports (a service already running here keeps 5557, 5558 and 8557)."""
    path = tmp_path / "default.toml"
    path.write_text(f'[publisher]\nendpoint = "{free_tcp_endpoint()}"\n[control]\nendpoint = "{free_tcp_endpoint()}"\n'
                    '[http]\nport = 0\n')
    return str(path)


def _strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07", "", text)


@pytest.mark.parametrize("flag", ["--no-progress"])
def test_serve_without_a_terminal_prints_plain_log_lines(tmp_path, flag):
    done = subprocess.run([sys.executable, "-m", "livediff", "serve", "--config", _embedded_default(tmp_path), flag],
                          cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "\x1b[" not in done.stderr and "\r" not in done.stderr
    assert all(re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (INFO|WARNING)", line)
               for line in done.stderr.splitlines()), done.stderr
