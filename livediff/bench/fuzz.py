"""Service-level fuzzing, the messages: random and mutated messages of every protocol.

:class:`Fuzzer` makes them: good messages of small simulated series (random pixel type,
encoding and, for Stream v1, header detail), the real DECTRIS captures of ``tests/data``
when given, and mutations of both: a header field set to a value of the wrong type or an
absurd size (``shape`` [100000, 100000], 2**64 - 1, NaN, a string, a nested map...), bits
flipped, parts cut, grown, dropped, repeated or swapped, and random bytes.
:mod:`livediff.bench.fuzz_run` sends them into a running service and checks it.
``tests/test_fuzz_service.py`` and ``livediff bench --fuzz N`` use both.
"""
from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import cbor2
import msgpack

from ..sources.sender import ENCODERS

PROTOCOLS = ("native", "dectris-stream1", "dectris-stream2")
#: Where the real DECTRIS captures are in a source checkout.
FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "data"
#: The good series checked after every batch: (rows, cols) of uint16, its frames.
GOOD_SHAPE, GOOD_FRAMES = (20, 28), 5

Message = list[bytes]

#: Values a mutated field takes: wrong types, out of range, absurd sizes, non-finite.
NASTY: tuple[Any, ...] = (
    None, True, -1, 0, 65536, 100000, 2**31, 2**63 - 1, 2**63, 2**64 - 1, -(2**63),
    0.5, 1e308, math.nan, math.inf, -math.inf, "", "lots", "x" * 300, b"\x00\x01",
    [], [1e-4], [1.0, 2.0, 3.0], [0, 3], [100000, 100000], [65536, 65536], [-1, 5], ["a", "b"], [math.nan, 1.0],
    {}, {"beam_center": "middle"}, {"a": {"b": {"c": [1, {"d": None}]}}},
)
#: Absurd frame sizes a mutation gives a shape (``[rows, cols]``, DECTRIS' ``[x, y]``, tag-40 dimensions)
#: or an image side: beyond every limit, or within the pixel limit but huge.
ABSURD_SHAPES = ([100000, 100000], [65536, 65536], [8192, 8193], [5000, 6000])
ABSURD_SIDES = (100000, 65536, 8193)
_SIDE_KEYS = ("x_pixels_in_detector", "y_pixels_in_detector", "image_size_x", "image_size_y")
#: Header keys of each protocol a mutation may add or replace (besides those present).
KEYS = {
    "native": ("v", "type", "series", "frame", "shape", "dtype", "encoding", "n_frames", "geometry", "scan",
               "count_time", "saturation", "meta", "mask", "timestamp", "beam_center", "pixel_size", "distance",
               "wavelength"),
    "dectris-stream1": ("htype", "series", "frame", "header_detail", "shape", "type", "encoding", "size",
                        "x_pixels_in_detector", "y_pixels_in_detector", "bit_depth_image", "nimages", "ntrigger",
                        "beam_center_x", "beam_center_y", "x_pixel_size", "y_pixel_size", "detector_distance",
                        "wavelength", "count_time", "countrate_correction_count_cutoff", "data_collection_date",
                        "start_time"),
    "dectris-stream2": ("type", "series_id", "series_unique_id", "image_id", "channels", "image_size_x",
                        "image_size_y", "number_of_images", "beam_center_x", "beam_center_y", "pixel_size_x",
                        "pixel_size_y", "count_time", "saturation_value", "incident_wavelength",
                        "detector_translation", "pixel_mask", "data", "start_time", "series_date", "threshold_1"),
}


