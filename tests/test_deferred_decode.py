"""Deferred decoding: the receiver checks a compressed payload's framing, the worker decodes it.

A payload whose framing is broken (truncated, a block length past the end) is still one bad
message at the receiver; one whose framing checks out but whose LZ4 data is corrupt reaches
a worker, fails there alone (counted as failed, with the reason logged) and the series
completes.  Pixels are checked against the simulator's frames, never against livediff's decoder.
"""
from __future__ import annotations

import asyncio
import logging
import struct

import h5py
import numpy as np
import pytest

from harness import config, running, send_messages
from livediff.config import parse
from livediff.errors import DecodeError
from livediff.executors.dask_actor import ChainActor, FrameRecord
from livediff.executors.offline import process_frames
from livediff.executors.threads import ThreadExecutor
from livediff.model import Encoded, Frame
from livediff.sources import codecs
from livediff.sources.sender import ENCODERS
from simulators import DiffractionSimulator

CORRUPT, BROKEN = 2, 4   # the frame whose LZ4 data is corrupt, and the one whose framing is broken


def _sim(n_frames: int = 6) -> DiffractionSimulator:
    return DiffractionSimulator(shape=(24, 30), n_frames=n_frames, n_spots=3, seed=11, dtype="uint16")


def _first_block(chunk: bytes) -> tuple[int, int]:
    """(offset, length) of the first LZ4 block of an HDF5-filter chunk, read from the layout itself."""
    (length,) = struct.unpack(">I", chunk[12:16])
    return 16, length


def _corrupt_lz4(chunk: bytes) -> bytes:
    """The same framing, the first block's data made invalid LZ4 (a match at offset 0)."""
    offset, length = _first_block(chunk)
    assert length >= 3
    return chunk[:offset] + b"\x00\x00\x00" + chunk[offset + 3:]


def _broken_chain(chunk: bytes) -> bytes:
    """The same length, the first block's length pointing past the end of the chunk."""
    return chunk[:12] + struct.pack(">I", len(chunk)) + chunk[16:]


def _replace(parts: list, old: bytes, new: bytes) -> list[bytes]:
    """``parts`` with the payload ``old`` replaced by ``new`` (same length, so CBOR or JSON framing holds)."""
    assert len(old) == len(new)
    out = [bytes(p) for p in parts]
    hits = [i for i, p in enumerate(out) if old in p]
    assert len(hits) == 1
    out[hits[0]] = out[hits[0]].replace(old, new)
    return out


def _messages(protocol: str, sim: DiffractionSimulator) -> list[list[bytes]]:
    encoder = ENCODERS[protocol](encoding="bslz4")
    messages = [encoder.start(sim.series_start())]
    for i in range(sim.n_frames):
        parts = encoder.image(sim.series, i, sim.frame(i))
        chunk = codecs.encode_bslz4(sim.frame(i))
        if i == CORRUPT:
            parts = _replace(parts, chunk, _corrupt_lz4(chunk))
        elif i == BROKEN:
            parts = _replace(parts, chunk, _broken_chain(chunk))
        messages.append(parts)
    return [*messages, encoder.end(sim.series)]


