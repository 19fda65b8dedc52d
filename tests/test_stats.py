"""Running statistics against two-pass float64 numpy references, scipy and npstreams."""
from __future__ import annotations

import msgpack
import numpy as np
import pytest
import scipy.stats
from hypothesis import example, given, settings
from hypothesis import strategies as st

from livediff import schema
from livediff.model import Frame, SeriesStart
from livediff.operators.stats import RunningStats, Stats, StatsParams

SHAPE = (37, 61)


def _stream(rng, dtype, offset, n=24, shape=SHAPE, masked=True):
    """``n`` read-only frames ``offset`` +- a few counts, and per-frame read-only masks (NaN under them)."""
    noise = rng.normal(0.0, 1.0, (n, *shape)) * rng.uniform(0.5, 3.0, shape)
    frames = offset + noise if np.dtype(dtype).kind == "f" else np.rint(offset + noise)
    frames = frames.astype(dtype)
    masks = rng.random(frames.shape) > 0.25 if masked else np.ones(frames.shape, bool)
    if np.dtype(dtype).kind == "f":
        frames[~masks] = np.nan
    for a in (frames, masks):
        a.setflags(write=False)
    return frames, masks


def _reference(frames, masks, weights=None, ddof=1):
    """Two-pass float64 weighted statistics, reliability weights, written out with numpy."""
    x = np.where(masks, frames.astype(np.float64), 0.0)
    w = masks * (np.ones(frames.shape) if weights is None else np.broadcast_to(weights, frames.shape))
    v1, v2 = w.sum(0), (w * w).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):  # pixels never valid: NaN, as ours
        mean = (w * x).sum(0) / v1
        var = (w * (x - mean) ** 2).sum(0) / (v1 - ddof * v2 / v1)
    return {"mean": mean, "var": var, "std": np.sqrt(var), "sem": np.sqrt(var * v2 / v1**2),
            "count": (w > 0).sum(0)}


def _assert_close(got, want, rtol):
    np.testing.assert_array_equal(got["count"], want["count"])
    for key in ("mean", "var", "std", "sem"):
        np.testing.assert_allclose(got[key], want[key], rtol=rtol, atol=0, err_msg=key)


def _fed(frames, masks, weights=None, **kwargs):
    rs = RunningStats(**kwargs)
    for i, (f, m) in enumerate(zip(frames, masks)):
        rs.update(f, m, None if weights is None else weights[i])
    return rs


@pytest.mark.parametrize(("dtype", "offset"), [("uint16", 1e4), ("uint32", 1e4), ("float32", 1e4),
                                               ("uint32", 1e8), ("float64", 1e8)])
def test_masked_stream_matches_two_pass_reference(dtype, offset):
    frames, masks = _stream(np.random.default_rng(1), dtype, offset)
    rs = _fed(frames, masks)
    _assert_close(rs.results(), _reference(frames, masks), rtol=1e-9)
    assert np.all(np.isfinite(frames[masks]))  # the inputs were not written


def test_strided_views_give_the_same_as_contiguous_frames():
    frames, masks = _stream(np.random.default_rng(16), "float32", 1e4, shape=(2 * 37, 3 * 61))
    views, vmasks = frames[:, ::2, 1::3], masks[:, ::2, 1::3]
    got = _fed(views, vmasks).results()
    _assert_close(got, _reference(np.ascontiguousarray(views), np.ascontiguousarray(vmasks)), rtol=1e-9)


def test_float32_accumulators_stay_accurate_with_a_large_offset():
    frames, masks = _stream(np.random.default_rng(2), "uint16", 1e4)
    _assert_close(_fed(frames, masks, dtype="float32").results(), _reference(frames, masks), rtol=1e-4)


@pytest.mark.parametrize("ddof", [0, 1, 2])
def test_sem_equals_scipy_and_var_equals_numpy_for_uniform_weights(ddof):
    frames, masks = _stream(np.random.default_rng(3), "float32", 100.0, masked=False)
    got = _fed(frames, masks, ddof=ddof).results()
    x = frames.astype(np.float64)
    np.testing.assert_allclose(got["sem"], scipy.stats.sem(x, axis=0, ddof=ddof), rtol=1e-12)
    np.testing.assert_allclose(got["var"], x.var(0, ddof=ddof), rtol=1e-12)
    np.testing.assert_allclose(got["std"], x.std(0, ddof=ddof), rtol=1e-12)


