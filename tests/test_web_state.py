"""The live page's model, without a server: images, the bounded history, the latest-only hub, the parts."""
from __future__ import annotations

import base64
import json
import zlib

import numpy as np
import pytest

from livediff.outputs import Layout
from livediff.web import HttpSettings
from livediff.web.history import HIT_WINDOW, History
from livediff.web.hub import Client, Hub
from livediff.web.render import downsample, finite_list, image_payload, quantise
from livediff.web.state import Declared, LiveState


# ---------------------------------------------------------------------- images
def _block_means(image, mask, k):
    """Brute force: the mean of the valid pixels of each k x k block (partial blocks at the edges)."""
    rows, cols = -(-image.shape[0] // k), -(-image.shape[1] // k)
    out = np.full((rows, cols), np.nan)
    for r in range(rows):
        for c in range(cols):
            block = image[r * k:(r + 1) * k, c * k:(c + 1) * k].astype("f8")
            ok = mask[r * k:(r + 1) * k, c * k:(c + 1) * k]
            if ok.any():
                out[r, c] = block[ok].mean()
    return out


@pytest.mark.parametrize("dtype", ["uint16", "uint32", "float32"])
def test_downsample_is_the_mean_of_each_blocks_valid_pixels(dtype):
    rng = np.random.default_rng(4)
    image = rng.poisson(30, (101, 67)).astype(dtype)
    mask = rng.random(image.shape) > 0.1
    mask[:7, :7] = False  # one whole block masked
    image[~mask] = np.iinfo("uint16").max  # gap markers must not leak into the means
    image.setflags(write=False)
    small, k = downsample(image, mask, max_side=25)
    assert k == 5 and small.shape == (21, 14) and small.dtype == np.float32
    np.testing.assert_allclose(small, _block_means(image, mask, k), rtol=1e-5)
    assert np.isnan(small[0, 0])


def test_downsample_treats_non_finite_pixels_as_masked_and_keeps_small_images_whole():
    image = np.arange(12, dtype="f4").reshape(3, 4)
    image[1, 2] = np.nan
    small, k = downsample(image, None, max_side=10)
    assert k == 1 and np.isnan(small[1, 2]) and small[2, 3] == 11


@pytest.mark.parametrize("contrast", ["log", "percentile"])
def test_quantise_keeps_order_marks_no_data_zero_and_labels_ticks_with_values(contrast):
    rng = np.random.default_rng(1)
    small = rng.exponential(10, (30, 40)).astype("f4")
    small[0, :5] = np.nan
    small[5, 5] = 1e6  # a bright spot
    out = quantise(small, contrast)
    q = out["q"]
    assert (q[0, :5] == 0).all() and (q[np.isfinite(small)] >= 1).all()
    finite = np.isfinite(small)
    order = np.argsort(small[finite], kind="stable")
    assert (np.diff(q[finite][order].astype(int)) >= 0).all()  # monotonic
    assert [t[0] for t in out["ticks"]] == [1 + round(t * 254) for t in (0, .25, .5, .75, 1)]
    assert float(out["ticks"][0][1]) == pytest.approx(out["lo"], rel=1e-2)
    assert float(out["ticks"][-1][1]) == pytest.approx(out["hi"], rel=1e-2)
    saturated = int((q == 255).sum())  # log stretches to the spot's peak; percentile clips the top 0.5 %
    assert q[5, 5] == 255 and (saturated == 1 if contrast == "log" else saturated >= 5)


def test_image_payload_round_trips_through_zlib_and_base64():
    image = np.arange(50 * 60, dtype="uint16").reshape(50, 60)
    p = image_payload(image, None, max_side=32, contrast="percentile")
    q = np.frombuffer(zlib.decompress(base64.b64decode(p["data"])), np.uint8).reshape(p["size"])
    assert p["shape"] == [50, 60] and p["k"] == 2 and q.shape == (25, 30)
    assert q[0, 0] == 1 and q[-1, -1] == 255
    json.dumps(p, allow_nan=False)


def test_constant_and_empty_images_do_not_divide_by_zero():
    assert quantise(np.full((4, 4), 7.0, "f4"), "log")["q"].min() == 1
    assert quantise(np.full((4, 4), np.nan, "f4"), "log")["ticks"] == []


def test_finite_list_turns_nan_and_inf_into_none():
    assert finite_list(np.array([1.0, np.nan, np.inf, -2])) == [1.0, None, None, -2.0]


# ---------------------------------------------------------------------- history
def test_history_is_bounded_and_hands_out_rows_since_a_point():
    h = History(10, hit_min_spots=3)
    h.reset(["sum", "n_spots"])
    for i in range(25):
        h.append(i, {"sum": float(i), "n_spots": i % 5, "frame": i})
    assert h.seq == 25 and all(v.size == 10 for v in h.values.values())
    full = h.since(0)
    assert full["start"] == 15 and full["frames"] == list(range(15, 25)) and full["columns"]["sum"][0] == 15.0
    delta = h.since(22)
    assert delta["frames"] == [22, 23, 24] and delta["columns"]["n_spots"] == [2.0, 3.0, 4.0]
    assert h.since(20, 23)["frames"] == [20, 21, 22]
    assert h.hit_rates() == {"hit_rate": pytest.approx(10 / 25)}  # n_spots 3 and 4 of every 5


def test_rolling_hit_rate_looks_back_over_the_window_only():
    h = History(1000, hit_min_spots=1)
    h.reset(["spots2.n_spots"])
    for i in range(HIT_WINDOW):
        h.append(i, {"spots2.n_spots": 5})
    for i in range(HIT_WINDOW, 2 * HIT_WINDOW):
        h.append(i, {"spots2.n_spots": 0})
    rate = h.since(0)["columns"]["spots2.hit_rate"]
    assert rate[HIT_WINDOW - 1] == 1.0 and rate[-1] == 0.0 and rate[HIT_WINDOW + 49] == pytest.approx(0.5)


# ---------------------------------------------------------------------- hub
async def test_hub_sends_each_client_only_the_latest_version_of_what_changed():
    h = History(100, 10)
    h.reset(["sum"])
    hub = Hub(h.since)
    fresh, keeping_up, stuck = Client(), Client(), Client()
    for c in (keeping_up, stuck):
        c.epoch = 0
    h.append(0, {"sum": 1.0})
    hub.publish(1, {"counts": '{"n":1}', "image:frame": '"big"'}, h.seq)
    first = json.loads(hub.compose(keeping_up))
    assert first["reset"] and first["parts"] == {"counts": {"n": 1}, "image:frame": "big"}
    assert first["rows"]["frames"] == [0]
    hub.compose(stuck)
    assert hub.compose(keeping_up) is None  # nothing new
    for i in range(1, 50):  # the stuck client reads none of these
        h.append(i, {"sum": float(i)})
        hub.publish(1, {"counts": f'{{"n":{i + 1}}}'}, h.seq)
        msg = json.loads(hub.compose(keeping_up))
        assert msg["parts"] == {"counts": {"n": i + 1}} and not msg["reset"]
        assert msg["rows"] == {"mode": "append", "start": i, "end": i + 1, "frames": [i], "columns": {"sum": [i]}}
    late = json.loads(hub.compose(stuck))  # skips 48 versions: the latest counts and every row, once
    assert late["parts"] == {"counts": {"n": 50}} and late["rows"]["mode"] == "full"
    assert late["rows"]["frames"] == list(range(50))
    assert set(hub._parts) == {"counts", "image:frame"}  # one version per part, however many were published
    new = json.loads(hub.compose(fresh))
    assert new["reset"] and set(new["parts"]) == {"counts", "image:frame"} and len(new["rows"]["frames"]) == 50
    h.reset(["sum"])
    hub.publish(2, {"header": "{}"}, 0)  # a new series: every client starts over
    again = json.loads(hub.compose(keeping_up))
    assert again["reset"] and again["parts"] == {"header": {}} and "rows" not in again


# ---------------------------------------------------------------------- the state's parts
def _state(**kw) -> LiveState:
    clock = [100.0]
    state = LiveState(HttpSettings(history=20, image_size=16, **kw), source="test", clock=lambda: clock[0])
    state.clock_value = clock
    return state


def _layout() -> Layout:
    layout = Layout()
    for kind, name, columns, arrays, rows, reductions in (
            ("summary", "summary", {"sum": "f8"}, {}, {}, {}),
            ("spots", "spots", {"n_spots": "i8"}, {}, {"x": "f8", "y": "f8"}, {}),
            ("azimuthal", "azimuthal", {}, {"profile": ((30,), "f4")}, {},
             {"mean": ((30,), "f8"), "count": ((30,), "i8"), "radius": ((30,), "f8")}),
            ("stats", "stats", {}, {}, {}, {"mean": ((40, 50), "f4")}),
            ("powder_center", "powder_center", {}, {}, {}, {"center": ((2,), "f8")})):
        op = type("Op", (), {"kind": kind, "name": name, "columns": columns, "arrays": arrays, "rows": rows,
                             "reductions": reductions, "maps": {}, "derive_maps": staticmethod(lambda maps: {})})
        layout.add(op)
    return layout


def _built(state: LiveState) -> dict:
    return {k: json.loads(json.dumps(build(), allow_nan=False)) for k, build in state.collect().items()}


def test_parts_follow_the_declared_outputs_and_only_changed_ones_are_rebuilt():
    state = _state()
    state.start_series({"series": 7, "shape": [40, 50], "meta": {"note": "<b>x</b>"}}, Declared.of(_layout()))
    parts = _built(state)
    assert set(parts) == {"counts", "banners", "header", "latest"}
    declared = parts["header"]["declared"]
    assert declared["columns"] == {"": ["frame", "timestamp", "received", "latency_s", "epoch"],
                                   "summary": ["sum"], "spots": ["n_spots"]}
    assert declared["reductions"]["stats"] == {"mean": [40, 50]} and parts["header"]["series"]["meta"] == \
        {"note": "<b>x</b>"}
    frame = np.ones((40, 50), "uint16")
    spots = {"x": np.array([3.0, 4.0]), "y": np.array([5.0, np.nan])}
    state.add_frame(0, {"frame": 0, "sum": 2000.0, "n_spots": 2, "latency_s": 0.01},
                    {"azimuthal": {"profile": np.arange(30, dtype="f4")}}, {"spots": spots}, frame)
    state.add_reductions("azimuthal", {"mean": np.ones(30), "count": np.arange(30), "radius": np.arange(30.0) + .5})
    state.add_reductions("stats", {"mean": np.ones((40, 50), "f4")})
    state.add_reductions("powder_center", {"center": np.array([20.0, 25.0])})
    parts = _built(state)
    assert set(parts) == {"counts", "banners", "latest", "image:frame", "profile:azimuthal", "image:stats.mean",
                          "values:powder_center"}
    assert parts["image:frame"]["spots"]["spots"] == {"frame": 0, "n": 2, "x": [3.0, 4.0], "y": [5.0, None]}
    assert parts["image:frame"]["image"]["k"] == 4
    profile = parts["profile:azimuthal"]
    assert profile["x_title"] == "radius (px)" and [t["name"] for t in profile["traces"]] == \
        ["profile (latest)", "mean (running)"]  # counts and the axis are not traces
    assert profile["traces"][0]["x"][0] == 0.5
    assert parts["values:powder_center"] == {"center": [20.0, 25.0]}
    assert parts["latest"]["values"]["n_spots"] == 2 and parts["latest"]["rows"] == {"spots": {"frame": 0, "n": 2}}
    assert set(_built(state)) == {"counts", "banners"}  # nothing else changed


def test_counts_and_banners_tell_running_stalled_dropping_malformed_and_ended():
    state = _state()
    status = {"series": 7, "received": 0, "dropped": 5, "bad": 1, "total_failed": 0, "fps": 0.0, "queue": 0,
              "uptime_s": 3.0}
    state.set_status(status)
    assert state.banners() == [{"level": "info", "text": "waiting for a series from test"}]
    state.start_series({"series": 7, "n_frames": 10}, Declared.of(_layout()))
    state.add_frame(0, {"frame": 0}, {}, {})
    state.set_status({**status, "received": 1})
    counts = state.counts()
    assert (counts["state"], counts["received"], counts["processed"], counts["dropped"], counts["bad"],
            counts["scope"]) == ("running", 1, 1, 5, 1, "since start")
    assert state.banners() == []  # those drops and bad messages are old news
    state.clock_value[0] += 6
    assert "has the stream stopped" in state.banners()[0]["text"]
    state.set_status({**status, "received": 2, "dropped": 8, "bad": 4})
    state.clock_value[0] += 3
    state.set_status({**status, "received": 2, "dropped": 9, "bad": 4})
    texts = [b["text"] for b in state.banners()]
    assert "malformed input: 3 messages failed to decode in the last 10 s (see the service log)" in texts
    assert "dropping frames: 4 dropped in the last 10 s (the chain does not keep up)" in texts
    state.clock_value[0] += 11
    state.set_status({**status, "received": 2, "dropped": 9, "bad": 4})
    assert not any("last 10 s" in t for t in (b["text"] for b in state.banners()))  # nothing new since
    state.end_series({"series": 7, "reason": "timeout", "expected": 10, "received": 2, "processed": 1,
                      "dropped": 3, "bad": 3, "lost": 8, "failed": 0})
    (banner,) = state.banners()
    assert banner == {"level": "warning", "text": "series 7 ended (timeout): 1 of 10 frames processed, 8 lost, "
                                                  "3 dropped, 3 bad"}
    counts = state.counts()
    assert (counts["state"], counts["lost"], counts["dropped"], counts["scope"]) == ("ended", 8, 3, "series")
    assert state.totals["lost"] == 8 and state.totals["received"] == 2


def test_a_remote_state_warns_when_heartbeats_stop():
    clock = [0.0]
    state = LiveState(HttpSettings(), source="tcp://elsewhere:5557", remote=True, clock=lambda: clock[0])
    assert state.banners()[0] == {"level": "error", "text": "no heartbeat from tcp://elsewhere:5557"}
    state.set_status({"series": None})
    assert all(b["level"] != "error" for b in state.banners())
    clock[0] = 9
    assert "for 9 s: is the service running?" in state.banners()[0]["text"]


def test_a_viewer_joining_mid_series_learns_the_outputs_from_the_messages():
    from livediff.web.view import feed

    state = _state()
    feed(state, "stats", {"v": 1, "type": "frame", "series": 4, "frame": 17, "timestamp": 1.0, "received": 1.0,
                          "latency_s": 0.01, "n_spots": 3, "azimuthal": {"profile": np.ones(30, "f4")}})
    feed(state, "spots", {"v": 1, "type": "spots", "series": 4, "frame": 17, "n": 3, "x": np.ones(3),
                          "y": np.ones(3)})
    feed(state, "image", {"v": 1, "type": "snapshot", "series": 4, "operator": "stats", "frame": 17, "processed": 1,
                          "final": False, "mean": np.ones((40, 50))})
    assert state.header == {"series": 4, "note": "joined while the series ran: header not seen"}
    d = state.declared
    assert d.columns["n_spots"] == "i8" and d.arrays == {"azimuthal": {"profile": [30]}}
    assert d.rows == {"spots": ["x", "y"]} and d.reductions == {"stats": {"mean": [40, 50]}}
    parts = _built(state)
    assert {"image:stats.mean", "profile:azimuthal", "image:frame"} <= set(parts)
    assert parts["image:frame"]["image"] is None and parts["image:frame"]["spots"]["spots"]["n"] == 3
    assert parts["counts"]["processed"] == 1 and parts["latest"]["frame"] == 17


def test_scan_maps_show_as_images_of_the_scan_shape():
    from livediff.model import Scan
    from livediff.outputs import Reductions
    from livediff.web.sink import LiveView

    layout = _layout()
    layout.scan = Scan(shape=(6, 9))
    layout.maps = {"virtual": {"bright": "f8"}}
    assert Declared.of(layout).reductions["virtual"] == {"bright": [6, 9]}
    view = LiveView.__new__(LiveView)  # the sink's mapping only, no server
    view.state = _state()
    view.state.start_series({"series": 1}, Declared.of(layout))
    bright = np.full((6, 9), np.nan)
    bright[0, :4] = [1.0, 2.0, 3.0, 4.0]  # the map fills in as the scan runs
    view.write_reductions(Reductions(1, 3, 4, False, {"stats": {"mean": np.ones((40, 50))}},
                                     {"virtual": {"bright": bright}}))
    parts = _built(view.state)
    assert {"image:virtual.bright", "image:stats.mean"} <= set(parts)
    image = parts["image:virtual.bright"]
    assert image["shape"] == [6, 9] and image["k"] == 1 and image["source"] == "reduction"
    q = np.frombuffer(zlib.decompress(base64.b64decode(image["data"])), np.uint8).reshape(6, 9)
    assert (q[0, :4] > 0).all() and (q[1:] == 0).all()  # holes stay empty