@pytest.mark.parametrize("protocol", ["native", "dectris-stream1", "dectris-stream2"])
async def test_a_corrupt_payload_fails_its_frame_alone_and_a_broken_one_is_a_bad_message(tmp_path, protocol, caplog):
    sim = _sim()
    cfg = config(tmp_path, source={"protocol": protocol, "endpoint": "tcp://127.0.0.1:*"},
                 pipeline={"workers": 2}, operators={"summary": {}})
    caplog.set_level(logging.INFO)
    async with running(cfg) as (service, sub):
        await asyncio.to_thread(send_messages, service.receiver.endpoint_bound, _messages(protocol, sim))
        end = await sub.wait_for(lambda t, m: t == "series" and m["type"] == "end", timeout=30)
        assert service.receiver.bad == 1
        assert service.run_loop.totals == {"processed": 4, "failed": 1, "undecodable": 1}
    assert end["reason"] == "end" and end["expected"] == sim.n_frames
    assert (end["received"], end["processed"], end["failed"], end["bad"]) == (5, 4, 1, 1)
    failed = [r.getMessage() for r in caplog.records if "does not decode" in r.getMessage()]
    assert len(failed) == 1 and f"frame {CORRUPT} failed: its payload does not decode: bslz4: corrupt" in failed[0]
    bad = [r.getMessage() for r in caplog.records if "bad message" in r.getMessage()]
    assert len(bad) == 1 and "corrupt or truncated data" in bad[0] and f"frame {BROKEN}" in bad[0]
    with h5py.File(end["file"], "r") as f:
        rows = f["entry/livediff/frames"][:]
    kept = [i for i in range(sim.n_frames) if i not in (CORRUPT, BROKEN)]
    assert rows["frame"].tolist() == kept
    np.testing.assert_array_equal(rows["sum"], [sim.frame(i).sum(dtype=np.float64) for i in kept])


def _compressed(sim: DiffractionSimulator, i: int) -> Frame:
    return Frame(sim.series, i, None, payload=Encoded("bslz4", codecs.encode_bslz4(sim.frame(i)), (24, 30), "uint16"))


def test_threads_decode_on_the_worker_and_1_or_2_workers_agree():
    sim = _sim(8)
    specs = parse({"operators": {"summary": {}, "spots": {}}}).operators
    runs = []
    for workers in (1, 2):
        frames = [_compressed(sim, i) for i in range(sim.n_frames)]
        frames[CORRUPT] = Frame(sim.series, CORRUPT, None, payload=Encoded(
            "bslz4", _corrupt_lz4(codecs.encode_bslz4(sim.frame(CORRUPT))), (24, 30), "uint16"))
        runs.append(_run_threads(specs, sim, frames, workers))
    (done1, final1), (done2, final2) = runs
    for done in (done1, done2):
        assert isinstance(done[CORRUPT], DecodeError)
        for i, frame in enumerate(done):
            if i != CORRUPT:
                assert frame.results["summary"]["sum"] == sim.frame(i).sum(dtype=np.float64)
    for a, b in zip(done1, done2):
        if isinstance(a, Frame):
            assert a.results["summary"] == b.results["summary"]
            for key in a.results["spots"]["rows"]:
                np.testing.assert_array_equal(a.results["spots"]["rows"][key], b.results["spots"]["rows"][key])
    for label in final1:
        for name, value in final1[label].items():
            np.testing.assert_array_equal(value, final2[label][name])


def _run_threads(specs, sim, frames, workers):
    """The frames through a ThreadExecutor: with one worker in one batch, with more one frame
    per batch and ``workers`` in flight.  Outcomes in order, and the final results."""
    async def main():
        batch = len(frames) if workers == 1 else 1
        executor = ThreadExecutor(specs, workers, batch_frames=batch, warm=False, decode=codecs.decode_payload)
        try:
            await executor.start(sim.series_start())
            batches = [frames[i:i + batch] for i in range(0, len(frames), batch)]
            inflight = [job for b in batches[:workers] for job in executor.process(b)]
            done = []
            for b in [*batches[workers:], *[None] * workers]:
                while inflight:
                    job = inflight.pop(0)
                    await asyncio.wait({job.future})
                    outcomes = await executor.collect(job)
                    done += outcomes
                    for outcome, pixels in zip(outcomes, job.received):  # as received, decoded by the worker
                        if isinstance(outcome, Frame):
                            np.testing.assert_array_equal(pixels, sim.frame(outcome.index))
                    if b is not None:
                        break
                if b is not None:
                    inflight += executor.process(b)
            return done, await executor.finish()
        finally:
            executor.close()
    return asyncio.run(main())


