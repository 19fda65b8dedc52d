"""Flat-field kernels and operators against plain numpy / scipy references."""
from __future__ import annotations

import asyncio
import re

import h5py
import numpy as np
import pytest
from harness import config, running
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from livediff.config import parse
from livediff.errors import ConfigError
from livediff.model import Frame, Geometry, SeriesStart
from livediff.operators import REGISTRY
from livediff.operators.bin import Bin, bin_frame
from livediff.operators.corrections import correct, divide_flat, dynamic_background, static_background, subtract_dark
from livediff.operators.dynamic_background import DynamicBackground
from livediff.operators import flatfield
from livediff.operators.flatfield import FlatField
from livediff.operators.hot_pixels import HotPixels
from livediff.operators.preview import Preview
from livediff.operators.static_background import StaticBackground
from livediff.executors.offline import process_frames
from livediff.pipeline import Chain, OperatorSpec
from livediff.sources.sender import stream_series
from simulators import DiffractionSimulator

SHAPE = (37, 61)


def _readonly(*arrays):
    for a in arrays:
        a.setflags(write=False)


def _raw(rng, dtype, shape=SHAPE):
    """Counts on a large offset (uint32 near 3e9), with a few top-of-dtype markers."""
    offset = {"uint16": 1e4, "uint32": 3e9, "float32": 1e4}[dtype]
    image = (offset + rng.poisson(50, shape)).astype(dtype)
    if dtype != "float32":
        image[rng.random(shape) < 0.02] = np.iinfo(dtype).max
    return image


def _references(rng, shape=SHAPE, offset=1e4):
    dark = (offset + rng.normal(0, 3, shape)).astype(np.float32)
    flat = rng.uniform(0.5, 1.5, shape)
    flat[rng.random(shape) < 0.02] = 0.0
    flat[rng.random(shape) < 0.02] = np.nan
    flat[0, 0] = np.inf
    mask = rng.random(shape) > 0.2
    return dark, flat, mask


