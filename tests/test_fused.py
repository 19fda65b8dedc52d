"""``summary`` → ``flatfield`` → ``spots`` fused into one pass (``livediff.operators.fused``):
the results of the three operators run one after the other, bit for bit."""
from __future__ import annotations

import asyncio
from dataclasses import replace

import h5py
import numpy as np
import pytest
from harness import config, running

from livediff.config import parse
from livediff.errors import DecodeError
from livediff.executors.offline import process_frames
from livediff.executors.warmup import warm_up
from livediff.model import Encoded, Frame, SeriesStart
from livediff.operators import fused
from livediff.operators.fused import SummaryMaskSpots
from livediff.pipeline import Chain
from livediff.sources import codecs
from livediff.sources.sender import stream_series
from simulators import DiffractionSimulator

MX = {"summary": {}, "flatfield": {}, "spots": {}}


def _series(dtype: str, seed: int = 5, n_frames: int = 6,
            shape: tuple[int, int] = (96, 130)) -> tuple[SeriesStart, list[Frame]]:
    """A header with a detector mask and a saturation level, and frames with gaps, dead and hot
    pixels, counts at and above the saturation, and one frame with a mask of its own; int32
    frames are the uint32 ones with DECTRIS' int32 gap marker."""
    sim = DiffractionSimulator(shape=shape, dtype="uint16" if dtype == "uint16" else "uint32",
                               n_frames=n_frames, n_spots=25, seed=seed, n_dead=30, n_hot=6)
    top = int(np.iinfo(dtype).max)
    frames = []
    for i in range(sim.n_frames):
        image = np.where(sim.frame(i) == sim.top, top, sim.frame(i)).astype(dtype)
        image[i, :9] = top - 50 - i                          # at and above the saturation: masked by flatfield
        frames.append(Frame(1, i, image))
    start = replace(sim.series_start(), dtype=dtype, saturation=top - 60)
    rng = np.random.default_rng(seed)
    frames[2].mask = start.mask & (rng.random(sim.shape) > 0.05)
    return start, frames


def _run(operators: dict, start, frames: list[Frame], *, fuse: bool) -> list[Frame]:
    chain = Chain(parse({"operators": operators}).operators, fuse=fuse)
    chain.start(start)
    return [chain.process(Frame(f.series, f.index, f.data.copy(), mask=f.mask)) for f in frames]


def _assert_same(a: list[Frame], b: list[Frame]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.mask, y.mask)
        np.testing.assert_array_equal(x.data, y.data)
        assert x.results.keys() == y.results.keys()
        for name, result in x.results.items():
            assert result.keys() == y.results[name].keys()
            for key, value in result.items():
                other = y.results[name][key]
                if isinstance(value, dict):
                    assert value.keys() == other.keys()
                    for column in value:
                        np.testing.assert_array_equal(value[column], other[column], err_msg=f"{name} {column}")
                else:
                    assert value == other or (np.isnan(value) and np.isnan(other)), (name, key, value, other)


@pytest.fixture
def fused_calls(monkeypatch):
    """Whether each fused pass took its frame whole (False: the operators ran one after the other)."""
    calls: list[bool] = []
    kernel = fused._fused

    def spy(*args):  # noqa: ANN002, ANN202
        runs, complete = kernel(*args)
        calls.append(bool(complete))
        return runs, complete

    monkeypatch.setattr(fused, "_fused", spy)
    return calls


@pytest.mark.parametrize("dtype", ["uint16", "uint32", "int32"])
def test_fused_pass_gives_the_results_of_the_operators_run_one_after_the_other(dtype, fused_calls):
    start, frames = _series(dtype)
    together = _run(MX, start, frames, fuse=True)
    assert fused_calls == [True] * len(frames)
    apart = _run(MX, start, frames, fuse=False)
    _assert_same(together, apart)
    assert sum(f.results["spots"]["n_spots"] for f in together) > 20
    assert sum(f.results["summary"]["n_saturated"] for f in together) > 0
    assert all((~f.mask[f.data >= start.saturation]).all() for f in together)