def test_without_a_codec_a_compressed_frame_fails_with_a_clear_error():
    sim = _sim(1)
    specs = parse({"operators": {"summary": {}}}).operators
    (done,), _ = process_frames(specs, sim.series_start(), [_compressed(sim, 0)])
    assert isinstance(done, ValueError) and "no codec was given" in str(done)


def test_the_dask_actor_decodes_and_fails_a_corrupt_frame_alone():
    sim = _sim(3)
    specs = parse({"operators": {"summary": {}}}).operators
    actor = ChainActor(specs, codecs.decode_payload, warm=False)
    actor._start(sim.series_start(), False)
    chunks = [codecs.encode_bslz4(sim.frame(i)) for i in range(3)]
    chunks[1] = _corrupt_lz4(chunks[1])
    records = [FrameRecord(i, i, 0.0, 0.0, None, "bslz4", np.frombuffer(c, np.uint8)) for i, c in enumerate(chunks)]
    results = actor._process(records, {})
    assert isinstance(results[1].error, DecodeError) and "bslz4: corrupt" in str(results[1].error)
    for i in (0, 2):
        assert results[i].error is None and results[i].results["summary"]["sum"] == sim.frame(i).sum(dtype=np.float64)


@pytest.mark.parametrize("encoding", ["bslz4", "lz4"])
def test_sinks_get_the_frame_as_received_when_another_process_decoded_it(encoding):
    """The Dask case: no pixels here, the payload decoded on the sink's thread when asked."""
    from livediff.outputs import Layout

    sim = _sim(1)
    chunk = codecs.encode(sim.frame(0), encoding)
    frame = Frame(sim.series, 0, np.zeros((24, 30), np.float32), payload=Encoded(encoding, chunk, (24, 30), "uint16"))
    out = Layout().output_of(frame, None, decode=codecs.decode_payload)
    np.testing.assert_array_equal(out.pixels(), sim.frame(0))
    if encoding == "bslz4":   # stored as it came, by a direct chunk write
        assert out.recorded() == ("bslz4", chunk) and out.recorded_nbytes == len(chunk)
    else:
        np.testing.assert_array_equal(out.recorded(), sim.frame(0))
        assert out.recorded_nbytes == sim.frame(0).nbytes
    with pytest.raises(ValueError, match="no codec"):
        Layout().output_of(frame, None).pixels()


@pytest.mark.parametrize("encoding", ["bslz4", "lz4", "raw"])
def test_a_writer_keeps_only_what_it_records(encoding):
    """What the HDF5 writer and the .cxi exporter queue (``FrameOutput.to_record``): never the
    output frame, and not the decoded pixels when the bitshuffle-LZ4 chunk is what they store, so
    their queues hold what their byte budgets count (``recorded_nbytes``)."""
    import weakref

    from livediff.outputs import FrameOutput
    from livediff.sources import codecs

    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 500, (24, 40)).astype(np.uint16)
    blob = None if encoding == "raw" else codecs.encode(pixels, encoding)
    payload = None if blob is None else codecs.accept(blob, encoding, pixels.shape, pixels.dtype)[1]
    received = codecs.decode(blob, encoding, pixels.shape, pixels.dtype) if blob is not None else pixels.copy()
    output = pixels.astype(np.float32)
    out = FrameOutput(1, 7, 0, {"frame": 7}, {}, {"spots": {"x": np.arange(3.0)}}, received, payload,
                      codecs.decode_payload, output)
    kept = out.to_record()
    assert kept.output is None and kept.row == out.row and kept.rows is out.rows and out.output is output
    stored = kept.recorded()
    if encoding == "bslz4":
        assert kept.received is None and stored[0] == "bslz4" and bytes(stored[1]) == bytes(blob)
        assert kept.recorded_nbytes == len(blob) < pixels.nbytes
        gone = weakref.ref(received)
        del out, received, stored
        assert gone() is None          # nothing the writer holds keeps the decoded frame alive
    else:
        np.testing.assert_array_equal(stored, pixels)
        assert kept.recorded_nbytes == pixels.nbytes