def test_reset_forgets_samples_and_results_derive_only_what_is_asked():
    frames, masks = _stream(np.random.default_rng(15), "uint16", 1e4)
    rs = _fed(frames[:5], masks[:5], time_constant=4.0)
    rs.reset()
    for i, (f, m) in enumerate(zip(frames[5:], masks[5:])):
        rs.update(f, m, index=i)
    want = _fed(frames[5:], masks[5:], time_constant=4.0).results()
    got = rs.results("float32", names=("sem", "count"))
    assert set(got) == {"sem", "count"} and got["sem"].dtype == np.float32
    np.testing.assert_array_equal(got["count"], want["count"])
    np.testing.assert_allclose(got["sem"], want["sem"], rtol=1e-6)
    with pytest.raises(ValueError, match=r"unknown results \['median'\]"):
        rs.results(names=("median",))


def test_pixels_without_enough_samples_give_nan():
    mask = np.zeros((3, 4), bool)
    mask[0, 0] = mask[0, 1] = True
    rs = RunningStats(ddof=1)
    rs.update(np.full((3, 4), 5, np.uint16), mask)
    mask2 = np.zeros((3, 4), bool)
    mask2[0, 0] = True
    rs.update(np.full((3, 4), 7, np.uint16), mask2)
    got = rs.results()
    assert got["count"].tolist()[0][:3] == [2, 1, 0]
    assert got["mean"][0, 0] == 6 and got["mean"][0, 1] == 5 and np.isnan(got["mean"][0, 2])
    assert got["var"][0, 0] == 2 and np.isnan(got["var"][0, 1]) and np.isnan(got["sem"][1, 1])


@pytest.mark.parametrize("kind", ["scalar", "pixel", "intensity", "scalar_and_pixel"])
def test_weighted_statistics_match_the_reliability_weight_formulas(kind):
    rng = np.random.default_rng(4)
    frames, masks = _stream(rng, "float32" if kind == "intensity" else "uint16", 1e4)
    n = len(frames)
    scalars = rng.uniform(0.1, 5.0, n)
    pixel = rng.uniform(0.0, 2.0, SHAPE)
    pixel[rng.random(SHAPE) < 0.1] = 0.0
    if kind == "scalar":
        rs, ref_w = _fed(frames, masks, scalars), scalars[:, None, None]
    elif kind == "pixel":
        per_frame = rng.uniform(0.0, 2.0, frames.shape)
        rs, ref_w = _fed(frames, masks, per_frame), per_frame
    elif kind == "intensity":
        rs = _fed(frames, masks, ["intensity"] * n)
        ref_w = np.where(masks, frames, 0).sum((1, 2), dtype=np.float64)[:, None, None]
    else:
        rs, ref_w = _fed(frames, masks, scalars, pixel_weights=pixel), scalars[:, None, None] * pixel
    _assert_close(rs.results(), _reference(frames, masks, ref_w), rtol=1e-9)
    np.testing.assert_allclose(rs.weight, (masks * ref_w).sum(0), rtol=1e-12)


def test_weighted_mean_matches_numpy_average():
    rng = np.random.default_rng(5)
    frames, masks = _stream(rng, "float32", 50.0, masked=False)
    w = rng.uniform(0.5, 2.0, len(frames))
    rs = _fed(frames, masks, w, ddof=0)
    x = frames.astype(np.float64)
    mean = np.average(x, axis=0, weights=w)
    np.testing.assert_allclose(rs.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(rs.var, np.average((x - mean) ** 2, axis=0, weights=w), rtol=1e-10)
    np.testing.assert_allclose(rs.n_eff, np.full(SHAPE, w.sum() ** 2 / (w**2).sum()), rtol=1e-12)


def test_zero_weights_contribute_nothing_and_are_not_counted():
    frames, masks = _stream(np.random.default_rng(6), "float32", 10.0, n=6, masked=False)
    weights = [1.0, 0.0, 2.0, 0.0, 1.0, 3.0]
    keep = np.array(weights) > 0
    rs = _fed(frames, masks, weights)
    _assert_close(rs.results(), _reference(frames[keep], masks[keep], np.array(weights)[keep, None, None]), 1e-9)


def test_late_weight_promotes_the_uniform_state_exactly():
    frames, masks = _stream(np.random.default_rng(7), "uint16", 1e4)
    weights = [None] * 10 + [2.5] * (len(frames) - 10)
    ref_w = np.array([1.0] * 10 + [2.5] * (len(frames) - 10))[:, None, None]
    _assert_close(_fed(frames, masks, weights).results(), _reference(frames, masks, ref_w), rtol=1e-9)


def test_exponential_window_matches_explicit_decaying_weights_in_any_order():
    rng = np.random.default_rng(8)
    frames, masks = _stream(rng, "float32", 1e4, n=30)
    tau = 7.0
    ref_w = np.exp(-(29 - np.arange(30)) / tau)[:, None, None]
    want = _reference(frames, masks, ref_w)
    rs = _fed(frames, masks, time_constant=tau)
    _assert_close(rs.results(), want, rtol=1e-9)
    shuffled = RunningStats(time_constant=tau)
    for i in rng.permutation(30):
        shuffled.update(frames[i], masks[i], index=int(i))
    _assert_close(shuffled.results(), want, rtol=1e-9)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 20), k=st.integers(1, 8), seed=st.integers(0, 2**32 - 1),
       mode=st.sampled_from(["uniform", "scalar", "ema"]))
