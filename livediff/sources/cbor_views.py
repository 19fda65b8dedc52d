"""CBOR messages parsed with their large byte strings left in place: views of the message, no copy.

``cbor2.loads`` copies every byte string out of the message it parses.  A DECTRIS Stream v2
image message is little more than one: the pixel payload, 2 MB of bitshuffle-LZ4 for an
EIGER2 4M frame, copied on every frame (0.9 ms with the message out of cache, against
0.33 for a plain copy of it), with the GIL held.  :func:`loads` walks the message's
structure itself and returns every byte string of at least :data:`VIEW_BYTES` as a
``memoryview`` of the message; everything else comes out as cbor2 makes it:

- maps (dict), arrays (list), integers, text (strict UTF-8), floats (half, single,
  double), true, false and null, and shorter byte strings (bytes);
- the tags Stream v2 nests its arrays in, RFC 8746 typed arrays (64-87), the
  multi-dimensional array (40) and DECTRIS' compression (56500), as :class:`cbor2.CBORTag`,
  as cbor2 leaves them, and the self-described CBOR tag (55799, a Stream v2 message's
  outermost item) dropped, as cbor2 drops it; what a tag holds comes out immutable, as
  cbor2 makes it (tuples, :class:`cbor2.frozendict`);
- any other tagged item is handed to cbor2 as it is (a date, tag 0, comes back a
  ``datetime``).

A message with anything else (indefinite lengths, undefined or other simple values, map
keys that are not text or numbers, nesting deeper than :data:`MAX_DEPTH`, bytes after the
item), or one that is not well formed, goes to ``cbor2.loads`` whole, so the value, or the
error, is then cbor2's own.  Every length is checked against the bytes left before it is
used; nothing is allocated from a length read in the message.

References
----------
RFC 8949 (CBOR), section 3: the initial byte's major type and additional information.
"""
from __future__ import annotations

import struct
from typing import Any

import cbor2

__all__ = ["MAX_DEPTH", "VIEW_BYTES", "loads"]

#: byte strings at least this long come back as views of the message
VIEW_BYTES = 4096
#: deeper nesting goes to cbor2
MAX_DEPTH = 16
#: tags kept as CBORTag around what this module parses (the rest go to cbor2 whole)
_NESTING_TAGS = frozenset({40, 56500, *range(64, 88)})
_SELF_DESCRIBED = 55799
_FLOATS = {25: struct.Struct(">e"), 26: struct.Struct(">f"), 27: struct.Struct(">d")}
_SIMPLE = {20: False, 21: True, 22: None}


class _Unsupported(Exception):
    """Something this module leaves to cbor2."""


def loads(message: Any) -> Any:
    """The value of the CBOR item ``message`` holds (bytes-like), byte strings of
    :data:`VIEW_BYTES` or more as memoryviews of it.

    Raises
    ------
    Exception
        cbor2's, for a message cbor2 cannot decode either.
    """
    try:
        view = memoryview(message).cast("B")
        value, end = _item(view, 0, 0, False)
        if end != len(view):
            raise _Unsupported
        return value
    except Exception:  # noqa: BLE001 - untrusted bytes: whatever went wrong, cbor2 has the last word
        return cbor2.loads(message)


def _item(view: memoryview, pos: int, depth: int, immutable: bool) -> tuple[Any, int]:
    """The item at ``pos`` and the position after it (arrays and maps as tuples and frozendicts
    when ``immutable``)."""
    if depth > MAX_DEPTH:
        raise _Unsupported
    begin = pos
    first = view[pos]
    major, info = first >> 5, first & 31
    if major == 7:
        if info in _SIMPLE:
            return _SIMPLE[info], pos + 1
        if info in _FLOATS:
            number = _FLOATS[info]
            return number.unpack_from(view, pos + 1)[0], pos + 1 + number.size
        raise _Unsupported
    n, pos = _argument(view, pos + 1, info)
    if major == 0:
        return n, pos
    if major == 1:
        return -1 - n, pos
    if major in (2, 3):
        end = pos + n
        if end > len(view):
            raise _Unsupported
        if major == 3:
            return str(view[pos:end], "utf-8"), end
        return (view[pos:end] if n >= VIEW_BYTES else bytes(view[pos:end])), end
    if major == 4:
        items = []
        for _ in range(n):  # each item takes a byte at least: a length beyond the message ends in an IndexError
            value, pos = _item(view, pos, depth + 1, immutable)
            items.append(value)
        return (tuple(items) if immutable else items), pos
    if major == 5:
        pairs = {}
        for _ in range(n):
            key, pos = _item(view, pos, depth + 1, True)
            if not isinstance(key, (str, int, float)):
                raise _Unsupported
            pairs[key], pos = _item(view, pos, depth + 1, immutable)
        return (cbor2.frozendict(pairs) if immutable else pairs), pos
    value, pos = _item(view, pos, depth + 1, True)  # major 6: a tag, and the item it tags
    if n in _NESTING_TAGS:
        return cbor2.CBORTag(n, value), pos
    if n == _SELF_DESCRIBED:
        return value, pos
    return cbor2.loads(view[begin:pos]), pos


def _argument(view: memoryview, pos: int, info: int) -> tuple[int, int]:
    """The head's argument (a length, a count, a tag or an integer) and the position after it."""
    if info < 24:
        return info, pos
    size = {24: 1, 25: 2, 26: 4, 27: 8}.get(info)
    if size is None or pos + size > len(view):  # 28-30 reserved, 31 indefinite length
        raise _Unsupported
    return int.from_bytes(view[pos:pos + size], "big"), pos + size