@pytest.mark.parametrize("dtype", ["uint16", "uint32", "float32"])
def test_correct_equals_float64_numpy_rounded_once(dtype):
    rng = np.random.default_rng(1)
    image = _raw(rng, dtype)
    dark, flat, mask = _references(rng, offset=float(image.min()))
    _readonly(image, dark, flat, mask)
    valid = np.empty(SHAPE, bool)
    got = correct(image, dark=dark, flat=flat, mask=mask, mask_out=valid, fill_value=-7.0)
    sat = np.iinfo(dtype).max if dtype != "float32" else np.inf
    expect_valid = mask & (image < sat) & np.isfinite(flat) & (flat != 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        expect = ((image.astype(np.float64) - dark.astype(np.float64)) / flat).astype(np.float32)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(valid, expect_valid)
    np.testing.assert_array_equal(got[valid], expect[valid])
    assert np.all(got[~valid] == -7.0)
    assert 0 < valid.sum() < valid.size


@pytest.mark.parametrize("which", [(), ("dark",), ("flat",), ("mask",), ("dark", "flat", "mask")])
def test_correct_with_any_subset_of_references(which):
    rng = np.random.default_rng(2)
    image = _raw(rng, "uint16")
    dark, flat, mask = _references(rng)
    flat = np.abs(np.nan_to_num(flat)) + 0.5
    refs = {"dark": dark, "flat": flat, "mask": mask}
    kwargs = {k: refs[k] for k in which}
    got = correct(image, saturation=np.inf, **kwargs)
    expect = image.astype(np.float64)
    if "dark" in which:
        expect = expect - dark
    if "flat" in which:
        expect = expect / flat
    expect = np.where(mask, expect, 0.0) if "mask" in which else expect
    np.testing.assert_array_equal(got, expect.astype(np.float32))


@pytest.mark.parametrize("dark_dtype", ["uint16", "int32", "uint32"])
def test_integer_darks_are_read_as_they_are_and_give_the_float64_answer(dark_dtype):
    rng = np.random.default_rng(12)
    image = _raw(rng, "uint16")
    dark = rng.integers(9990, 10010, SHAPE).astype(dark_dtype)
    flat = rng.uniform(0.5, 1.5, SHAPE).astype(np.float32)
    mask = rng.random(SHAPE) > 0.1
    _readonly(image, dark, flat, mask)
    valid = np.empty(SHAPE, bool)
    got = correct(image, dark=dark, flat=flat, mask=mask, mask_out=valid)
    expect = ((image.astype(np.float64) - dark.astype(np.float64)) / flat).astype(np.float32)
    np.testing.assert_array_equal(valid, mask & (image < 65535))
    np.testing.assert_array_equal(got[valid], expect[valid])
    # compiled for the dark's own dtype: no call makes a float copy of it
    assert any(str(getattr(signature[1], "dtype", None)) == dark_dtype for signature in flatfield._correct.signatures)


def test_uint16_below_dark_goes_negative_instead_of_wrapping():
    image = np.array([[0, 5, 65534]], np.uint16)
    dark = np.full((1, 3), 10, np.uint16)
    np.testing.assert_array_equal(correct(image, dark=dark), [[-10, -5, 65524]])
    np.testing.assert_array_equal(subtract_dark(image, dark), [[-10, -5, 65524]])


def test_correct_masks_saturation_header_value_and_non_finite_floats():
    image = np.array([[1.0, np.nan, np.inf, 99.0, 100.0]], np.float32)
    valid = np.empty(image.shape, bool)
    correct(image, mask_out=valid)
    np.testing.assert_array_equal(valid, [[True, False, False, True, True]])
    correct(image, saturation=100, mask_out=valid)
    np.testing.assert_array_equal(valid, [[True, False, False, True, False]])


def test_correct_writes_into_out_and_validates_its_arguments():
    image = np.ones((3, 4), np.uint16)
    out = np.full((3, 4), 5.0, np.float32)
    assert correct(image, out=out) is out and np.all(out == 1.0)
    with pytest.raises(ValueError, match=r"dark shape \(3, 3\) != image shape \(3, 4\)"):
        correct(image, dark=np.zeros((3, 3)))
    with pytest.raises(TypeError, match="mask must be bool"):
        correct(image, mask=np.ones((3, 4), np.uint8))
    with pytest.raises(TypeError, match="out must be float32, got float64"):
        correct(image, out=np.empty((3, 4)))
    with pytest.raises(ValueError, match="2-D"):
        correct(np.ones(5))


def test_masked_pixels_never_leak_into_any_kernel():
    rng = np.random.default_rng(3)
    image = _raw(rng, "uint32", (64, 96))
    dark, flat, mask = _references(rng, (64, 96), offset=3e9)
    garbage = image.copy()
    garbage[~mask] = rng.integers(0, 2**32 - 1, (~mask).sum(), dtype=np.uint32)
    for a, b in [
        (correct(image, dark=dark, flat=flat, mask=mask), correct(garbage, dark=dark, flat=flat, mask=mask)),
        (divide_flat(image, flat, mask)[0], divide_flat(garbage, flat, mask)[0]),
        (dynamic_background(image, 3.0, mask), dynamic_background(garbage, 3.0, mask)),
        (dynamic_background(image, 20.0, mask, method="fft"), dynamic_background(garbage, 20.0, mask, method="fft")),
    ]:
        np.testing.assert_array_equal(a, b)


def test_divide_flat_masks_zero_and_non_finite_flats_and_keeps_the_mask():
    rng = np.random.default_rng(4)
    image = rng.normal(100, 10, SHAPE).astype(np.float32)
    _, flat, mask = _references(rng)
    _readonly(image, flat, mask)
    got, valid = divide_flat(image, flat, mask)
    expect_valid = mask & np.isfinite(flat) & (flat != 0)
    np.testing.assert_array_equal(valid, expect_valid)
    np.testing.assert_array_equal(got[valid], (image[valid] / flat[valid]).astype(np.float32))
    assert np.all(got[~valid] == 0)


@pytest.mark.parametrize("mode", ["divide", "subtract"])
def test_static_background_divides_or_subtracts(mode):
    rng = np.random.default_rng(5)
    image = rng.integers(0, 255, SHAPE, dtype=np.uint8)
    background = rng.uniform(20, 200, SHAPE).astype(np.float32)
    background[3, 4] = 0.0
    got, valid = static_background(image, background, mode=mode)
    op = np.divide if mode == "divide" else np.subtract
    with np.errstate(divide="ignore"):
        expect = op(image.astype(np.float64), background).astype(np.float32)
    assert valid[3, 4] == (mode == "subtract") and valid.sum() >= valid.size - 1
    np.testing.assert_array_equal(got[valid], expect[valid])
    with pytest.raises(ValueError, match="mode must be 'divide' or 'subtract', got 'ratio'"):
        static_background(image, background, mode="ratio")


def _scipy_background(image, sigma, mask, *, mode="divide", truncate=4.0, boundary="reflect", min_weight=0.01):
    """Normalised convolution with scipy.ndimage.gaussian_filter, in float64."""
    scipy_mode = {"reflect": "reflect", "nearest": "nearest"}[boundary]
    num = ndimage.gaussian_filter(np.where(mask, image.astype(np.float64), 0.0), sigma, mode=scipy_mode,
                                  truncate=truncate)
    den = ndimage.gaussian_filter(mask.astype(np.float64), sigma, mode=scipy_mode, truncate=truncate)
    with np.errstate(divide="ignore", invalid="ignore"):
        b = num / den
        x = image.astype(np.float64)
        result = {"divide": x / b, "subtract": x - b, "relative": (x - b) / b}[mode]
    valid = mask & (den >= min_weight) & ((b > 0) | (mode == "subtract"))
    return result.astype(np.float32), valid


@pytest.mark.parametrize("method", ["direct", "fft", "matrix"])
@pytest.mark.parametrize("mode", ["divide", "subtract", "relative"])
@pytest.mark.parametrize("dtype", ["uint16", "uint32", "float32"])
def test_dynamic_background_equals_scipy_normalised_convolution(method, mode, dtype):
    rng = np.random.default_rng(6)
    shape = (64, 96)
    image = _raw(rng, dtype, shape)
    mask = rng.random(shape) > 0.3
    mask[20:40, 30:60] = False  # a beam stop wider than the kernel: no background in its middle
    _readonly(image, mask)
    valid = np.empty(shape, bool)
    got = dynamic_background(image, 2.5, mask, mode=mode, method=method, mask_out=valid)
    expect, expect_valid = _scipy_background(image, 2.5, mask, mode=mode)
    np.testing.assert_array_equal(valid, expect_valid)
    # x - B cancels on a 3e9 offset: float64 rounding of the input scale is the floor
    np.testing.assert_allclose(got[valid], expect[valid], rtol=2e-6, atol=1e-14 * float(image.max()))
    assert np.all(got[~valid] == 0) and not valid[30, 45] and valid.sum() > 0.5 * valid.size


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 30), cols=st.integers(1, 30), sigma=st.floats(0.3, 25.0),
       truncate=st.floats(1.0, 4.0), boundary=st.sampled_from(["reflect", "nearest"]),
       method=st.sampled_from(["direct", "fft", "matrix"]), seed=st.integers(0, 2**16))