def fixture_messages(protocol: str, directory: Path | None = FIXTURES) -> list[Message]:
    """The real DECTRIS captures of ``directory`` as whole messages of ``protocol`` (none for native)."""
    if directory is None or not (directory / "stream2_image.cbor").exists():
        return []
    if protocol == "dectris-stream2":
        return [[(directory / f"stream2_{kind}.cbor").read_bytes()] for kind in ("start", "image", "end")]
    if protocol == "dectris-stream1":
        blob = (directory / "stream1_frame_bs16-lz4.bin").read_bytes()
        config = {"x_pixels_in_detector": 4148, "y_pixels_in_detector": 4362, "bit_depth_image": 16, "nimages": 2,
                  "x_pixel_size": 75e-6, "y_pixel_size": 75e-6, "beam_center_x": 2049.4, "beam_center_y": 2163.6}
        return [[_json({"htype": "dheader-1.0", "series": 7, "header_detail": "basic"}), _json(config)],
                [_json({"htype": "dimage-1.0", "series": 7, "frame": 0, "hash": ""}),
                 _json({"htype": "dimage_d-1.0", "shape": [4148, 4362], "type": "uint16", "encoding": "bs16-lz4<",
                        "size": len(blob)}), blob, _json({"htype": "dconfig-1.0", "start_time": 0})],
                [_json({"htype": "dseries_end-1.0", "series": 7})]]
    return []


class Fuzzer:
    """Random and mutated messages of one protocol, reproducible from ``seed``.

    Parameters
    ----------
    protocol : ``"native"``, ``"dectris-stream1"`` or ``"dectris-stream2"``.
    seed : seeds every choice.
    fixtures : real messages to send and mutate too (:func:`fixture_messages`).
    """

    def __init__(self, protocol: str, seed: int, *, fixtures: list[Message] = ()) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        self.protocol = protocol
        self.rng = random.Random(seed)
        self.fixtures = list(fixtures)

    # ------------------------------------------------------------------ series
    def series(self, number: int, *, n_frames: int = 4, shape: tuple[int, int] | None = None,
               dtype: str | None = None, encoding: str | None = None, seed: int | None = None) -> list[Message]:
        """The messages of a good simulated series (start, every frame, end); choices left None are random."""
        from simulators import DiffractionSimulator

        rng = self.rng
        shape = shape or (rng.randint(16, 40), rng.randint(16, 40))
        sim = DiffractionSimulator(shape=shape, dtype=dtype or rng.choice(["uint16", "uint32"]), n_frames=n_frames,
                                   n_spots=2, seed=rng.randrange(1 << 30) if seed is None else seed, series=number)
        options = {"encoding": encoding or rng.choice(["raw", "bslz4", "lz4"])}
        if self.protocol == "dectris-stream1" and encoding is None:
            options["header_detail"] = rng.choice(["all", "basic", "none"])
        encoder = ENCODERS[self.protocol](**options)
        return [[bytes(p) for p in parts] for parts in (
            encoder.start(sim.series_start()), *(encoder.image(number, i, sim.frame(i)) for i in range(n_frames)),
            encoder.end(number))]

    def good(self, number: int) -> list[Message]:
        """The good series checked after every batch: always the same frames, series ``number``."""
        return self.series(number, n_frames=GOOD_FRAMES, shape=GOOD_SHAPE, dtype="uint16", encoding="bslz4", seed=7)

    # ------------------------------------------------------------------ batches
    def batch(self, n: int, *, mutated: float = 0.6, garbage: float = 0.1) -> list[Message]:
        """``n`` messages: a share ``mutated`` of mutations, ``garbage`` of random bytes, the rest good
        messages of two or three small series (and the fixtures), in shuffled order."""
        rng = self.rng
        pool = [m for k in range(rng.randint(1, 3)) for m in self.series(rng.randint(0, 5) if k else 1)]
        pool += self.fixtures
        out = []
        for _ in range(n):
            draw = rng.random()
            if draw < garbage:
                out.append([rng.randbytes(rng.randint(0, 64)) for _ in range(rng.randint(1, 4))])
            elif draw < garbage + mutated:
                out.append(self.mutate(rng.choice(pool)))
            else:
                out.append(list(rng.choice(pool)))
        return out

    # ------------------------------------------------------------------ mutations
    def mutate(self, message: Message) -> Message:
        """One random mutation of ``message`` (a header field, bits, a part's length, the parts)."""
        rng = self.rng
        parts = [bytes(p) for p in message]
        how = rng.choice(["field", "field", "field", "flip", "cut", "grow", "parts"])
        if how == "field":
            return self._field(parts)
        i = rng.randrange(len(parts))
        if how == "flip" and parts[i]:
            part = bytearray(parts[i])
            for _ in range(rng.randint(1, 8)):
                part[rng.randrange(len(part))] ^= 1 << rng.randrange(8)
            parts[i] = bytes(part)
        elif how == "cut":
            parts[i] = parts[i][:rng.randint(0, max(len(parts[i]) - 1, 0))]
        elif how == "grow":
            parts[i] += rng.randbytes(rng.randint(1, 64))
        elif how == "parts":
            action = rng.choice(["drop", "repeat", "swap"])
            if action == "drop" and len(parts) > 1:
                del parts[i]
            elif action == "repeat":
                parts.insert(i, parts[i])
            else:
                j = rng.randrange(len(parts))
                parts[i], parts[j] = parts[j], parts[i]
        return parts

    def _field(self, parts: list[bytes]) -> Message:
        """Set one field of one structured part (msgpack, JSON or CBOR) to a nasty value."""
        codec = _CODECS[self.protocol]
        structured = [i for i, p in enumerate(parts) if _loads(codec, p) is not None]
        if not structured:
            return self.mutate(parts)
        i = self.rng.choice(structured)
        tree = _thaw(_loads(codec, parts[i]))
        containers = list(_containers(tree))
        node = self.rng.choice(containers)
        value = self.rng.choice(NASTY)
        sides = [k for k in node if k in _SIDE_KEYS] if isinstance(node, dict) else []
        if sides and self.rng.random() < 0.3:
            node[self.rng.choice(sides)] = self.rng.choice(ABSURD_SIDES)
        elif _is_shape(node) and self.rng.random() < 0.5:
            node[:] = self.rng.choice(ABSURD_SHAPES)
        elif isinstance(node, dict):
            node[self.rng.choice([*node, *KEYS[self.protocol]])] = value
        elif node:
            node[self.rng.randrange(len(node))] = value
        else:
            node.append(value)
        try:
            parts[i] = _dumps(codec, tree)
        except (ValueError, TypeError, OverflowError, cbor2.CBOREncodeError):
            return self.mutate(parts)
        return parts


