"""The wire format: every builder round-trips, the service sends exactly the schema's keys, the README
table is the schema's table, arrays keep dtype and shape, bad input is refused."""
from __future__ import annotations

import asyncio
import inspect
import re
from pathlib import Path

import msgpack
import numpy as np
import pytest

from harness import config, running
from livediff import schema
from livediff.model import Geometry, Scan, SeriesStart
from livediff.outputs import BASE_COLUMNS
from livediff.sources.sender import stream_series
from simulators import DiffractionSimulator

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("dtype", ["<f4", "<f8", "<u2", "<u4", "<i8", "|b1"])
def test_array_round_trip(dtype):
    a = np.random.default_rng(1).integers(0, 2, (5, 7)).astype(dtype)
    b = schema.decode_array(schema.encode_array(a))
    assert b.dtype == a.dtype and b.shape == a.shape
    np.testing.assert_array_equal(a, b)


def test_big_endian_and_non_contiguous_arrays_travel_little_endian():
    a = np.arange(24, dtype=">f8").reshape(4, 6)[:, ::2]
    enc = schema.encode_array(a)
    assert enc["dtype"] == "<f8" and enc["shape"] == [4, 3]
    np.testing.assert_array_equal(schema.decode_array(enc), a)


def test_array_with_wrong_byte_count_is_refused():
    enc = schema.encode_array(np.zeros((3, 3), "<f4"))
    enc["data"] = enc["data"][:-1]
    with pytest.raises(schema.SchemaError, match=r"needs 36 bytes, got 35"):
        schema.decode_array(enc)


def test_unknown_topic_or_type_is_a_programming_error():
    with pytest.raises(schema.SchemaError, match="topic 'stats' carries no message type 'start'"):
        schema.encode("stats", "start", {})


def test_decode_refuses_other_versions_and_garbage():
    parts = schema.encode("status", "heartbeat", {})
    body = msgpack.unpackb(parts[1])
    with pytest.raises(schema.SchemaError, match="schema version 99"):
        schema.decode([parts[0], msgpack.packb({**body, "v": 99})])
    with pytest.raises(schema.SchemaError, match="not msgpack"):
        schema.decode([b"stats", b"\xc1"])
    with pytest.raises(schema.SchemaError, match="expected 2 parts"):
        schema.decode([b"stats"])


def _bodies() -> dict[tuple[str, str], tuple[dict, set[str]]]:
    """(topic, type) -> (a body from its builder, the keys it has beyond the table's)."""
    rng = np.random.default_rng(0)
    start = SeriesStart(2, (10, 12), "uint16", n_frames=5, scan=Scan((1, 5)), count_time=0.01,
                        geometry=Geometry(beam_center=(4.5, 6.0), pixel_size=(75e-6, 75e-6)))
    return {
        ("series", "start"): (schema.series_start(start, config_hash="ab", file="/data/s.h5", epoch=1), set()),
        ("series", "end"): (schema.series_end(series=2, reason="timeout", expected=5, received=4, bad=1, duplicates=0,
                                              stray=0, lost=1, processed=3, failed=1, dropped=0, not_saved=2,
                                              file="/data/s.h5", map_holes=3, resent=2, epoch=1), set()),
        ("stats", "frame"): (schema.stats_frame(
            series=2, row={"frame": 3, "timestamp": 1.5e9, "received": 1.6e9, "latency_s": 0.01, "epoch": 1, "sum": 12.0,
                           "n_spots": 4},
            arrays={"azimuthal": {"profile": rng.random(7).astype("f4")}}), {"sum", "n_spots", "azimuthal"}),
        ("stats", "frames"): (schema.stats_frames(
            series=2, rows=[{"frame": i, "timestamp": 1.5e9 + i, "received": 1.6e9, "latency_s": 0.01, "epoch": 1,
                             "sum": 12.0 * i, **({"n_spots": 4} if i else {})} for i in range(3)],
            arrays=[{"azimuthal": {"profile": rng.random(7).astype("f4")}} for _ in range(3)]),
            {"sum", "n_spots", "azimuthal"}),
        ("spots", "spots"): (schema.spots(series=2, frame=3, epoch=1, columns={"x": rng.random(4), "npix": np.arange(4)}),
                             {"x", "npix"}),
        ("image", "snapshot"): (schema.image_snapshot(
            series=2, operator="stats", frame=3, processed=4, final=True, epoch=1, closed=False,
            values={"mean": rng.random((10, 12)), "count": np.ones((10, 12), "i8")}), {"mean", "count"}),
        ("status", "heartbeat"): (schema.status_heartbeat(
            uptime_s=12.5, fps=99.5, series=2, n_frames=5, received=4, processed=3, dropped=0, queue=1,
            total_processed=30, total_failed=1, batches=12, batch_max=9, messages=40, bad=1, orphans=0, open_series=2, hdf5_not_saved=2,
            hdf5_errors=0, published=77, cpu_s=3.25, peak_rss_mb=250.0, ledger_frames=12,
            ledger_mb=17.5, epoch=1, paused=False), set()),
    }