@example(n=7, k=5, seed=148, mode="ema")  # a pixel seen once: merged V2 rounded apart from V1^2
def test_merging_any_split_of_partial_states_equals_the_single_stream(n, k, seed, mode):
    rng = np.random.default_rng(seed)
    frames, masks = _stream(rng, "uint32", 1e8, n=n, shape=(5, 7))
    weights = rng.uniform(0.1, 3.0, n) if mode == "scalar" else [None] * n
    tau = 3.0 if mode == "ema" else None
    single = RunningStats(time_constant=tau)
    parts = [RunningStats(time_constant=tau) for _ in range(k)]
    owner = rng.integers(0, k, n)
    for i in range(n):
        single.update(frames[i], masks[i], weights[i], index=i)
        parts[owner[i]].update(frames[i], masks[i], weights[i], index=i)
    merged = RunningStats(time_constant=tau)  # a fresh state, as the executor merges workers
    for j in rng.permutation(k):
        merged.merge(parts[j].state())
    want = single.results()
    got = merged.results()
    np.testing.assert_array_equal(got["count"], want["count"])
    for key in ("mean", "var", "sem"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-9, atol=0, err_msg=key)


def test_state_survives_msgpack_and_merge_leaves_the_other_untouched():
    frames, masks = _stream(np.random.default_rng(9), "uint16", 1e4)
    a, b = _fed(frames[:9], masks[:9], ["intensity"] * 9), _fed(frames[9:], masks[9:], ["intensity"] * 15)
    before = {k: np.array(v) for k, v in b.state().items() if isinstance(v, np.ndarray)}
    wire = msgpack.packb(b.state(), default=schema.encode_array, use_bin_type=True)
    received = msgpack.unpackb(wire, object_hook=lambda o: schema.decode_array(o) if "data" in o else o)
    a.merge(received)
    for key, value in before.items():
        np.testing.assert_array_equal(b.state()[key], value)
    ref_w = np.where(masks, frames, 0).sum((1, 2), dtype=np.float64)[:, None, None]
    _assert_close(a.results(), _reference(frames, masks, ref_w), rtol=1e-9)
    with pytest.raises(ValueError, match="assignment destination is read-only"):
        b.state()["mean"][0, 0] = 1.0


def _series(shape=SHAPE, mask=None):
    return SeriesStart(3, shape, "uint16", mask=mask)


def test_operator_declares_reductions_and_snapshots_fresh_copies():
    frames, masks = _stream(np.random.default_rng(10), "uint16", 1e4)
    op = Stats(StatsParams(output="float32"))
    op.start(_series())
    for i, (f, m) in enumerate(zip(frames, masks)):
        op.process(Frame(3, i, f, mask=m))
    snap = op.snapshot()
    assert {k: (v.shape, v.dtype.name) for k, v in snap.items()} == {
        k: (shape, np.dtype(dt).name) for k, (shape, dt) in op.reductions.items()}
    want = _reference(frames, masks)
    np.testing.assert_allclose(snap["sem"], want["sem"], rtol=1e-6)
    snap["mean"][:] = 0
    np.testing.assert_allclose(op.finish()["mean"], want["mean"], rtol=1e-6)


def test_operator_workers_merge_to_one_and_reset_per_series():
    frames, masks = _stream(np.random.default_rng(11), "uint16", 1e4)
    params = StatsParams(weights="intensity")
    workers = [Stats(params) for _ in range(3)]
    for w in workers:
        w.start(_series())
    for i, (f, m) in enumerate(zip(frames, masks)):
        workers[i % 3].process(Frame(3, i, f, mask=m))
    merged = Stats(params)
    merged.start(_series())
    for w in workers:
        merged.merge(w.state())
    ref_w = np.where(masks, frames, 0).sum((1, 2), dtype=np.float64)[:, None, None]
    _assert_close(merged.finish(), _reference(frames, masks, ref_w), rtol=1e-9)
    buffers = merged.stats
    merged.start(_series())
    assert merged.stats is buffers and merged.finish()["count"].sum() == 0
    merged.start(_series((8, 9)))
    assert merged.finish()["count"].shape == (8, 9)


