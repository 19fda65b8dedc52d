"""Binning (values, mask, geometry) and display conversion against numpy references."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from livediff.model import Frame, Geometry, SeriesStart
from livediff.operators.bin import Bin, BinParams, bin_frame, bin_geometry, binned_shape
from livediff.operators.preview import Preview, to_display


def _numpy_bin(image, k, mask, reduce, min_valid):
    rows, cols = image.shape[0] // k, image.shape[1] // k
    blocks = (rows, k, cols, k)
    x = image[: rows * k, : cols * k].astype(np.float64).reshape(blocks)
    m = mask[: rows * k, : cols * k].reshape(blocks)
    total = np.where(m, x, 0.0).sum(axis=(1, 3))
    n = m.sum(axis=(1, 3))
    valid = n >= np.ceil(min_valid * k * k - 1e-9)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = total / n if reduce == "mean" else total * (k * k) / n
    return np.where(valid, value, 0.0).astype(np.float32), valid


@pytest.mark.parametrize("dtype", ["uint16", "uint32", "float32"])
@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("reduce,min_valid", [("sum", 1.0), ("sum", 0.5), ("mean", 0.3)])
def test_bin_frame_equals_numpy_reshape_with_mask(dtype, k, reduce, min_valid):
    rng = np.random.default_rng(k)
    offset = 4e9 if dtype == "uint32" else 1e4
    image = (offset + rng.poisson(50, (37, 61))).astype(dtype)  # 37, 61: no k > 1 divides both
    mask = rng.random(image.shape) > 0.03
    mask[10:21, 20:36] = False  # holds a whole block for every k
    image.setflags(write=False)
    mask.setflags(write=False)
    got, valid = bin_frame(image, k, mask, reduce=reduce, min_valid=min_valid)
    expect, expect_valid = _numpy_bin(image, k, mask, reduce, min_valid)
    assert got.shape == (37 // k, 61 // k) and got.dtype == np.float32
    np.testing.assert_array_equal(valid, expect_valid)
    np.testing.assert_allclose(got, expect, rtol=1e-7)
    if k > 1:
        assert 0 < valid.sum() < valid.size


def test_bin_without_mask_is_the_plain_sum_and_never_overflows():
    image = np.full((4, 6), 2**32 - 1, np.uint32)
    got, valid = bin_frame(image, 2)
    assert valid.all() and np.all(got == np.float32(4 * (2**32 - 1)))


def test_bin_frame_rejects_bad_arguments():
    image = np.ones((6, 8), np.uint16)
    with pytest.raises(ValueError, match="k = 7 is larger than the image"):
        bin_frame(image, 7)
    with pytest.raises(ValueError, match="reduce must be 'sum' or 'mean', got 'max'"):
        bin_frame(image, 2, reduce="max")
    with pytest.raises(ValueError, match=r"min_valid must be in \(0, 1\], got 0"):
        bin_frame(image, 2, min_valid=0)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_binned_geometry_keeps_a_blob_centre_where_the_data_puts_it(k):
    rows, cols = 60, 84
    center = (23.3, 51.8)
    rr, cc = np.indices((rows, cols))
    image = np.exp(-((rr - center[0]) ** 2 + (cc - center[1]) ** 2) / (2 * 4.0**2))
    binned, _ = bin_frame(image, k)
    got = ndimage.center_of_mass(binned.astype(np.float64))
    geometry = bin_geometry(Geometry(beam_center=center, pixel_size=(75e-6, 55e-6), distance=0.1), k)
    np.testing.assert_allclose(geometry.beam_center, got, atol=1e-3)
    assert geometry.pixel_size == (75e-6 * k, 55e-6 * k) and geometry.distance == 0.1


def test_bin_operator_changes_the_series_the_next_operator_sees():
    rng = np.random.default_rng(3)
    mask = rng.random((37, 61)) > 0.1
    series = SeriesStart(1, (37, 61), "uint16", mask=mask, saturation=1000,
                         geometry=Geometry(beam_center=(17.0, 30.0), pixel_size=(75e-6, 75e-6)))
    op = Bin(Bin.Params(k=3, reduce="mean", min_valid=0.5))
    op.start(series)
    out = op.output_series(series)
    assert out.shape == (12, 20) and out.dtype == "float32" and out.saturation is None
    assert out.geometry.beam_center == pytest.approx((17.5 / 3 - 0.5, 30.5 / 3 - 0.5))
    image = rng.integers(0, 1000, (37, 61)).astype(np.uint16)
    frame = op.process(Frame(1, 0, image, mask=mask))
    expect, valid = _numpy_bin(image, 3, mask, "mean", 0.5)
    np.testing.assert_array_equal(out.mask, valid)
    np.testing.assert_array_equal(frame.mask, valid)
    np.testing.assert_allclose(frame.data, expect, rtol=1e-7)


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_to_display_stretches_between_percentiles_of_valid_pixels(dtype):
    rng = np.random.default_rng(4)
    image = rng.normal(100, 20, (37, 61)).astype(np.float32)
    mask = rng.random(image.shape) > 0.2
    image[~mask] = 1e9  # would wreck the percentiles if it leaked
    image[0, 0] = np.nan
    mask[0, 0] = True
    got = to_display(image, mask, percentiles=(2.0, 98.0), dtype=dtype)
    use = mask & np.isfinite(image)
    lo, hi = np.percentile(image[use].astype(np.float64), [2.0, 98.0])
    top = np.iinfo(dtype).max
    expect = np.rint(np.clip((image.astype(np.float64) - lo) / (hi - lo), 0, 1) * top)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got[use], expect[use].astype(dtype))
    assert np.all(got[~use] == 0) and got[use].max() == top


def test_to_display_of_a_flat_or_empty_frame_is_black():
    assert not to_display(np.full((4, 4), 7.0)).any()
    assert not to_display(np.ones((4, 4)), np.zeros((4, 4), bool)).any()


def test_preview_snapshots_the_latest_frame_and_merges_by_index():
    series = SeriesStart(1, (16, 24), "float32")
    a, b = Preview(Preview.Params(k=2)), Preview(Preview.Params(k=2))
    for op in (a, b):
        op.start(series)
    assert a.snapshot() == {} and a.reductions == {"image": ((8, 12), "uint8")}
    ramp = np.add.outer(np.arange(16.0), np.arange(24.0)).astype(np.float32)
    a.process(Frame(1, 5, ramp))
    b.process(Frame(1, 3, -ramp))
    b.merge(a.state())
    binned, _ = bin_frame(ramp, 2, reduce="mean")
    np.testing.assert_array_equal(b.snapshot()["image"], to_display(binned))
    empty = Preview()
    empty.start(series)
    a.merge(empty.state())
    np.testing.assert_array_equal(a.snapshot()["image"], to_display(binned))


def test_preview_blocks_show_the_mean_of_their_valid_pixels():
    data = np.arange(16.0, dtype=np.float32).reshape(4, 4)
    mask = np.ones((4, 4), bool)
    mask[:2, :2] = False  # block (0, 0): nothing valid -> 0
    mask[2, 2] = False    # block (1, 1): mean of 11, 14, 15
    data[~mask] = 1e6
    op = Preview(Preview.Params(k=2, percentiles=(0.0, 100.0)))
    op.start(SeriesStart(1, (4, 4), "float32"))
    op.process(Frame(1, 0, data, mask=mask))
    means = np.array([[np.nan, (2 + 3 + 6 + 7) / 4], [(8 + 9 + 12 + 13) / 4, (11 + 14 + 15) / 3]])
    lo, hi = np.nanmin(means), np.nanmax(means)
    expect = np.nan_to_num(np.rint(255 * (means - lo) / (hi - lo)), nan=0.0)
    np.testing.assert_array_equal(op.snapshot()["image"], expect.astype(np.uint8))


def test_binned_shape_crops_to_whole_blocks_and_names_k_and_the_frame():
    assert binned_shape((37, 61), 4) == (9, 15) and binned_shape((37, 61), 37) == (1, 1)
    with pytest.raises(ValueError, match=r"^k = 38 is larger than the image \(37, 61\)$"):
        binned_shape((37, 61), 38)
    with pytest.raises(ValueError, match=r"^bin: k = 40 is larger than the frame \(37, 61\)$"):
        Bin(BinParams(k=40)).start(SeriesStart(1, (37, 61), "uint16"))
    op = Bin(BinParams(k=4))
    op.start(SeriesStart(1, (37, 61), "uint16"))
    assert op.output_series(SeriesStart(1, (37, 61), "uint16")).shape == (9, 15)

