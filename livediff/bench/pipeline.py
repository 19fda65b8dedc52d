"""The service without its source: run loop, executor and sinks on frames pre-loaded in-process.

No sender and no socket: a series of ``frames`` small simulated frames (decoded, as a
receiver leaves them) is queued before the run loop starts, so the figure is what the
service can do per frame once frames have arrived.  The HDF5 writer and the publisher
(on a loopback port nobody reads) run as in the service; the live web view does not.
The report gives frames/s, the process' CPU time per frame (every thread: run loop,
workers, writer) and the sizes of the batches the run loop handed out.
"""
from __future__ import annotations

import asyncio
import dataclasses
import tempfile
import time
from collections import Counter
from typing import Any

import numpy as np
import zmq

from .. import executors
from ..config import parse
from ..executors.runloop import STOP, RunLoop
from ..model import Frame, SeriesEnd
from ..queues import EventQueue
from ..sinks.hdf5 import HDF5Writer
from ..sinks.publisher import Publisher, PublisherSettings

_POOL = 8  # distinct frames, queued in turn


def run_pipeline(*, frames: int = 20000, shape: tuple[int, int] = (256, 256), dtype: str = "uint16",
                 chain: tuple[str, ...] = ("summary",), workers: int = 1, batch_frames: int | None = None,
                 hdf5: bool = True) -> dict[str, Any]:
    """Queue ``frames`` frames, then time the run loop through the chain of operator kinds ``chain``.

    ``batch_frames`` overrides ``[pipeline] batch_frames`` (1: a frame at a time).
    """
    from simulators import DiffractionSimulator

    pipeline: dict[str, Any] = {"workers": workers, "queue_size": frames + 2, "snapshot_period": 0.0}
    if batch_frames is not None:
        pipeline["batch_frames"] = batch_frames
    with tempfile.TemporaryDirectory(prefix="livediff-pipeline-") as tmp:
        cfg = parse({"pipeline": pipeline, "output": {"directory": tmp},
                     "operators": {kind: {} for kind in chain}})
        sim = DiffractionSimulator(shape=shape, dtype=dtype, n_frames=_POOL, series=1)
        start = dataclasses.replace(sim.series_start(), n_frames=frames)
        pool = [sim.frame(i) for i in range(_POOL)]
        return asyncio.run(_run(cfg, start, pool, frames, hdf5))


async def _run(cfg: Any, start: Any, pool: list[np.ndarray], n: int, hdf5: bool) -> dict[str, Any]:
    queue: EventQueue = EventQueue(n + 3, "block", Frame)  # the series start, its frames, its end, STOP
    executor = executors.create(cfg.pipeline, cfg.operators)
    context = zmq.Context()
    publisher = Publisher(context, PublisherSettings(endpoint="tcp://127.0.0.1:*", linger_s=0))
    writer = HDF5Writer(cfg.output) if hdf5 else _NoFile()
    sizes: Counter[int] = Counter()
    summaries: list[dict[str, Any]] = []
    loop = RunLoop(queue, executor, [writer, publisher],
                   snapshot_period=0.0, config_text=cfg.effective, config_hash=cfg.digest,
                   on_series_end=summaries.append, batch_frames=cfg.pipeline.batch_frames,
                   batch_mb=cfg.pipeline.batch_mb, on_batch=lambda k: sizes.update((k,)))
    try:
        await executor.warm_up(start)
        await queue.put(start)
        for i in range(n):
            await queue.put(Frame(start.series, i, pool[i % len(pool)], timestamp=time.time()))
        await queue.put(SeriesEnd(start.series, counts={"expected": n, "received": n, "bad": 0, "duplicates": 0, "stray": 0,
                                                            "lost": 0}))
        await queue.put(STOP)
        cpu0, t0 = time.process_time(), time.perf_counter()
        await loop.run()
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        closing = executor.close()
        if asyncio.iscoroutine(closing):
            await closing
        publisher.close()
        writer.close()
        context.term()
    summary = summaries[0]
    batches = sum(sizes.values())
    return {"frames": n, "shape": list(start.shape), "dtype": start.dtype, "chain": [s.label for s in cfg.operators],
            "workers": cfg.pipeline.workers, "batch_frames": cfg.pipeline.batch_frames, "hdf5": hdf5,
            "processed": summary["processed"], "failed": summary["failed"], "dropped": summary["dropped"],
            "fps": n / wall, "cpu_us_per_frame": cpu / n * 1e6, "cpu_cores": cpu / wall,
            "batches": batches, "mean_batch": n / batches if batches else None,
            "batch_sizes": dict(sorted(sizes.items()))}


class _NoFile:
    """Stands in for the HDF5 writer (``hdf5=False``): what the publisher needs of it, nothing written."""

    wants_output = False

    def start_series(self, series: Any) -> dict[str, Any]:
        return {"file": None}

    def add_frames(self, outs: Any) -> None:
        return None

    def add_rows(self, *args: Any) -> None:
        return None

    def write_reductions(self, reductions: Any) -> None:
        return None

    def end_series(self, summary: dict[str, Any]) -> dict[str, Any]:
        return {"not_saved": 0}

    def close(self) -> None:
        return None


def format_report(r: dict[str, Any]) -> str:
    common = sorted(r["batch_sizes"].items(), key=lambda kv: -kv[1])[:4]
    return (f"service alone: {r['frames']} frames {r['shape'][0]}x{r['shape'][1]} {r['dtype']} through "
            f"{', '.join(r['chain'])} on {r['workers']} worker(s), batch_frames {r['batch_frames']}"
            f"{'' if r['hdf5'] else ', no HDF5'}\n"
            f"  processed {r['processed']}  failed {r['failed']}  dropped {r['dropped']}  "
            f"{r['fps']:.0f} fr/s  cpu {r['cpu_us_per_frame']:.0f} us/frame ({r['cpu_cores']:.2f} cores)  "
            f"{r['batches']} batches, mean {r['mean_batch']:.1f} frames; most common sizes "
            + ", ".join(f"{k} x{v}" for k, v in common))