def test_dynamic_background_matches_scipy_for_any_size_sigma_and_boundary(rows, cols, sigma, truncate, boundary,
                                                                            method, seed):
    rng = np.random.default_rng(seed)
    image = rng.uniform(1, 100, (rows, cols)).astype(np.float32)
    mask = rng.random((rows, cols)) > 0.2
    got = dynamic_background(image, sigma, mask, truncate=truncate, boundary=boundary, method=method,
                             mode="subtract", min_weight=0.0)
    expect, valid = _scipy_background(image, sigma, mask, truncate=truncate, boundary=boundary, mode="subtract",
                                      min_weight=1e-300)
    np.testing.assert_allclose(got[valid], expect[valid], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("window", ["scipy", "kikuchipy"])
@pytest.mark.parametrize("boundary", ["reflect", "nearest"])
@pytest.mark.parametrize("sigma", [3.0, 12.0, 30.0])
def test_dynamic_background_banded_matrix_equals_direct(window, boundary, sigma):
    """Frames large enough for the matrix low-pass to run in blocks of the band: the same as the direct form."""
    from livediff.operators.dynamic_background import _band

    rng = np.random.default_rng(8)
    image = rng.poisson(50, (240, 200)).astype(np.uint16)
    mask = rng.random(image.shape) > 0.1
    if sigma < 30:  # a band narrower than the frame: the product runs in blocks
        assert len(_band(240, sigma, 4.0, window, boundary == "reflect")) > 1
    got, expect = (dynamic_background(image, sigma, mask, boundary=boundary, window=window, method=method)
                   for method in ("matrix", "direct"))
    np.testing.assert_allclose(got, expect, rtol=1e-5 if window == "kikuchipy" else 1e-12)


def test_dynamic_background_without_mask_skips_non_finite_pixels():
    rng = np.random.default_rng(7)
    image = rng.uniform(10, 20, (40, 50)).astype(np.float32)
    image[5, 6], image[30, 7] = np.nan, np.inf
    finite = np.isfinite(image)
    valid = np.empty(image.shape, bool)
    got = dynamic_background(image, 3.0, mask_out=valid)
    np.testing.assert_array_equal(valid, finite)
    np.testing.assert_array_equal(got, dynamic_background(np.nan_to_num(image, posinf=0), 3.0, finite))


def test_dynamic_background_rejects_bad_options():
    image = np.ones((8, 8), np.float32)
    with pytest.raises(ValueError, match="mode must be one of 'divide', 'subtract', 'relative', got 'ratio'"):
        dynamic_background(image, 2.0, mode="ratio")
    with pytest.raises(ValueError, match="sigma and truncate must be > 0, got sigma=0"):
        dynamic_background(image, 0)


# ---------------------------------------------------------------- operators

def _series(shape=SHAPE, dtype="uint16", mask=None, saturation=None):
    return SeriesStart(3, shape, dtype, mask=mask, saturation=saturation,
                       geometry=Geometry(beam_center=(10.0, 20.0), pixel_size=(75e-6, 75e-6)))


def test_flatfield_operator_equals_the_kernel_with_all_masks_united():
    rng = np.random.default_rng(8)
    dark, flat, _ = _references(rng)
    header = rng.random(SHAPE) > 0.1
    user = (rng.random(SHAPE) < 0.1).astype(np.uint8)  # nonzero = bad (the default convention)
    op = FlatField(FlatField.Params(dark=dark, flat=flat, mask=user, saturation=10040))
    series = _series(mask=header)
    op.start(series)
    out_series = op.output_series(series)
    static = header & (user == 0) & np.isfinite(flat) & (flat != 0)
    assert out_series.dtype == "float32" and out_series.saturation is None
    np.testing.assert_array_equal(out_series.mask, static)
    image = _raw(rng, "uint16")
    frame = op.process(Frame(3, 0, image, mask=header))
    valid = np.empty(SHAPE, bool)
    expect = correct(image, dark=dark.astype(np.float32), flat=flat.astype(np.float32), mask=static,
                     saturation=10040, mask_out=valid)
    np.testing.assert_array_equal(frame.mask, valid)
    np.testing.assert_array_equal(frame.data, expect)
    assert not frame.mask[image >= 10040].any() and frame.mask is not header


def test_flatfield_user_mask_convention_and_header_saturation():
    user = np.zeros(SHAPE, np.int32)
    user[1, 1] = 1
    op = FlatField(FlatField.Params(mask=user, mask_nonzero="valid"))
    op.start(_series(saturation=200))
    image = np.full(SHAPE, 100, np.uint16)
    image[1, 1] = 200
    frame = op.process(Frame(3, 0, image))
    assert frame.mask.sum() == 0  # the one valid pixel is saturated
    image[1, 1] = 199
    assert op.process(Frame(3, 1, image)).mask.sum() == 1


def test_flatfield_masks_the_gap_marker_whatever_the_saturation_like_summary():
    image = np.full(SHAPE, 100, np.uint16)
    image[2, 3] = 65535                  # DECTRIS' gap / defect marker, not in any mask
    for params, saturation in (({}, 70000), ({"saturation": 1e9}, None), ({}, None)):
        op = FlatField(FlatField.Params(**params))
        op.start(_series(saturation=saturation))
        mask = op.process(Frame(3, 0, image)).mask
        assert not mask[2, 3] and mask.sum() == image.size - 1, (params, saturation)


@pytest.mark.parametrize("dtype", ["uint16", "uint32", "int32", "uint8"])
def test_valid_below_equals_numpy(dtype):
    rng = np.random.default_rng(21)
    info = np.iinfo(dtype)
    image = rng.integers(max(info.min, -1000), info.max, (37, 61), dtype=dtype, endpoint=True)
    image[rng.random(image.shape) < 0.1] = info.max
    mask = rng.random(image.shape) > 0.2
    for saturation in (float(info.max), 100.5, 0.0, float(info.max) * 4.0, -7.5, np.inf, -np.inf, np.nan):
        np.testing.assert_array_equal(flatfield.valid_below(image, mask, saturation), mask & (image < saturation))
        np.testing.assert_array_equal(flatfield.valid_below(image, None, saturation), image < saturation)
    for wrong in (np.float32, np.int64):
        with pytest.raises(TypeError, match="integer dtype of at most 32 bits"):
            flatfield.valid_below(image.astype(wrong), mask, 10.0)


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_flatfield_with_nothing_to_correct_passes_integer_counts_on_with_the_same_mask(dtype):
    rng = np.random.default_rng(22)
    header = rng.random(SHAPE) > 0.1
    user = (rng.random(SHAPE) < 0.1).astype(np.uint8)
    series = _series(mask=header, dtype=dtype, saturation=np.iinfo(dtype).max - 7)
    ops = {out: FlatField(FlatField.Params(mask=user, output=out)) for out in ("auto", "float32")}
    for op in ops.values():
        op.start(series)
    counts, converted = (ops[k].output_series(series) for k in ("auto", "float32"))
    assert counts.dtype == dtype and converted.dtype == "float32"
    np.testing.assert_array_equal(counts.mask, converted.mask)
    image = _raw(rng, dtype)
    image[rng.random(SHAPE) < 0.05] = np.iinfo(dtype).max - 3   # saturated, below the gap marker
    kept = ops["auto"].process(Frame(3, 0, image, mask=header))
    fixed = ops["float32"].process(Frame(3, 0, image, mask=header))
    assert kept.data is image                                   # no float32 frame written
    np.testing.assert_array_equal(kept.mask, fixed.mask)
    assert not kept.mask[image >= np.iinfo(dtype).max - 7].any() and kept.mask.sum() > 0.5 * image.size
    np.testing.assert_array_equal(fixed.data[fixed.mask], image[kept.mask].astype(np.float32))


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_counts_passed_on_give_the_spots_and_tables_of_the_float32_frames(dtype):
    """The MX chain with flatfield's default (integer counts on, the integer spot kernel) and with
    float32 frames (the general kernel): the same per-frame results and spot tables."""
    sim = DiffractionSimulator(shape=(96, 130), dtype=dtype, n_frames=6, n_spots=25, seed=5, n_dead=30, n_hot=6)
    start = sim.series_start()
    results = {}
    for out in ("auto", "float32"):
        specs = parse({"operators": {"summary": {}, "flatfield": {"output": out, "saturation": sim.top - 100},
                                     "spots": {}}}).operators
        frames = []
        for i in range(sim.n_frames):
            image = sim.frame(i)
            image[i, :7] = sim.top - 50                              # saturated counts the flatfield masks
            frames.append(Frame(1, i, image, mask=start.mask))
        done, _ = process_frames(specs, start, frames, workers=2)
        assert all(isinstance(f, Frame) for f in done)
        results[out] = [(f.results["summary"], f.results["spots"]) for f in done]
    for (sum_a, spots_a), (sum_b, spots_b) in zip(results["auto"], results["float32"]):
        assert sum_a == sum_b
        assert spots_a.keys() == spots_b.keys()
        for key, value in spots_a.items():
            if isinstance(value, dict):
                assert value.keys() == spots_b[key].keys()
                for column in value:
                    np.testing.assert_array_equal(value[column], spots_b[key][column], err_msg=column)
            else:
                np.testing.assert_array_equal(value, spots_b[key], err_msg=key)
    assert sum(len(s["rows"]["x"]) if "rows" in s else 0 for _, s in results["auto"]) > 0


def test_flatfield_references_must_match_the_frame_shape():
    op = FlatField(FlatField.Params(flat=np.ones((10, 10))))
    with pytest.raises(ValueError, match=r"flatfield: flat shape \(10, 10\) != frame shape \(37, 61\)"):
        op.start(_series())


def _flatfield(**params) -> list[OperatorSpec]:
    return [OperatorSpec("flatfield", FlatField, FlatField.Params(**params))]


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_dark_accumulated_live_from_the_first_frames(workers):
    rng = np.random.default_rng(9)
    frames = [_raw(rng, "uint32") for _ in range(11)]
    out, results = process_frames(_flatfield(dark_frames=3), _series(dtype="uint32"),
                                  [Frame(3, i, f) for i, f in enumerate(frames)], workers=workers)
    dark = np.mean(np.stack(frames[:3]).astype(np.float64), axis=0)
    for i, frame in enumerate(out):
        assert frame.results["flatfield"]["is_dark"] == (i < 3)
        if i < 3:
            assert not frame.mask.any() and frame.data.dtype == np.float32
            np.testing.assert_array_equal(frame.data, frames[i].astype(np.float32))
        else:
            np.testing.assert_array_equal(frame.data, correct(frames[i], dark=dark.astype(np.float32)))
    np.testing.assert_allclose(results["flatfield"]["dark"], dark, rtol=1e-7)


def test_live_dark_follows_the_arrival_order_not_the_workers():
    """Darks arriving late (after frames to correct) count from where they arrive, for any number of workers."""
    rng = np.random.default_rng(13)
    frames = {i: _raw(rng, "uint16") for i in range(12)}
    order = [0, 1, 4, 5, 2, 6, 7, 3, 8, 9, 10, 11]  # darks 2 and 3 arrive after frames 4 and 6
    runs = [process_frames(_flatfield(dark_frames=4), _series(), [Frame(3, i, frames[i]) for i in order],
                           workers=w) for w in (1, 2, 4)]
    for out, _ in runs[1:]:
        for a, b in zip(out, runs[0][0]):
            np.testing.assert_array_equal(a.data, b.data)
            np.testing.assert_array_equal(a.mask, b.mask)
    out = {frame.index: frame for frame in runs[0][0]}
    mean = lambda *i: np.mean([frames[k].astype(np.float64) for k in i], axis=0).astype(np.float32)  # noqa: E731
    for index, darks in ((4, (0, 1)), (5, (0, 1)), (6, (0, 1, 2)), (8, (0, 1, 2, 3)), (11, (0, 1, 2, 3))):
        np.testing.assert_array_equal(out[index].data, correct(frames[index], dark=mean(*darks)), err_msg=index)
    np.testing.assert_array_equal(runs[0][1]["flatfield"]["dark"], mean(0, 1, 2, 3))


def test_a_frame_with_no_dark_before_it_fails_and_the_series_goes_on():
    frames = [Frame(3, 4, np.ones(SHAPE, np.uint16)), Frame(3, 1, np.full(SHAPE, 10, np.uint16)),
              Frame(3, 5, np.full(SHAPE, 15, np.uint16))]
    out, _ = process_frames(_flatfield(dark_frames=4), _series(), frames, workers=2)
    assert isinstance(out[0], ValueError) and re.search(r"no dark frame \(index < 4\) arrived before frame 4",
                                                        str(out[0]))
    assert np.all(out[2].data == 5)


def test_dark_file_and_dark_frames_exclude_each_other():
    with pytest.raises(ValueError, match="not both"):
        FlatField.Params(dark=np.zeros(SHAPE), dark_frames=2)


def test_static_background_operator_masks_unusable_background():
    rng = np.random.default_rng(10)
    background = rng.uniform(50, 100, SHAPE)
    background[2, 2] = 0.0
    op = StaticBackground(StaticBackground.Params(background=background))
    series = _series(dtype="float32")
    op.start(series)
    assert not op.output_series(series).mask[2, 2]
    image = rng.uniform(0, 100, SHAPE).astype(np.float32)
    frame = op.process(Frame(3, 0, image))
    expect, valid = static_background(image, background.astype(np.float32))
    np.testing.assert_array_equal(frame.data, expect)
    np.testing.assert_array_equal(frame.mask, valid)
    with pytest.raises(ValueError, match="background file is required"):
        StaticBackground.Params()


def test_dynamic_background_operator_defaults_to_a_width_over_8_sigma():
    rng = np.random.default_rng(11)
    image = _raw(rng, "uint16", (48, 64))
    mask = rng.random(image.shape) > 0.1
    op = DynamicBackground()
    op.start(_series((48, 64), mask=mask))
    other = mask.copy()
    other[:10] = False  # e.g. hot pixels masked upstream: the cached normaliser no longer applies
    for frame_mask in (mask, other):
        frame = op.process(Frame(3, 0, image, mask=frame_mask))
        expect, valid = _scipy_background(image, 8.0, frame_mask)
        np.testing.assert_array_equal(frame.mask, valid)
        np.testing.assert_allclose(frame.data[valid], expect[valid], rtol=2e-6)


def test_config_reads_the_files_and_a_chain_corrects_then_bins(tmp_path, monkeypatch):
    for cls in (FlatField, Bin):
        monkeypatch.setitem(REGISTRY, cls.kind, cls)
    rng = np.random.default_rng(12)
    dark, flat, _ = _references(rng)
    np.save(tmp_path / "dark.npy", dark)
    np.save(tmp_path / "flat.npy", flat)
    cfg = parse({"operators": {"flatfield": {"dark": str(tmp_path / "dark.npy"), "flat": str(tmp_path / "flat.npy")},
                               "bin": {"k": 2, "reduce": "mean", "min_valid": 0.5}}})
    np.testing.assert_array_equal(cfg.operators[0].params.flat, flat)
    header = rng.random(SHAPE) > 0.1
    series = _series(mask=header)
    chain = Chain(cfg.operators)
    chain.start(series)
    assert chain.layout.output.shape == (18, 30) and chain.layout.output.dtype == "float32"
    image = _raw(rng, "uint16")
    frame = chain.process(Frame(3, 0, image))
    valid = np.empty(SHAPE, bool)
    corrected = correct(image, dark=dark, flat=flat.astype(np.float32), mask=header, mask_out=valid)
    expect, expect_valid = bin_frame(corrected, 2, valid, reduce="mean", min_valid=0.5)
    np.testing.assert_array_equal(frame.mask, expect_valid)
    np.testing.assert_allclose(frame.data, expect, rtol=1e-6)
    with pytest.raises(ConfigError, match="operators.flatfield: give a dark file or dark_frames, not both"):
        parse({"operators": {"flatfield": {"dark": str(tmp_path / "dark.npy"), "dark_frames": 5}}})


async def test_service_with_two_workers_masks_corrects_bins_and_saves(tmp_path, monkeypatch):
    for cls in (HotPixels, FlatField, Bin, Preview):
        monkeypatch.setitem(REGISTRY, cls.kind, cls)
    sim = DiffractionSimulator(shape=(64, 96), n_frames=24, n_spots=5, background=20.0, seed=4)
    cfg = config(tmp_path, pipeline={"workers": 2}, operators={
        "hot_pixels": {"window": 8, "fraction": 0.75}, "flatfield": {"dark_frames": 3},
        "bin": {"k": 2, "min_valid": 0.75}, "preview": {"k": 2}})
    async with running(cfg) as (service, sub):
        await asyncio.to_thread(stream_series, sim, cfg.source.endpoint)
        end = await sub.wait_for(lambda t, m: t == "series" and m["type"] == "end")
    assert end["processed"] == sim.n_frames and end["failed"] == 0
    with h5py.File(end["file"], "r") as f:
        rows = f["entry/livediff/frames"][:]
        dark = f["entry/livediff/reductions/flatfield/dark"][:]
        hot = f["entry/livediff/reductions/hot_pixels/hot"][:]
        preview = f["entry/livediff/reductions/preview/image"][:]
    assert list(rows["is_dark"]) == [1, 1, 1] + [0] * (sim.n_frames - 3)
    raw = np.stack([sim.frame(i) for i in range(3)]).astype(np.float64)
    np.testing.assert_allclose(dark, raw.mean(axis=0), rtol=1e-6)
    truth = np.zeros(sim.shape, bool)
    truth[tuple(np.array(sim.truth()["hot_pixels"]).T)] = True
    np.testing.assert_array_equal(hot.astype(bool), truth)
    assert rows["n_hot"][-1] == truth.sum() and preview.shape == (16, 24) and preview.max() == 255


async def test_counts_passed_on_are_saved_as_corrected_frames_with_their_raw_values(tmp_path):
    """``save_corrected`` after a flatfield with nothing to correct: the counts, exactly, in the float32 stack."""
    sim = DiffractionSimulator(shape=(40, 72), dtype="uint32", n_frames=5, n_spots=6, seed=12)
    cfg = config(tmp_path, pipeline={"workers": 2}, operators={"flatfield": {}},
                 output={"save_corrected": True, "save_raw": True})
    async with running(cfg) as (service, sub):
        await asyncio.to_thread(stream_series, sim, cfg.source.endpoint)
        end = await sub.wait_for(lambda t, m: t == "series" and m["type"] == "end")
    assert end["processed"] == sim.n_frames and end["failed"] == 0
    with h5py.File(end["file"], "r") as f:
        corrected = f["entry/livediff/corrected"][:]
    raw = np.stack([sim.frame(i) for i in range(sim.n_frames)])
    assert corrected.dtype == np.float32 and raw.max() < 2**24
    np.testing.assert_array_equal(corrected, raw.astype(np.float32))