def _check_keys(topic: str, msg: dict, extra: set[str]) -> None:
    """``msg`` has the table's keys for its topic and type, and ``extra`` besides (only if the type is open)."""
    spec = schema.MESSAGES[topic, msg["type"]]
    assert set(msg) - {"v", "type"} == set(spec.keys) | extra
    assert spec.open is not None or not extra


def test_every_message_type_has_a_builder_and_every_topic_its_types():
    assert set(_bodies()) == set(schema.MESSAGES)
    assert schema.TOPICS == {"series": ("start", "end"), "stats": ("frame", "frames"), "spots": ("spots",),
                             "image": ("snapshot",), "status": ("heartbeat",)}
    assert set(schema.MESSAGES["stats", "frame"].keys) == {"series", *BASE_COLUMNS}
    assert all(spec.keys and all(spec.keys.values()) for spec in schema.MESSAGES.values())


@pytest.mark.parametrize("key", list(schema.MESSAGES), ids="/".join)
def test_every_builder_round_trips_with_the_tables_keys(key):
    body, extra = _bodies()[key]
    topic, msg = schema.decode(schema.encode(*key, body))
    assert topic == key[0] and msg["v"] == schema.VERSION and msg["type"] == key[1]
    _check_keys(topic, msg, extra)
    assert list(msg)[2:] == list(body)  # the table's order, then the operators' keys
    np.testing.assert_equal({k: v for k, v in msg.items() if k not in ("v", "type")}, body)


@pytest.mark.parametrize("key,builder", [(("series", "end"), schema.series_end),
                                         (("status", "heartbeat"), schema.status_heartbeat)])
def test_closed_builders_take_exactly_the_tables_keys(key, builder):
    assert list(inspect.signature(builder).parameters) == list(schema.MESSAGES[key].keys)


def test_builders_refuse_bodies_off_the_schema():
    base = {"frame": 3, "timestamp": 1.0, "received": 1.0, "latency_s": 0.0, "epoch": 0}
    with pytest.raises(schema.SchemaError, match="stats/frame message lacks received, latency_s"):
        schema.stats_frame(series=1, row={"frame": 3, "timestamp": 1.0}, arrays={})
    with pytest.raises(ValueError, match="operators with arrays frame would overwrite keys of the message"):
        schema.stats_frame(series=1, row=base, arrays={"frame": {"x": np.zeros(2)}})
    with pytest.raises(ValueError, match="columns series would overwrite"):
        schema.stats_frame(series=1, row={**base, "series": 2}, arrays={})
    with pytest.raises(ValueError, match="reductions final, frame would overwrite"):
        schema.image_snapshot(series=1, operator="x", frame=1, processed=2, final=False, epoch=0, closed=False,
                              values={"frame": np.zeros(2), "final": np.zeros(2), "mean": np.zeros(2)})
    with pytest.raises(ValueError, match="row columns must have one length, got x 3, y 2"):
        schema.spots(series=1, frame=0, epoch=0, columns={"x": np.zeros(3), "y": np.zeros(2)})
    assert schema.spots(series=1, frame=0, epoch=0, columns={})["n"] == 0


def test_decode_refuses_a_message_without_its_keys_or_of_a_type_its_topic_lacks():
    body, _ = _bodies()["status", "heartbeat"]
    del body["fps"], body["cpu_s"]
    with pytest.raises(schema.SchemaError, match=r"^status/heartbeat message lacks fps, cpu_s$"):
        schema.decode(schema.encode("status", "heartbeat", body))
    wrong = [b"stats", msgpack.packb({"v": schema.VERSION, "type": "heartbeat"})]
    with pytest.raises(schema.SchemaError, match=r"topic 'stats' carries no message type 'heartbeat' \(it carries frame, frames\)"):
        schema.decode(wrong)
    with pytest.raises(schema.SchemaError, match="topic 'series' carries no message type None"):
        schema.decode([b"series", msgpack.packb({"v": schema.VERSION, "series": 1})])


