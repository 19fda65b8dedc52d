"""The ``livediff`` command: serve | simulate | replay | bench | inspect | report | view | ctl.

Every user error (bad config, unusable endpoint, unwritable output) ends the command
with one line on stderr and a non-zero exit status, never a traceback.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import logging
import os
import sys
from typing import Any

import numpy as np
import zmq

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from . import __version__
from .config import load
from .errors import ConfigError

log = logging.getLogger("livediff")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return args.run(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except (OSError, zmq.ZMQError, ValueError) as exc:
        print(f"livediff {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="livediff", description="Live streaming processor for detector frames.")
    p.add_argument("--version", action="version", version=f"livediff {__version__}")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="receive frames, run the chain, publish and write HDF5")
    s.add_argument("--config", help="TOML config (default: the embedded simulator demo)")
    s.add_argument("--max-series", type=int, help="stop after this many series (default: run until signalled; "
                                                  "1 with the embedded simulator)")
    s.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="live progress display on stderr, logs above it (default: when stderr is a terminal; "
                        "otherwise plain log lines)")
    s.add_argument("--json", action="store_true", help="print each series' summary as a JSON line at the end")
    s.add_argument("--no-http", dest="http", action="store_false",
                   help="no live page, /api/status or /metrics (the [http] section is ignored)")
    s.set_defaults(run=_serve)

    m = sub.add_parser("simulate", help="stream a simulated series with known ground truth")
    m.add_argument("--endpoint", default="tcp://127.0.0.1:9999", help="where to send (default %(default)s)")
    m.add_argument("--bind", action="store_true", help="bind the PUSH socket, as a detector does")
    m.add_argument("--frames", type=int, default=100)
    m.add_argument("--rate", type=float, default=100.0, help="frames/s, 0 = as fast as taken")
    m.add_argument("--shape", type=_shape, default=(256, 320), help="ROWSxCOLS (default 256x320)")
    m.add_argument("--dtype", choices=["uint16", "uint32"], default="uint16")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--spots", type=int, default=40, help="Bragg spots per frame")
    m.add_argument("--background", type=float, default=5.0, help="mean background counts")
    m.add_argument("--drift", type=float, default=0.0, help="random-walk drift step, px/frame")
    m.add_argument("--pattern", choices=["stills", "fixed"], default="stills")
    m.add_argument("--series", type=int, default=1)
    m.add_argument("--protocol", default="native", choices=["native", "dectris-stream1", "dectris-stream2"])
    m.add_argument("--encoding", default="raw", choices=["raw", "bslz4", "lz4"],
                   help="pixel payload encoding (default %(default)s)")
    m.add_argument("--truth", help="write the ground truth (JSON) here")
    m.add_argument("--timeout", type=float, default=10.0,
                   help="seconds to wait for a receiver before giving up (default %(default)s)")
    m.set_defaults(run=_simulate)

    r = sub.add_parser("replay", help="stream a recorded series (livediff HDF5 or NXmx / EIGER master file) "
                                      "as a live detector stream")
    r.add_argument("file", help="livediff series file (saved with save_raw), NXmx / EIGER master file, "
                                "FILE.h5::/dataset holding a (rows, cols, H, W) or (N, H, W) scan stack, or EBSD "
                                "patterns: a folder or zip of TIFF / PNG / BMP files (natural order, or named "
                                "by position like x12y7), h5ebsd, NORDIF .dat, EDAX .up1 / .up2")
    r.add_argument("--endpoint", required=True, help="where to send, e.g. tcp://127.0.0.1:9999")
    r.add_argument("--bind", action="store_true", help="bind the PUSH socket, as a detector does")
    r.add_argument("--rate", type=float, default=0.0, help="frames/s, 0 = as fast as taken (default)")
    r.add_argument("--protocol", default="native", help="native, dectris-stream1 or dectris-stream2 "
                                                          "(default %(default)s)")
    r.add_argument("--encoding", default="bslz4", help="pixel payload: bslz4 (default; stored bitshuffle-LZ4 "
                                                       "chunks are sent as they are), lz4 or raw")
    r.add_argument("--series", type=int, help="series number to announce (default: the recorded one, or 1)")
    r.add_argument("--scan", type=_shape, help="ROWSxCOLS scan of a stack or of EBSD patterns (default: a 4D "
                                               "stack's first two axes, the positions in the file names, the "
                                               "h5ebsd header)")
    r.add_argument("--scan-order", choices=["raster", "serpentine"], default="raster")
    r.add_argument("--flyback", type=int, default=0, help="fly-back frames at the end of each scan line")
    r.add_argument("--timeout", type=float, default=10.0,
                   help="seconds to wait for a receiver before giving up (default %(default)s)")
    r.set_defaults(run=_replay)

    b = sub.add_parser("bench", help="time our kernels against their peers on the same frames")
    b.add_argument("--only", help="one family (decode, corrections, stats, align, spots, mx, azimuthal, virtual, "
                                  "ebsd, hdf5) or operators whose name contains this")
    b.add_argument("--quick", action="store_true", help="short timings (a smoke test, not a measurement)")
    b.add_argument("--json", action="store_true", help="print one JSON list of rows")
    e2e = b.add_argument_group("end-to-end load (--e2e): simulator -> service process -> results")
    e2e.add_argument("--e2e", action="store_true", help="run the whole service under load instead")
    e2e.add_argument("--detector", default="eiger2-4m", choices=["eiger2-16m", "eiger2-4m", "eiger2-1m", "small"])
    e2e.add_argument("--rate", type=float, default=100.0, help="frames/s sent (default %(default)s)")
    e2e.add_argument("--seconds", type=float, default=10.0, help="length of the run (default %(default)s)")
    e2e.add_argument("--config", help="the chain to run (default: the embedded default chain)")
    e2e.add_argument("--protocol", default="native", choices=["native", "dectris-stream1", "dectris-stream2"])
    e2e.add_argument("--encoding", default="bslz4", choices=["raw", "bslz4", "lz4"])
    e2e.add_argument("--workers", type=_int_list, help="override pipeline.workers; a list (1,2) runs each")
    e2e.add_argument("--executor", type=_executor_list,
                     help="override pipeline.executor: threads, dask, or both (threads,dask) to run each")
    e2e.add_argument("--scheduler", help="override pipeline.scheduler (dask: 'local' or tcp://host:8786)")
    e2e.add_argument("--overflow", choices=["block", "drop"], help="override pipeline.overflow")
    e2e.add_argument("--web-clients", type=int, default=0, metavar="N",
                     help="hold N live page clients open during the run (default %(default)s)")
    e2e.add_argument("--web-stalled", type=int, default=0, metavar="N",
                     help="and N page clients that never read (default %(default)s)")
    e2e.add_argument("--max-rate", action="store_true",
                     help="find the highest rate with no frame dropped or left unsaved (overflow = drop)")
    alone = b.add_argument_group("the service alone (--pipeline): run loop, executor and sinks on pre-queued frames")
    alone.add_argument("--pipeline", action="store_true", help="time the service on frames queued in-process "
                                                               "(no sender, no socket): frames/s, CPU per frame, "
                                                               "batch sizes")
    alone.add_argument("--frames", type=int, default=20000, help="frames queued (default %(default)s)")
    alone.add_argument("--chain", default="summary", help="operator kinds, comma-separated (default %(default)s)")
    alone.add_argument("--batch-frames", type=_int_list, help="override pipeline.batch_frames; a list (1,64) "
                                                              "runs each")
    fuzz = b.add_argument_group("service-level fuzzing (--fuzz N)")
    fuzz.add_argument("--fuzz", type=int, metavar="N",
                      help="send N random and mutated messages per protocol into a running service, checking "
                           "after every batch that it runs and counts every message; exit 1 on a problem")
    fuzz.add_argument("--fuzz-seed", type=int, default=0, help="seed of the messages (default %(default)s)")
    b.set_defaults(run=_bench)

    i = sub.add_parser("inspect", help="subscribe to a service's PUB socket and print messages")
    i.add_argument("endpoint", help="e.g. tcp://127.0.0.1:5557")
    i.add_argument("--topics", default="", help="comma-separated topics (default: all)")
    i.add_argument("--count", type=int, help="exit after this many messages")
    i.add_argument("--timeout", type=float, help="exit after this many seconds without a message")
    i.add_argument("--json", action="store_true", help="one JSON object per line (arrays summarised)")
    i.set_defaults(run=_inspect)

    t = sub.add_parser("report", help="the per-image table of a series file (finished, or being written)")
    t.add_argument("file", help="a livediff series file (.h5)")
    t.add_argument("--json", action="store_true", help="print one JSON object (frames and summary)")
    t.set_defaults(run=_report)

    v = sub.add_parser("view", help="serve the live page for a service running elsewhere, fed from its PUB socket")
    v.add_argument("endpoint", help="the service's publisher, e.g. tcp://beamline-host:5557")
    v.add_argument("--host", default="127.0.0.1", help="address to serve the page on (default %(default)s)")
    v.add_argument("--port", type=int, default=8558, help="port of the page (default %(default)s; 0 = any free port)")
    v.set_defaults(run=_view)

    c = sub.add_parser("ctl", help="control a running service: get, set, reset, reload, pause, resume, snapshot")
    c.add_argument("endpoint", help="the service's [control] endpoint, e.g. tcp://127.0.0.1:5558")
    c.add_argument("cmd", choices=["get", "set", "reset", "reload", "pause", "resume", "snapshot"])
    c.add_argument("args", nargs="*", help="set: KEY=VALUE ... (VALUE in TOML: 4, 2.5, \"3d\", [3, 3]; a bare word "
                                           "is a string); reset: the operator (default: the first)")
    c.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the reply (default %(default)s)")
    c.add_argument("--json", action="store_true", help="print the whole reply as JSON")
    c.set_defaults(run=_ctl)
    return p


def _shape(text: str) -> tuple[int, int]:
    try:
        rows, cols = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ROWSxCOLS like 256x320, got {text!r}") from None
    return rows, cols


def _serve(args: argparse.Namespace) -> int:
    from . import progress
    from .service import Service

    config = load(args.config)
    if not args.http:
        config = dataclasses.replace(config, http=dataclasses.replace(config.http, enabled=False))
    live = sys.stderr.isatty() if args.progress is None else args.progress
    with progress.display(live, logging.getLogger().level) as shown:
        service = Service(config, max_series=args.max_series, on_status=shown.update)
        done = asyncio.run(service.run(install_signals=True))
    for s in done:
        if args.json:
            print(json.dumps(s), flush=True)
        else:
            shown.result(f"series {s['series']}: {s['processed']} of {s['expected']} frames processed "
                         f"(received {s['received']}, dropped {s['dropped']}, lost {s['lost']}, bad {s['bad']}, "
                         f"failed {s['failed']}; {s['reason']}) -> {s['file']}")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from simulators import DiffractionSimulator

    from .sources.sender import stream_series

    sim = DiffractionSimulator(shape=args.shape, dtype=args.dtype, n_frames=args.frames, seed=args.seed,
                               n_spots=args.spots, background=args.background, drift=args.drift,
                               pattern=args.pattern, series=args.series)
    if args.truth:
        sim.write_truth(args.truth)
        log.info("ground truth written to %s", args.truth)
    sent = stream_series(sim, args.endpoint, rate=args.rate, bind=args.bind, protocol=args.protocol,
                         encoding=args.encoding, peer_timeout=args.timeout)
    print(f"series {args.series}: {sent} of {args.frames} frames sent to {args.endpoint}")
    return 0 if sent == args.frames else 1


def _replay(args: argparse.Namespace) -> int:
    from .model import Scan
    from .replay import replay

    scan = None if args.scan is None else Scan(args.scan, order=args.scan_order, flyback=args.flyback)
    sent, recorded = replay(args.file, args.endpoint, rate=args.rate, protocol=args.protocol,
                            encoding=args.encoding, bind=args.bind, series=args.series, scan=scan,
                            peer_timeout=args.timeout)
    print(f"{args.file}: {sent} of {recorded} recorded frames sent to {args.endpoint}")
    return 0 if sent == recorded else 1


#: set on this kind of machine to tune OpenBLAS for us; unset for benchmarks so peers run at full speed
_BENCH_UNSET_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def _bench(args: argparse.Namespace) -> int:
    if any(k in os.environ for k in _BENCH_UNSET_ENV):  # OpenBLAS reads them when loaded: start afresh
        env = {k: v for k, v in os.environ.items() if k not in _BENCH_UNSET_ENV}
        os.execve(sys.executable, [sys.executable, "-m", "livediff", *sys.argv[1:]], env)
    if args.fuzz is not None:
        from .bench import fuzz_run

        return 1 if fuzz_run.run(args.fuzz, seed=args.fuzz_seed) else 0
    if args.e2e:
        return _bench_e2e(args)
    if args.pipeline:
        return _bench_pipeline(args)
    from . import bench

    bench.run(only=args.only, quick=args.quick, as_json=args.json)
    return 0


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _executor_list(text: str) -> list[str]:
    names = text.split(",")
    unknown = [n for n in names if n not in ("threads", "dask")]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown executor {unknown[0]!r} (expected threads, dask)")
    return names


def _bench_e2e(args: argparse.Namespace) -> int:
    from .bench import e2e

    results = []
    for executor in args.executor or [None]:
        for workers in args.workers or [None]:
            common = {"detector": args.detector, "config": args.config, "protocol": args.protocol,
                      "encoding": args.encoding, "workers": workers, "executor": executor,
                      "scheduler": args.scheduler, "web_clients": args.web_clients,
                      "web_stalled": args.web_stalled}
            if args.max_rate:
                result = e2e.find_max_rate(start=args.rate, seconds=args.seconds, **common)
            else:
                result = e2e.run_load(rate=args.rate, seconds=args.seconds, overflow=args.overflow, **common)
            results.append(result)
            if args.json:
                continue
            for report in result["runs"] if args.max_rate else [result]:
                print(e2e.format_report(report), flush=True)
            if args.max_rate:
                print(f"max sustainable rate (no frame dropped): {result['max_rate']:.1f} frames/s", flush=True)
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results))
    return 0


def _bench_pipeline(args: argparse.Namespace) -> int:
    from .bench import pipeline

    results = [pipeline.run_pipeline(frames=args.frames, chain=tuple(args.chain.split(",")), workers=workers,
                                     batch_frames=batch)
               for workers in args.workers or [1] for batch in args.batch_frames or [None]]
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results))
    else:
        for result in results:
            print(pipeline.format_report(result), flush=True)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from .client import Subscriber

    topics = [t for t in args.topics.split(",") if t]
    with Subscriber(args.endpoint, topics, idle_timeout=args.timeout) as sub:
        try:
            for topic, msg in itertools.islice(sub, args.count):
                summary = {k: _summarise(v) for k, v in msg.items()}
                if args.json:
                    print(json.dumps({"topic": topic, **summary}), flush=True)
                else:
                    print(topic, " ".join(f"{k}={v}" for k, v in summary.items() if k != "v"), flush=True)
        except KeyboardInterrupt:
            pass
    if sub.received == 0:
        print(f"livediff inspect: nothing received from {args.endpoint}"
              + (f" in {args.timeout:g} s" if args.timeout is not None else ""), file=sys.stderr)
        return 1
    return 0


def _report(args: argparse.Namespace) -> int:
    from .report import format_report, load_report

    report = load_report(args.file)
    print(json.dumps(report) if args.json else format_report(report))
    return 0


def _view(args: argparse.Namespace) -> int:
    import signal

    from .web import HttpSettings
    from .web.view import run

    settings = HttpSettings(host=args.host, port=args.port)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run(args.endpoint, settings, stop)

    asyncio.run(serve())
    return 0


def _ctl(args: argparse.Namespace) -> int:
    from .control import request

    message: dict[str, Any] = {"cmd": args.cmd}
    if args.cmd == "set":
        if not args.args:
            raise ValueError("set needs KEY=VALUE, e.g. operators.spots.sigma_strong=4")
        message["values"] = dict(_assignment(a) for a in args.args)
    elif args.cmd == "reset" and args.args:
        message["operator"] = args.args[0]
    elif args.args:
        raise ValueError(f"{args.cmd} takes no arguments, got {' '.join(args.args)}")
    reply = request(args.endpoint, message, timeout=args.timeout)
    if args.json:
        print(json.dumps(reply))
    elif not reply.get("ok"):
        print(f"livediff ctl {args.cmd}: {reply.get('error')}", file=sys.stderr)
    elif args.cmd == "get":
        print(f"# epoch {reply['epoch']}{' (paused)' if reply['paused'] else ''}\n{reply['toml']}", end="")
    else:
        print(" ".join(f"{k}={v}" for k, v in reply.items() if k != "ok"))
    return 0 if reply.get("ok") else 1


def _assignment(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> (key, value): the value read as TOML, else taken as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"expected KEY=VALUE, e.g. operators.spots.sigma_strong=4, got {text!r}")
    try:
        return key.strip(), tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return key.strip(), value.strip()


def _summarise(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return f"<{value.dtype.str}{list(value.shape)}>" if value.size > 8 else value.tolist()
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _summarise(v) for k, v in value.items()}
    return value
