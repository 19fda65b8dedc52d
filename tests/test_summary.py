"""The per-frame summary kernel against plain numpy."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from livediff.model import Frame, SeriesStart
from livediff.operators.summary import Summary, summarise
from livediff.sources import codecs


@pytest.mark.parametrize("dtype", ["uint16", "uint32", "float32"])
def test_summary_matches_numpy_over_valid_pixels(dtype):
    rng = np.random.default_rng(5)
    image = (1e4 + rng.poisson(50, (37, 61))).astype(dtype)
    image[3, 4] = np.iinfo(dtype).max if dtype != "float32" else 1e30
    mask = rng.random(image.shape) > 0.3
    image.setflags(write=False)
    got = summarise(image, mask, saturation=10060)
    valid = image[mask].astype(np.float64)
    assert got["sum"] == valid.sum()
    assert got["n_valid"] == mask.sum()
    assert got["max"] == valid.max()
    assert got["mean"] == pytest.approx(valid.mean(), rel=1e-12)
    assert got["n_saturated"] == (valid >= 10060).sum()


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "int16", "int32"])
@pytest.mark.parametrize("top_invalid", [True, False])
def test_every_saturation_and_marker_rule_matches_numpy(dtype, top_invalid):
    """Unsigned frames take their own kernel (tests in the pixels' width): it must give numpy's
    answer for any saturation level (fractional, beyond the dtype, negative, infinite, NaN)."""
    rng = np.random.default_rng(6)
    info = np.iinfo(dtype)
    image = rng.integers(max(info.min, -300), info.max, (23, 71), dtype=dtype, endpoint=True)
    image[rng.random(image.shape) < 0.05] = info.max
    mask = rng.random(image.shape) > 0.2
    valid = mask & (image < info.max) if top_invalid else mask
    values = image[valid].astype(np.float64)
    for saturation in (None, 100.5, 150.0, float(info.max) * 8, -5.0, np.inf, -np.inf, np.nan):
        got = summarise(image, mask, saturation=saturation, top_invalid=top_invalid)
        level = info.max if saturation is None else saturation
        assert got["sum"] == values.sum() and got["n_valid"] == valid.sum() and got["max"] == values.max()
        assert got["n_saturated"] == (values >= level).sum(), saturation


def test_rows_longer_than_a_32_bit_span_add_up_exactly():
    """The unsigned kernel sums the low and high 16 bits of a row's pixels in 32 bits, 65536
    pixels at a time: rows longer than that, of values near the top, still add up exactly."""
    rng = np.random.default_rng(8)
    image = rng.integers(2**32 - 2**20, 2**32 - 2, (3, 70001), dtype=np.uint32, endpoint=True)
    mask = rng.random(image.shape) > 0.01
    got = summarise(image, mask, saturation=2**32 - 1000)
    values = image[mask].astype(np.int64)  # exact: the sum is below 2**53
    assert got["sum"] == values.sum()
    assert (got["n_valid"], got["max"]) == (mask.sum(), values.max())
    assert got["n_saturated"] == (values >= 2**32 - 1000).sum() > 0


def test_top_of_an_integer_dtype_is_a_gap_marker_not_a_count():
    image = np.array([[65535, 65534], [0, 65535]], dtype=np.uint16)
    got = summarise(image)
    assert (got["sum"], got["max"], got["n_valid"], got["n_saturated"]) == (65534, 65534, 2, 0)
    assert summarise(image, saturation=65534)["n_saturated"] == 1
    before = summarise(image, top_invalid=False)   # the top as a count, saturated by default
    assert (before["sum"], before["n_valid"], before["n_saturated"]) == (3 * 65535 - 1, 4, 2)
    as_float = summarise(image.astype("f4"))
    assert as_float["n_valid"] == 4 and as_float["n_saturated"] == 0
    assert summarise(np.array([[2**31 - 1, 5]], np.int32))["sum"] == 5


def test_real_eiger_frame_sums_its_counts_not_its_gap_markers():
    blob = (Path(__file__).parent / "data" / "stream1_frame_bs16-lz4.bin").read_bytes()
    frame = codecs.decode(blob, "bslz4", (4362, 4148), "uint16")   # no header mask: gaps only marked 65535
    got = summarise(frame)
    assert got["sum"] == 9_876 and got["n_valid"] == frame.size - 1_253_074 and got["max"] < 65535


def test_fully_masked_frame_gives_nan_not_an_error():
    got = summarise(np.ones((3, 4), "u2"), np.zeros((3, 4), bool))
    assert got["n_valid"] == 0 and np.isnan(got["mean"]) and np.isnan(got["max"]) and got["sum"] == 0


def test_mask_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"mask shape \(3, 3\) != image shape \(3, 4\)"):
        summarise(np.ones((3, 4)), np.ones((3, 3), bool))


def test_operator_uses_the_frame_mask_and_the_series_saturation():
    mask = np.ones((4, 5), bool)
    mask[0] = False
    op = Summary()
    op.start(SeriesStart(1, (4, 5), "uint16", mask=mask, saturation=100))
    data = np.full((4, 5), 100, np.uint16)
    out = op.process(Frame(1, 0, data, mask=mask)).results["summary"]
    assert out["n_valid"] == 15 and out["n_saturated"] == 15 and out["sum"] == 1500
    assert set(op.columns) == set(out)


def test_valid_is_the_frame_mask_or_one_shared_read_only_all_true_mask():
    op = Summary()
    op.start(SeriesStart(1, (37, 61), "uint32"))
    data = np.random.default_rng(9).integers(0, 2**32 - 1, (37, 61), dtype=np.uint32)
    mask = np.random.default_rng(10).random((37, 61)) > 0.5
    assert op.valid(Frame(1, 0, data, mask=mask)) is mask
    everything = op.valid(Frame(1, 1, data))
    assert everything.shape == (37, 61) and everything.all() and not everything.flags.writeable
    assert op.valid(Frame(1, 2, data)) is everything
    out = op.process(Frame(1, 3, data)).results["summary"]
    assert out["n_valid"] == data.size and out["sum"] == data.sum(dtype=np.float64) and out["max"] == data.max()


def test_negative_integer_pixels_give_the_true_maximum():
    image = np.array([[-7, -3], [-9, -2]], dtype=np.int32)
    mask = np.array([[True, True], [True, False]])
    got = summarise(image, mask)
    assert got["max"] == -3 and got["sum"] == -19 and got["n_valid"] == 3
