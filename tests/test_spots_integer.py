"""The integer fast path of the dispersion threshold against the float64 references: every integer dtype,
values that overflow its narrow sums (big, huge, out of range), strong-test boundaries, thread counts, a real
EIGER2 16M frame, and DIALS' own threshold as C++ where a compiler exists."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from livediff.bench import dials_cpp
from livediff.operators.spots import dispersion_mask
from livediff.operators.spots.integer import MAX_AREA, fits, limits
from livediff.sources import codecs
from livediff.sources.dectris_v2 import StreamV2Decoder
from test_spots import LIMIT, poisson_frame, random_mask, reference_mask

DATA = Path(__file__).parent / "data"
SHIFT, BIG, HUGE = limits(3, 3)


@pytest.fixture(autouse=True, scope="module")
def _compile_into_a_temporary_cache(tmp_path_factory):
    """The C++ peer is built into a cache of the tests' own, not the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        yield


def _frame(rng, shape, dtype, *, background=4.0, peaks=40, negative=False):
    """Poisson background with peaks, in ``dtype``; signed dtypes get a few negative pixels."""
    image = poisson_frame(rng, shape, "int32" if np.dtype(dtype).itemsize < 4 else dtype,
                          background=background, n_peaks=peaks).astype(np.int64)
    info = np.iinfo(dtype)
    if negative and info.min < 0:
        image.flat[rng.choice(image.size, image.size // 50, replace=False)] = -rng.integers(1, 20, image.size // 50)
    return np.clip(image, info.min, info.max).astype(dtype)


def _check(image, mask=None, threads=(1, 3), **params):
    expected = reference_mask(image, mask, **params)
    for t in threads:
        np.testing.assert_array_equal(dispersion_mask(image, mask, threads=t, **params), expected)
    return expected


@pytest.mark.parametrize("dtype", ["int16", "uint16", "int32", "uint32"])
def test_every_integer_dtype_equals_the_float64_reference(dtype):
    assert fits(np.dtype(dtype), 3, 3)
    rng = np.random.default_rng([7, np.dtype(dtype).num])
    for shape, fraction in (((150, 131), 0.1), ((70, 203), 0.0)):
        image = _frame(rng, shape, dtype, negative=True)
        mask = random_mask(rng, shape, fraction) if fraction else None
        for params in ({}, {"global_threshold": 0.5}, {"global_threshold": 3.0}, {"global_threshold": -2.0},
                       {"gain": 1.3, "min_local": 20}, {"gain": rng.uniform(0.5, 2.0, shape)}):
            assert _check(image, mask, **params).sum() >= 5


@pytest.mark.parametrize("kernel_size", [(1, 1), (2, 4), (4, 2), (5, 5), (5, 6)])
def test_window_sizes_with_and_without_the_fast_path(kernel_size):
    kh, kw = kernel_size
    assert fits(np.dtype("int32"), kh, kw) == ((2 * kh + 1) * (2 * kw + 1) <= MAX_AREA)
    rng = np.random.default_rng([8, kh, kw])
    image = _frame(rng, (160, 90), "int32", negative=True)
    assert _check(image, random_mask(rng, image.shape, 0.05), kernel_size=kernel_size).sum() >= 5


@pytest.mark.parametrize("dtype", ["uint16", "int32", "uint32"])
def test_values_beyond_the_narrow_sums_are_exact(dtype):
    """Peaks above ``big`` (squares wrap in int32), above ``huge`` (window sums wrap), and values
    outside the usable range that are left unmasked."""
    rng = np.random.default_rng([9, len(dtype)])
    image = _frame(rng, (200, 173), dtype).astype(np.int64)
    top = np.iinfo(dtype).max
    for k, (r, c) in enumerate(rng.integers((3, 3), (197, 170), (30, 2))):
        level = (BIG + 5, 50_000, HUGE - 1, HUGE, 3 * HUGE, int(LIMIT) - 1, int(LIMIT), top)[k % 8]
        image[r - 1:r + 2, c - 1:c + 2] += np.minimum(level, top) // (1 + rng.integers(0, 3, (3, 3)))
    if dtype == "int32":  # and below: values the sums let in and take out again
        image.flat[rng.choice(image.size, 40, replace=False)] = rng.choice([-2 ** 31, -int(LIMIT), -BIG, 1 - BIG], 40)
    image = np.minimum(image, top).astype(dtype)
    assert (image >= BIG).any()
    _check(image, random_mask(rng, image.shape, 0.05))
    _check(image)


@pytest.mark.parametrize("dtype", ["uint16", "int32", "uint32"])
def test_a_lower_max_value_equals_the_general_kernel(dtype):
    rng = np.random.default_rng([12, len(dtype)])
    image = _frame(rng, (150, 121), dtype, background=10.0, negative=True)
    mask = random_mask(rng, image.shape, 0.05)
    for max_value in (60.5, 100, 30_000):
        expected = dispersion_mask(image.astype(np.float64), mask, max_value=max_value)
        assert expected.any()
        for threads in (1, 2):
            np.testing.assert_array_equal(dispersion_mask(image, mask, max_value=max_value, threads=threads), expected)


def test_frames_full_of_huge_values_fall_back_to_the_general_kernel():
    rng = np.random.default_rng(10)
    image = (HUGE + rng.poisson(1000.0, (300, 140))).astype(np.int32)
    image[::37, ::23] += 40_000
    assert _check(image, threads=(1, 2, 5)).sum() >= 5
    patchy = _frame(rng, (300, 140), "int32")
    patchy[64:128] = image[64:128]  # one block of rows needs the general kernel, the others do not
    _check(patchy, threads=(1, 2, 5))


def test_pixels_at_the_strong_threshold():
    """Windows whose centre is exactly at, one count above and one below DIALS' strong cut-off
    (b = sigma_s sqrt(x m)), with a constant background that makes every such window dispersed."""
    cases = []
    for c in range(0, 400, 3):
        for v in range(c + 1, c + 2000):
            b, x = 48 * (v - c), v + 48 * c
            if b * b >= 9 * 49 * x:  # the first v over the cut-off, and the one before
                cases += [(c, v - 1), (c, v), (c, v + 1)]
                break
    tiles = np.zeros((len(cases), 9, 9), np.int64)
    for tile, (c, v) in zip(tiles, cases):
        tile[1:8, 1:8] = c
        tile[4, 4] = v
    image = tiles.reshape(-1, 9).astype(np.int32)
    for params in ({}, {"global_threshold": 2.0}, {"sigma_background": 0.0}):
        _check(image, **params)
    image16 = image.astype(np.uint16)
    _check(image16, sigma_strong=2.5)


def test_a_real_eiger2_16m_frame():
    """A captured EIGER2 Si 16M frame (uint16, gaps at 65535): the fast path equals the general
    kernel on the same counts as float64, masked and unmasked."""
    dec = StreamV2Decoder()
    dec([(DATA / "stream2_start.cbor").read_bytes()])
    _, frame = dec([(DATA / "stream2_image.cbor").read_bytes()])
    image = frame.decode(codecs.decode_payload)   # decoded as a worker does
    mask = image != 65535
    for m in (mask, None):
        np.testing.assert_array_equal(dispersion_mask(image, m), dispersion_mask(image.astype(np.float64), m))
    assert dispersion_mask(image, mask).any()


@pytest.mark.skipif(dials_cpp.compiler() is None, reason="no C++ compiler on PATH")
@pytest.mark.parametrize("dtype", ["uint16", "int32", "uint32", "float64"])
def test_dials_threshold_in_cpp_gives_the_same_strong_pixels(dtype):
    library, why = dials_cpp.load()
    assert library is not None, why
    rng = np.random.default_rng([11, len(dtype)])
    for shape, background in (((123, 157), 3.0), ((64, 300), 0.3), ((200, 90), 40.0)):
        image = poisson_frame(rng, shape, "uint16", background=background, n_peaks=30).astype(dtype)
        mask = random_mask(rng, shape, 0.1)
        theirs = dials_cpp.dispersion(library, shape, dtype)(image, mask)
        assert theirs.sum() >= 5
        np.testing.assert_array_equal(dispersion_mask(image, mask), theirs)
        np.testing.assert_array_equal(reference_mask(image, mask), theirs)


@pytest.mark.parametrize("have_compiler", [True, False])
def test_the_bench_rows_against_dials_cpp(monkeypatch, have_compiler):
    """``livediff bench --only spots`` times the threshold against the C++ peer after checking that
    both find the same strong pixels; without a compiler the row says why and ours is still timed."""
    from livediff.bench import core
    from livediff.bench import spots as spots_bench

    if not have_compiler:
        monkeypatch.setattr(dials_cpp, "compiler", lambda: None)
    elif dials_cpp.compiler() is None:
        pytest.skip("no C++ compiler on PATH")
    (case,) = spots_bench.threshold_cases((((96, 130), "int32"),))
    row = core.run_case(case, min_seconds=0.01)
    assert row["operator"] == "spots threshold (dispersion_mask)" and row["ours_fps"] > 0
    if have_compiler:
        assert row["skipped"] is None and row["peer"].startswith("DIALS dispersion, C++") and row["ratio"] > 0
    else:
        assert row["skipped"] == "no C++ compiler on PATH (c++, g++, clang++)" and row["peer_fps"] is None