def test_a_series_without_a_mask_is_fused_too(fused_calls):
    start, frames = _series("uint32")
    start = replace(start, mask=None)
    frames = [Frame(f.series, f.index, f.data) for f in frames]
    together = _run(MX, start, frames, fuse=True)
    assert fused_calls == [True] * len(frames)
    _assert_same(together, _run(MX, start, frames, fuse=False))
    assert all(not f.mask[f.data >= start.saturation].any() and f.mask.sum() > 0.9 * f.mask.size for f in together)


def test_frames_too_bright_for_the_integer_sums_run_the_operators_one_after_the_other(fused_calls):
    """Values of 700,000 and more (beyond a 7 x 7 window's int32 sums) on many rows: the integer
    kernel hands the frame back, and the operators run alone on it, with the same results."""
    start, frames = _series("int32")
    rng = np.random.default_rng(3)
    rows, cols = rng.integers(0, start.shape[0], 400), rng.integers(0, start.shape[1], 400)
    frames[1].data[rows, cols] = rng.integers(700_000, 2**24 - 1, 400)
    together = _run(MX, start, frames, fuse=True)
    assert fused_calls.count(False) == 1 and fused_calls[1] is False
    _assert_same(together, _run(MX, start, frames, fuse=False))


@pytest.mark.parametrize("operators", [
    {"summary": {}, "flatfield": {"dark": "dark.npy", "flat": "flat.npy"}, "spots": {}},
    {"summary": {}, "flatfield": {"dark_frames": 2}, "spots": {}},
    {"summary": {}, "flatfield": {"output": "float32"}, "spots": {}},
    {"summary": {}, "flatfield": {}, "spots": {"threads": 2}},
    {"summary": {}, "flatfield": {}, "spots": {"algorithm": "dispersion_extended"}},
    {"summary": {}, "stats": {}, "flatfield": {}, "spots": {}},
    {"flatfield": {}, "summary": {}, "spots": {}},
], ids=["dark-and-flat", "live-dark", "float32", "threads", "extended", "not-adjacent", "other-order"])
def test_chains_the_pass_cannot_take_run_each_operator(operators, fused_calls, tmp_path, monkeypatch):
    start, frames = _series("uint16")
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(4)
    np.save("dark.npy", rng.uniform(0, 2, start.shape).astype(np.float32))
    np.save("flat.npy", rng.uniform(0.8, 1.2, start.shape).astype(np.float32))
    chain = Chain(parse({"operators": operators}).operators)
    chain.start(start)
    assert not any(isinstance(getattr(step, "__self__", None), SummaryMaskSpots) for step in chain._steps)
    specs = parse({"operators": operators}).operators
    outcomes = [process_frames(specs, start, [Frame(f.series, f.index, f.data.copy(), mask=f.mask) for f in frames],
                               fuse=fuse)[0] for fuse in (True, False)]
    assert all(isinstance(f, Frame) for f in outcomes[0])
    _assert_same(*outcomes)
    assert fused_calls == []


def test_a_frame_of_another_pixel_type_fails_as_it_would_unfused(fused_calls):
    start, frames = _series("uint32")
    frames[3] = Frame(1, 3, frames[3].data.astype(np.float32))
    outcomes = []
    for fuse in (True, False):
        chain = Chain(parse({"operators": MX}).operators, fuse=fuse)
        chain.start(start)
        outcomes.append(chain.process_batch([Frame(f.series, f.index, f.data.copy(), mask=f.mask) for f in frames]))
    assert len(fused_calls) == len(frames) - 1
    together, apart = outcomes
    assert isinstance(together[3], TypeError) and str(together[3]) == str(apart[3])
    _assert_same(together[:3] + together[4:], apart[:3] + apart[4:])


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_one_two_and_four_workers_give_the_same_fused_results(dtype):
    start, frames = _series(dtype, seed=9, n_frames=12)
    specs = parse({"operators": {**MX, "spots": {"mode": "3d"}}}).operators
    outcomes = {}
    for workers in (1, 2, 4):
        copies = [Frame(f.series, f.index, f.data.copy(), mask=f.mask) for f in frames]
        outcomes[workers] = process_frames(specs, start, copies, workers=workers)
    reference, final = outcomes[1]
    for workers in (2, 4):
        done, finished = outcomes[workers]
        _assert_same(reference, done)
        for column, values in final["spots"]["rows"].items():
            np.testing.assert_array_equal(values, finished["spots"]["rows"][column])
    unfused = process_frames(specs, start, [Frame(f.series, f.index, f.data.copy(), mask=f.mask) for f in frames],
                             fuse=False)
    _assert_same(reference, unfused[0])


