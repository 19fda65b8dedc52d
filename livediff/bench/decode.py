"""Decode throughput: bitshuffle-LZ4 frames as EIGER detectors send them, against the codec peers.

An EIGER2 4M-sized frame (2162 x 2068) and a small one (512 x 512), uint32 and uint16, of
simulated diffraction (Poisson background, Bragg spots, module gaps at the top value, dead
and hot pixels), compressed once in the bitshuffle HDF5-filter layout with bitshuffle's
default 8 KiB blocks; ``--quick`` uses the small frame only.  Ours is
:func:`livediff.sources.codecs.decode` with every check, once per installed backend (the
operator names it in brackets: ``numba``, livediff's own decoder, always; and
``dectris-compression`` with the ``fast-codec`` extra), and, for the whole path, the Stream
v1 and v2 decoders on a complete image message (framing checked) followed by the payload's
decoding on a worker (:meth:`~livediff.model.Frame.decode`), with the backend in use.  Peers, each given
the same valid blob (bitshuffle and the HDF5 filter crash on corrupt input, so livediff never
gives them received bytes): dectris-compression's ``decompress`` alone, ``bitshuffle.
decompress_lz4``, and h5py + hdf5plugin reading the blob stored as a chunk by a direct chunk
write.  Every check compares the decoded arrays for equality.
"""
from __future__ import annotations

import functools
import io
from collections.abc import Callable

import numpy as np

from ..sources import codecs
from ..sources.dectris_encoders import StreamV1Encoder, StreamV2Encoder
from ..sources.dectris_v1 import StreamV1Decoder
from ..sources.dectris_v2 import StreamV2Decoder
from . import core

_FULL = (2162, 2068)
_SMALL = (512, 512)


@functools.lru_cache(maxsize=2)
def _frame(shape: tuple[int, int], dtype: str) -> tuple[np.ndarray, bytes]:
    """A realistic detector frame and its bitshuffle-LZ4 blob."""
    from simulators import DiffractionSimulator

    frame = DiffractionSimulator(shape=shape, dtype=dtype, n_frames=1, n_spots=300, background=3.0).frame(0)
    frame.setflags(write=False)
    return frame, codecs.encode_bslz4(frame)


def _check(expected: np.ndarray, decode: Callable[[], np.ndarray]) -> Callable[[], None]:
    def check() -> None:
        got = np.asarray(decode()).reshape(expected.shape)
        np.testing.assert_array_equal(got, expected)
    return check


def _peers(frame: np.ndarray, blob: bytes) -> list[tuple[str, Callable[[], np.ndarray] | None, str | None]]:
    """(name, decode function, why skipped) for each peer."""
    peers: list[tuple[str, Callable[[], np.ndarray] | None, str | None]] = []
    try:
        import dectris.compression as dc
        peers.append(("dectris-compression", lambda: np.frombuffer(
            dc.decompress(blob, "bslz4", elem_size=frame.itemsize), frame.dtype), None))
    except ImportError:
        peers.append(("dectris-compression", None, "not installed (pip install 'livediff[fast-codec]'; "
                                                   "it builds from source)"))
    try:
        import bitshuffle
        payload = np.frombuffer(blob, np.uint8)[12:]
        block = int.from_bytes(blob[8:12], "big") // frame.itemsize
        peers.append(("bitshuffle.decompress_lz4", lambda: bitshuffle.decompress_lz4(
            payload, frame.shape, frame.dtype, block), None))
    except ImportError:
        peers.append(("bitshuffle.decompress_lz4", None, "bitshuffle not installed (wheels for Linux x86-64 only; "
                                                         "the bench extra installs it there)"))
    peers.append(("h5py+hdf5plugin", _hdf5_reader(frame, blob), None))
    return peers


def _hdf5_reader(frame: np.ndarray, blob: bytes) -> Callable[[], np.ndarray]:
    import h5py
    import hdf5plugin

    f = h5py.File(io.BytesIO(), "w", rdcc_nbytes=0)  # no chunk cache: every read decompresses
    ds = f.create_dataset("data", shape=(1, *frame.shape), dtype=frame.dtype, chunks=(1, *frame.shape),
                          **hdf5plugin.Bitshuffle(cname="lz4"))
    ds.id.write_direct_chunk((0, 0, 0), blob)
    return lambda: ds[0]


def _backends() -> list[str]:
    """The installed backends, livediff's own first."""
    return ["numba"] + ([] if codecs.backend() == "numba" else [codecs.backend()])


def cases(quick: bool) -> list[core.Case]:
    out: list[core.Case] = []
    for shape in [_SMALL] if quick else [_FULL, _SMALL]:
        for dtype in ("uint32", "uint16"):
            frame, blob = _frame(shape, dtype)
            peers = _peers(frame, blob)
            for backend in _backends():
                def ours(blob: bytes = blob, shape: tuple[int, int] = shape, dtype: str = dtype,
                         backend: str = backend) -> np.ndarray:
                    return codecs.decode(blob, "bslz4", shape, dtype, backend=backend)

                for name, peer, skipped in peers:
                    if backend != "numba" and name != backend:
                        continue  # the peers once, against our own decoder; dectris-compression against itself
                    out.append(core.Case(operator=f"bslz4 decode [{backend}]", shape=shape, dtype=dtype, ours=ours,
                                         peer=name + " alone" if name == backend else name, peer_fn=peer,
                                         check=None if peer is None else _check(frame, peer), skipped=skipped))
    shape = _SMALL if quick else _FULL
    frame, blob = _frame(shape, "uint32")
    h5 = ("h5py+hdf5plugin", _hdf5_reader(frame, blob))
    for operator, decode in (("stream1 image message", _stream1(frame)), ("stream2 image message", _stream2(frame))):
        out.append(core.Case(operator=f"{operator} [{codecs.backend()}]", shape=shape, dtype="uint32", ours=decode,
                             peer=h5[0] + " alone", peer_fn=h5[1], check=_check(frame, decode)))
    return out


def _stream1(frame: np.ndarray) -> Callable[[], np.ndarray]:
    """Decode one Stream v1 bs32-lz4< image message, as the receiver then a worker do, after its header."""
    encoder, decoder = StreamV1Encoder(encoding="bslz4", header_detail="basic"), StreamV1Decoder()
    start = _series_start(frame)
    (series,) = decoder(encoder.start(start))
    parts = encoder.image(1, 0, frame)
    return lambda: decoder(parts, series=series)[-1].decode(codecs.decode_payload)


def _stream2(frame: np.ndarray) -> Callable[[], np.ndarray]:
    """Decode one Stream v2 image message (CBOR parse, tag 40/69/56500, bslz4 framing) and its payload,
    after its start."""
    encoder, decoder = StreamV2Encoder(encoding="bslz4"), StreamV2Decoder()
    decoder(encoder.start(_series_start(frame)))
    parts = encoder.image(1, 0, frame)
    series = decoder(parts)[0]
    return lambda: decoder(parts, series=series)[-1].decode(codecs.decode_payload)


def _series_start(frame: np.ndarray):
    from ..model import SeriesStart

    return SeriesStart(series=1, shape=frame.shape, dtype=frame.dtype.name, n_frames=1)