def test_decode_passes_unknown_topics_and_extra_keys():
    topic, msg = schema.decode([b"tracks", msgpack.packb({"v": schema.VERSION, "type": "tracks", "n": 0})])
    assert topic == "tracks" and msg["n"] == 0
    body, _ = _bodies()["series", "end"]
    _, msg = schema.decode(schema.encode("series", "end", {**body, "new_count": 3}))
    assert msg["new_count"] == 3


def _readme_table() -> dict[tuple[str, str], tuple[list[str], bool]]:
    """(topic, type) -> (keys, whether the operators add keys) as the README's message table has them."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Published messages", 1)[1].split("\n## ", 1)[0]
    table = {}
    for line in section.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 4 and cells[0].startswith("`"):
            keys = re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", cells[2]))  # remarks in parentheses
            table[cells[0].strip("`"), cells[1].strip("`")] = (keys, cells[3] != "—")
    return table


def test_the_readme_message_table_is_the_schemas():
    readme = _readme_table()
    assert set(readme) == set(schema.MESSAGES)
    for key, spec in schema.MESSAGES.items():
        keys, open_ = readme[key]
        assert keys == list(spec.keys), (f"README {'/'.join(key)}: lacks {set(spec.keys) - set(keys) or '-'}, "
                                         f"has besides {set(keys) - set(spec.keys) or '-'}, or in another order")
        assert open_ == (spec.open is not None), f"README {'/'.join(key)}: operators' keys column"


def _rebuild(topic: str, msg: dict) -> dict:
    """``msg``'s body as its builder makes it from ``msg``'s own values."""
    body = {k: v for k, v in msg.items() if k not in ("v", "type")}
    fixed = schema.MESSAGES[topic, msg["type"]].keys
    rest = {k: v for k, v in body.items() if k not in fixed}
    if (topic, msg["type"]) == ("series", "start"):
        start = SeriesStart(body["series"], tuple(body["shape"]), body["dtype"], n_frames=body["n_frames"],
                            geometry=Geometry.from_dict(body["geometry"]),
                            scan=Scan(tuple(body["scan"])) if body["scan"] else None, count_time=body["count_time"])
        return schema.series_start(start, config_hash=body["config_hash"], file=body["file"], epoch=body["epoch"])
    if topic == "stats":
        arrays = {k: v for k, v in body.items() if isinstance(v, dict)}
        row = {k: v for k, v in body.items() if k != "series" and k not in arrays}
        return schema.stats_frame(series=body["series"], row=row, arrays=arrays)
    if topic == "spots":
        return schema.spots(series=body["series"], frame=body["frame"], epoch=body["epoch"], columns=rest)
    if topic == "image":
        return schema.image_snapshot(**{k: body[k] for k in fixed}, values=rest)
    return (schema.series_end if topic == "series" else schema.status_heartbeat)(**body)


async def test_the_service_sends_exactly_the_schemas_keys_as_the_builders_lay_them_out(tmp_path):
    sim = DiffractionSimulator(shape=(48, 70), n_frames=8, n_spots=4, seed=5)
    chain = {"summary": {}, "hot_pixels": {}, "align": {}, "stats": {}, "spots": {}, "azimuthal": {"bin_width": 2.0}}
    cfg = config(tmp_path, pipeline={"snapshot_period": 0.01}, operators=chain)
    async with running(cfg) as (service, sub):
        await asyncio.to_thread(stream_series, sim, cfg.source.endpoint)
        await sub.wait_for(lambda t, m: t == "series" and m["type"] == "end")
        await sub.wait_for(lambda t, m: t == "status" and m["series"] is None)
        layout = service.executor.layout
    # the client hands a columnar stats/frames message out as the stats/frame messages it carries
    assert {(t, m["type"]) for t, m in sub.messages} == set(schema.MESSAGES) - {("stats", "frames")}
    assert layout.rows and layout.arrays and layout.reductions and len(layout.columns) > len(BASE_COLUMNS)
    for topic, msg in sub.messages:
        if topic == "stats":
            _check_keys(topic, msg, set(layout.columns) - set(BASE_COLUMNS) | set(layout.arrays))
            assert all(set(msg[op]) == set(arrays) for op, arrays in layout.arrays.items())
        elif topic == "spots":
            _check_keys(topic, msg, set(layout.rows["spots"]))
        elif topic == "image":
            reductions = set(msg) - {"v", "type", *schema.MESSAGES["image", "snapshot"].keys}
            assert reductions and reductions <= set(layout.reductions[msg["operator"]])
            _check_keys(topic, msg, reductions)
        else:
            _check_keys(topic, msg, set())
        rebuilt = _rebuild(topic, msg)
        assert list(msg)[2:] == list(rebuilt)
        np.testing.assert_equal({k: v for k, v in msg.items() if k not in ("v", "type")}, rebuilt)
