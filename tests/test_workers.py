"""The threads executor's worker threads: one FIFO queue, results and errors on the loop's futures."""
from __future__ import annotations

import asyncio
import threading

import pytest

from livediff.executors.workers import ChainWorkers


def test_one_worker_runs_jobs_in_submission_order_and_reports_its_number():
    async def main():
        workers = ChainWorkers(1)
        seen = []
        try:
            futures = [workers.submit(lambda w, i: seen.append((w, i)) or i * i, i) for i in range(50)]
            return await asyncio.gather(*futures), seen
        finally:
            workers.close()

    results, seen = asyncio.run(main())
    assert results == [i * i for i in range(50)] and seen == [(0, i) for i in range(50)]


def test_errors_reach_the_future_and_the_worker_goes_on():
    async def main():
        workers = ChainWorkers(2)
        try:
            bad = workers.submit(lambda w: 1 / 0)
            good = workers.submit(lambda w: "fine")
            with pytest.raises(ZeroDivisionError):
                await bad
            return await good
        finally:
            workers.close()

    assert asyncio.run(main()) == "fine"


def test_two_workers_run_at_once_and_a_cancelled_job_never_runs():
    ran = []

    async def main():
        workers = ChainWorkers(2)
        both = threading.Barrier(2, timeout=10)
        try:
            pair = [workers.submit(lambda w: both.wait() is not None and w) for _ in range(2)]
            numbers = sorted(await asyncio.gather(*pair))   # each waits for the other: both ran at once
            gate = threading.Event()
            blockers = [workers.submit(lambda w: gate.wait(10)) for _ in range(2)]
            skipped = workers.submit(lambda w: ran.append(w))
            skipped.cancel()
            gate.set()
            await asyncio.gather(*blockers)
            done = workers.submit(lambda w: "after")    # queued behind the cancelled job
            return numbers, await done
        finally:
            workers.close()

    assert asyncio.run(main()) == ([0, 1], "after")
    assert ran == []