# ---------------------------------------------------------------------- structured parts
_CODECS = {"native": "msgpack", "dectris-stream1": "json", "dectris-stream2": "cbor"}


def _json(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _loads(codec: str, part: bytes) -> Any:
    try:
        if codec == "msgpack":
            obj = msgpack.unpackb(part, raw=False, strict_map_key=False)
        elif codec == "json":
            obj = json.loads(part)
        else:
            obj = cbor2.loads(part)
    except Exception:  # noqa: BLE001 - not this codec's bytes: not a structured part
        return None
    return obj if isinstance(obj, (dict, list, cbor2.CBORTag)) or hasattr(obj, "keys") else None


def _dumps(codec: str, tree: Any) -> bytes:
    if codec == "msgpack":
        return msgpack.packb(tree, use_bin_type=True)
    if codec == "json":
        return json.dumps(tree, default=lambda b: b.hex()).encode()
    return cbor2.dumps(tree)


def _thaw(obj: Any) -> Any:
    """A mutable copy of a decoded message (cbor2 gives immutable maps for tagged messages)."""
    if isinstance(obj, cbor2.CBORTag):
        return cbor2.CBORTag(obj.tag, _thaw(obj.value))
    if hasattr(obj, "keys") and not isinstance(obj, (bytes, str)):
        return {k: _thaw(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_thaw(v) for v in obj]
    return obj


def _is_shape(node: Any) -> bool:
    return isinstance(node, list) and len(node) == 2 and all(type(n) is int and n > 0 for n in node)


def _containers(tree: Any, depth: int = 6):
    """Every map and list of ``tree``, tags looked into."""
    if isinstance(tree, cbor2.CBORTag):
        yield from _containers(tree.value, depth)
        return
    if depth == 0 or not isinstance(tree, (dict, list)):
        return
    yield tree
    for value in tree.values() if isinstance(tree, dict) else tree:
        yield from _containers(value, depth - 1)
