"""A Dask scheduler and workers on loopback, as processes of their own, for the dask executor's tests.

Workers run without a nanny, so a worker killed with SIGKILL stays dead (a nanny would
restart it).  Every process gets this checkout and ``tests/`` on its ``PYTHONPATH``:
the workers unpickle livediff's chains and the tests' own operators.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class DaskProcesses:
    """``dask scheduler`` and ``dask worker --nthreads 1`` processes; :meth:`close` ends them all."""

    def __init__(self, directory: Path, workers: int = 2, timeout: float = 60.0) -> None:
        path = [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]
        self._env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
        self._log = open(directory / "dask.log", "ab")  # noqa: SIM115 (closed in close())
        self._timeout = timeout
        file = directory / "scheduler.json"
        self.scheduler = self._spawn("dask_scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                     "--scheduler-file", str(file))
        self.workers: list[subprocess.Popen] = []
        deadline = time.monotonic() + timeout
        while not file.exists() or not file.read_text().strip():
            if self.scheduler.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"the Dask scheduler did not start; see {directory / 'dask.log'}")
            time.sleep(0.05)
        self.address = json.loads(file.read_text())["address"]
        self.ensure(workers)

    def _spawn(self, cli: str, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", f"distributed.cli.{cli}", *args], env=self._env,
                                stdout=self._log, stderr=self._log, cwd=ROOT)

    def add_worker(self) -> None:
        """Start one more worker (it joins the scheduler in a few seconds)."""
        self.workers.append(self._spawn("dask_worker", self.address, "--nthreads", "1", "--no-nanny",
                                        "--no-dashboard", "--host", "127.0.0.1"))

    def ensure(self, n: int) -> None:
        """Start workers until ``n`` are alive, and wait until the scheduler has them all."""
        from distributed import Client

        self.workers = [w for w in self.workers if w.poll() is None]
        while len(self.workers) < n:
            self.add_worker()
        with Client(self.address, timeout=self._timeout) as client:
            client.wait_for_workers(n, timeout=self._timeout)
            deadline = time.monotonic() + self._timeout
            while len(client.scheduler_info(n_workers=-1)["workers"]) != n:  # a killed worker still listed
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the Dask scheduler does not list {n} workers")
                time.sleep(0.05)

    def close(self) -> None:
        """Workers first (they say goodbye to the scheduler), then the scheduler."""
        for group in (self.workers, [self.scheduler]):
            for proc in group:
                if proc.poll() is None:
                    proc.terminate()
            for proc in group:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._log.close()