def test_operator_weights_from_a_result_and_a_weight_file():
    rng = np.random.default_rng(13)
    frames, masks = _stream(rng, "uint16", 1e4)
    monitor = rng.uniform(0.5, 2.0, len(frames))
    pixel = rng.uniform(0.0, 1.0, SHAPE)
    op = Stats(StatsParams(weights="result", weight_result="monitor.i0", weight_file=pixel))
    op.start(_series())
    for i, (f, m) in enumerate(zip(frames, masks)):
        op.process(Frame(3, i, f, mask=m, results={"monitor": {"i0": monitor[i]}}))
    _assert_close(op.finish(), _reference(frames, masks, monitor[:, None, None] * pixel), rtol=1e-9)
    with pytest.raises(ValueError, match=r"no result 'monitor.i0' for the weight; results hold \['x.y'\]"):
        op.process(Frame(3, 99, frames[0], results={"x": {"y": 1.0}}))


def test_errors_name_the_value_and_what_was_expected():
    rs = RunningStats()
    rs.update(np.ones((3, 4), np.uint16))
    with pytest.raises(ValueError, match=r"frame shape \(3, 3\) != statistics shape \(3, 4\)"):
        rs.update(np.ones((3, 3)))
    with pytest.raises(TypeError, match=r"mask must be bool \(True = valid pixel\), got dtype uint8"):
        rs.update(np.ones((3, 4)), np.ones((3, 4), np.uint8))
    with pytest.raises(ValueError, match="frame weight must be finite and >= 0, got -1.0"):
        rs.update(np.ones((3, 4)), weight=-1.0)
    with pytest.raises(ValueError, match=r"weight shape \(2, 2\) != frame shape \(3, 4\)"):
        rs.update(np.ones((3, 4)), weight=np.ones((2, 2)))
    with pytest.raises(TypeError, match="real-valued"):
        rs.update(np.ones((3, 4), complex))
    with pytest.raises(ValueError, match="time_constant 2.0 into ones with None"):
        rs.merge(RunningStats(time_constant=2.0, shape=(3, 4)))
    with pytest.raises(ValueError, match=r"weight_file shape \(2, 2\) != frame shape \(37, 61\)"):
        Stats(StatsParams(weight_file=np.ones((2, 2)))).start(_series())
    with pytest.raises(ValueError, match="weight_result = 'operator.key', got 'sum'"):
        StatsParams(weights="result", weight_result="sum")
    with pytest.raises(ValueError, match="ddof must be an integer >= 0, got -1"):
        RunningStats(ddof=-1)


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_npstreams_isem_is_wrong_where_ours_is_exact(dtype):
    npstreams = pytest.importorskip("npstreams")
    frames, _ = _stream(np.random.default_rng(14), dtype, 1e4, n=20, masked=False)
    want = scipy.stats.sem(frames.astype(np.float64), axis=0)
    with np.errstate(all="ignore"):
        for theirs in npstreams.isem(list(frames), ddof=1):
            pass
    np.testing.assert_allclose(_fed(frames, [None] * 20).sem, want, rtol=1e-12)
    # mean of squares: uint16 squares wrap modulo 2**16, float32 squares of 1e4 +- 1 keep no digit of the variance
    assert not np.allclose(theirs, want, rtol=0.1, equal_nan=False)


@pytest.mark.parametrize("dtype", ["uint16", "float32", "int32"])
def test_uniform_frames_fold_bit_for_bit_like_the_general_kernel(dtype):
    """``fold_frame`` (the vectorised path of uniform, unweighted statistics) leaves exactly the
    state the general Chan kernel leaves, masks, large offsets and a first value per pixel included."""
    from livediff.operators.stats.kernels import fold, fold_frame

    rng = np.random.default_rng(31)
    shape = (29, 67)
    fast = [np.zeros(shape, np.int64), np.zeros(shape), np.zeros(shape), np.zeros(shape)]
    general = [a.copy() for a in fast]
    zeros = np.zeros(shape, np.float32)
    for _ in range(12):
        frame = (1e4 + rng.normal(0, 40, shape) * 3).astype(dtype)
        valid = rng.random(shape) > 0.3
        fold_frame(*fast, frame, valid)
        fold(*general, None, None, 1.0, valid, frame, zeros, zeros, None, None, 1.0)
    for a, b in zip(fast, general):
        np.testing.assert_array_equal(a, b)
    assert (fast[0] > 0).all() and (fast[0] < 12).any()
