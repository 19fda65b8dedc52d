"""Run a service whose output fills up mid-series; print what it said and wrote as one JSON line.

Run by ``test_disk_full.py`` in a process of its own (a crash in libhdf5 must not take
pytest with it):

    python disk_full_child.py MODE DIR

    tmpfs       DIR is a small file system holding a file ``filler``, removed before series 1 ends
    tmpfs-late  the same, ``filler`` removed only after series 2, sent to the full disk
    fsize       files written may not grow past LIMIT_BYTES (RLIMIT_FSIZE)

Series 1 sends frames until the writer reports an error (the disk is full, or a file
reached the size limit), then more frames.  A small series follows (two with
``tmpfs-late``).  The child reads the files back itself (the parent may not see the
tmpfs mount).
"""
from __future__ import annotations

import asyncio
import json
import logging
import resource
import signal
import sys
from pathlib import Path

import h5py
import zmq

from harness import config, running
from livediff.sources import native
from simulators import DiffractionSimulator

LIMIT_BYTES = 1_500_000
SHAPE = (256, 256)


def _series(series: int, n_frames: int) -> DiffractionSimulator:
    return DiffractionSimulator(shape=SHAPE, dtype="uint32", n_frames=n_frames, n_spots=5, seed=series,
                                series=series)


def _read(path: str) -> dict:
    """What a reader finds in ``path``: rows and the summary, or why it cannot open it."""
    try:
        with h5py.File(path, "r", swmr=True) as f:
            ld = f["entry/livediff"]
            summary = ld["summary"][0]
            return {"rows": int(ld["frames"].shape[0]),
                    "summary": {k: (v.decode() if isinstance(v, bytes) else int(v))
                                for k, v in zip(summary.dtype.names, summary.tolist())}}
    except Exception as exc:  # an abandoned file may not open: report it, the test decides
        return {"unreadable": f"{type(exc).__name__}: {exc}"}


async def main(mode: str, directory: Path) -> dict:
    cfg = config(directory, output={"save_raw": True, "flush_frames": 4, "flush_seconds": 0.05})
    result: dict = {"ends": [], "heartbeats": [], "files": []}
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(cfg.source.endpoint)

    async def send(parts: list[bytes]) -> None:
        await asyncio.to_thread(push.send_multipart, parts)

    try:
        async with running(cfg) as (service, sub):
            def heartbeat_after(n: int):
                return sub.wait_for(lambda t, m: t == "status" and m["uptime_s"] > n)

            sim = _series(1, 80)
            await send(native.encode_start(sim.series_start()))
            index = 0
            while service.writer.errors == 0 and index < 60:
                await send(native.encode_image(1, index, sim.frame(index)))
                index += 1
                await asyncio.sleep(0.01)
            result["first_error_at"] = index
            if mode == "tmpfs":  # space is back before the series ends: the summary can be written
                (directory / "filler").unlink()
            for i in range(index, sim.n_frames):
                await send(native.encode_image(1, i, sim.frame(i)))
            await send(native.encode_end(1))
            end = await sub.wait_for(lambda t, m: t == "series" and m["type"] == "end" and m["series"] == 1)
            result["ends"].append(end)
            result["heartbeats"].append(await heartbeat_after(service.status()["uptime_s"]))

            for series in (2, 3) if mode == "tmpfs-late" else (2,):
                if series == 3:
                    (directory / "filler").unlink()
                sim = _series(series, 5)
                await send(native.encode_start(sim.series_start()))
                for i in range(sim.n_frames):
                    await send(native.encode_image(series, i, sim.frame(i)))
                await send(native.encode_end(series))
                end = await sub.wait_for(lambda t, m, s=series: t == "series" and m["type"] == "end"
                                         and m["series"] == s)
                result["ends"].append(end)
                result["heartbeats"].append(await heartbeat_after(service.status()["uptime_s"]))
    finally:
        push.close(linger=0)
        ctx.term()
    result["files"] = [_read(end["file"]) for end in result["ends"]]
    return result


if __name__ == "__main__":
    mode, directory = sys.argv[1], Path(sys.argv[2])
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if mode == "fsize":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT_BYTES, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    report = asyncio.run(main(mode, directory))
    print(json.dumps(report, default=str))