async def test_the_files_of_a_fused_and_an_unfused_service_hold_the_same_tables(tmp_path):
    sim = DiffractionSimulator(shape=(64, 90), dtype="uint32", n_frames=8, n_spots=12, seed=21, n_dead=10, n_hot=3)
    tables = {}
    for fuse, encoding in ((False, "raw"), (True, "raw"), (True, "bslz4")):  # bslz4: decoded as the pass reads it
        cfg = config(tmp_path / f"{fuse}-{encoding}", pipeline={"workers": 2, "fuse": fuse}, operators=MX,
                     output={"save_raw": True})
        async with running(cfg) as (service, sub):
            await asyncio.to_thread(stream_series, sim, cfg.source.endpoint, encoding=encoding)
            end = await sub.wait_for(lambda t, m: t == "series" and m["type"] == "end")
        assert end["processed"] == sim.n_frames and end["failed"] == 0
        with h5py.File(end["file"], "r") as f:
            tables[fuse, encoding] = (f["entry/livediff/frames"][:], f["entry/livediff/spots"][:],
                                      f["entry/data/data"][:])
    frames_b, spots_b, raw_b = tables[False, "raw"]
    columns = ["frame", "sum", "mean", "max", "n_valid", "n_saturated", "n_spots", "n_strong", "strong_fraction",
               "spots_rejected"]
    for frames_a, spots_a, raw_a in (tables[True, "raw"], tables[True, "bslz4"]):
        for column in columns:
            np.testing.assert_array_equal(frames_a[f"{column}"], frames_b[f"{column}"], err_msg=column)
        assert spots_a.dtype == spots_b.dtype and len(spots_a) > 0
        np.testing.assert_array_equal(spots_a, spots_b)
        np.testing.assert_array_equal(raw_a, raw_b)


# ---------------------------------------------------------------- frames decoded as the pass reads their rows
ROW_BACKENDS = ["numba"] + (["dectris-compression"] if codecs.backend() == "dectris-compression" else [])
ODD = (97, 131)  # 12707 pixels: bitshuffle stores the last 3 uncompressed, after the last (partial) block


def _compressed(frames: list[Frame]) -> list[Frame]:
    return [Frame(f.series, f.index, None, mask=f.mask, payload=codecs.BitshuffleRows().sample(f.data))
            for f in frames]


def _corrupt_block(payload: Encoded, k: int) -> Encoded:
    """``payload`` with the LZ4 data of block ``k`` replaced by as many 0xFF bytes: the framing
    (every length) is intact, the block does not decode (a literal run longer than the block)."""
    blob = bytearray(payload.buffer)
    pos = 12
    for _ in range(k):
        pos += 4 + int.from_bytes(blob[pos:pos + 4], "big")
    length = int.from_bytes(blob[pos:pos + 4], "big")
    blob[pos + 4:pos + 4 + length] = b"\xff" * length
    return replace(payload, buffer=bytes(blob))


def _process(chain: Chain, frames: list[Frame], rows: codecs.BitshuffleRows) -> list[Frame | BaseException]:
    """What a thread executor's worker does: each frame's pixels taken (:meth:`Chain.take`), then the chain."""
    outcomes = []
    for frame in frames:
        try:
            chain.take(frame, codecs.decode_payload, rows)
        except DecodeError as exc:
            outcomes.append(exc)
            continue
        outcomes += chain.process_batch([frame])
    return outcomes


@pytest.mark.parametrize("backend", ROW_BACKENDS)
@pytest.mark.parametrize("dtype", ["uint16", "uint32", "int32"])
def test_frames_decoded_as_the_pass_reads_their_rows_give_the_results_of_decoded_frames(dtype, backend, fused_calls):
    start, frames = _series(dtype, shape=ODD)
    chain = Chain(parse({"operators": MX}).operators)
    chain.start(start)
    assert chain.reads_rows
    compressed = _compressed(frames)
    together = _process(chain, compressed, codecs.BitshuffleRows(backend))
    assert all(f.decoding is None and f.data is not None for f in compressed)  # each taken row by row, then done
    assert fused_calls == [True] * len(frames)
    _assert_same(together, _run(MX, start, frames, fuse=False))
    for frame, decoded in zip(frames, together):
        np.testing.assert_array_equal(decoded.data, frame.data)


def test_a_frame_the_pass_hands_back_is_decoded_whole_and_run_by_the_operators(fused_calls):
    """Too many values beyond the integer kernel's sums: the pass gives the frame up part way,
    the rest of it is decoded, and the operators run alone on it, with the same results."""
    start, frames = _series("int32", shape=ODD)
    rng = np.random.default_rng(3)
    rows, cols = rng.integers(0, 40, 400), rng.integers(0, ODD[1], 400)  # in the top rows: given up early
    frames[1].data[rows, cols] = rng.integers(700_000, 2**24 - 1, 400)
    chain = Chain(parse({"operators": MX}).operators)
    chain.start(start)
    together = _process(chain, _compressed(frames), codecs.BitshuffleRows())
    assert fused_calls.count(False) == 1 and fused_calls[1] is False
    _assert_same(together, _run(MX, start, frames, fuse=False))


@pytest.mark.parametrize("backend", ROW_BACKENDS)
@pytest.mark.parametrize("block", [0, 3, 6], ids=["first-block", "middle-block", "last-block"])
def test_a_corrupt_payload_fails_its_frame_alone_and_changes_no_operator(backend, block):
    """A block that does not decode, found part way through the pass: the frame fails with the
    message decoding it whole gives, and the operators' series state is that of a series
    without the frame."""
    start, frames = _series("uint32", shape=ODD)  # 12707 pixels of 4 bytes: 7 blocks of 2048
    compressed = _compressed(frames)
    compressed[2] = replace(compressed[2], payload=_corrupt_block(compressed[2].payload, block))
    specs = parse({"operators": {**MX, "stats": {}}}).operators  # stats: series state after the pass
    chain, reference = Chain(specs), Chain(specs)
    chain.start(start)
    reference.start(start)
    outcomes = _process(chain, compressed, codecs.BitshuffleRows(backend))
    assert isinstance(outcomes[2], DecodeError)
    with pytest.raises(DecodeError) as whole:  # numba says which block failed (dectris-compression does not)
        codecs.decode(compressed[2].payload.buffer, "bslz4", ODD, "uint32", backend="numba")
    assert str(outcomes[2]) == str(whole.value) and f"block {block} " in str(outcomes[2])
    expected = reference.process_batch([Frame(f.series, f.index, f.data.copy(), mask=f.mask)
                                        for i, f in enumerate(frames) if i != 2])
    _assert_same(outcomes[:2] + outcomes[3:], expected)
    for label, state in reference.state().items():
        for key, value in state.items():
            np.testing.assert_array_equal(chain.state()[label][key], value, err_msg=f"{label} {key}")


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_compressed_frames_on_one_two_and_four_workers_give_the_results_of_raw_frames(dtype):
    start, frames = _series(dtype, seed=9, n_frames=12, shape=ODD)
    specs = parse({"operators": {**MX, "spots": {"mode": "3d"}}}).operators
    raw, raw_final = process_frames(specs, start, [Frame(f.series, f.index, f.data.copy(), mask=f.mask)
                                                   for f in frames], fuse=False)
    for workers in (1, 2, 4):
        done, final = process_frames(specs, start, _compressed(frames), workers=workers,
                                     decode=codecs.decode_payload, rows=codecs.BitshuffleRows())
        _assert_same(raw, done)
        for column, values in raw_final["spots"]["rows"].items():
            np.testing.assert_array_equal(values, final["spots"]["rows"][column])


def test_the_warm_up_compiles_the_pass_that_decodes_rows():
    start, _ = _series("uint16")
    specs = parse({"operators": MX}).operators
    warm_up(specs, start, rows=codecs.BitshuffleRows())
    assert any("_DecodedRows" in str(signature[0]) for signature in fused._fused.signatures)
