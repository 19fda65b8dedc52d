"""Geometry maths (radius, 2θ, q, d, the override rule) against brute-force references written here."""
from __future__ import annotations

import math

import numpy as np
import pytest

from livediff.model import Geometry, SeriesStart, electron_wavelength
from livediff.operators import azimuthal
from livediff.operators.azimuthal import Azimuthal, AzimuthalParams

SHAPE = (23, 37)                                   # non-square frame
HEADER = Geometry(beam_center=(7.3, 25.6), pixel_size=(172e-6, 75e-6), distance=0.012, wavelength=0.9537)


def reference(geometry, shape):
    """Per pixel, in plain Python: 2θ (degrees), q (1/Å) and d (Å) from the wave vectors.

    The pixel-centre origin puts pixel (r, c) at ((r - r0) p_y, (c - c0) p_x, L) in the lab frame (m)
    with the beam along z; q = |k_out - k_in| with |k| = 2π/λ and d = 2π/q (Bragg).
    """
    (r0, c0), (py, px), dist, lam = geometry.beam_center, geometry.pixel_size, geometry.distance, geometry.wavelength
    radius, two_theta, q, d = (np.empty(shape) for _ in range(4))
    k = 2 * math.pi / lam
    for r in range(shape[0]):
        for c in range(shape[1]):
            y, x = (r - r0) * py, (c - c0) * px
            norm = math.sqrt(x * x + y * y + dist * dist)
            kout = (k * x / norm, k * y / norm, k * dist / norm)
            q[r, c] = math.sqrt(kout[0] ** 2 + kout[1] ** 2 + (kout[2] - k) ** 2)
            cross = math.sqrt((kout[1] * k) ** 2 + (kout[0] * k) ** 2)       # |k_in x k_out|, k_in = (0, 0, k)
            two_theta[r, c] = math.degrees(math.atan2(cross, kout[2] * k))   # angle between k_in and k_out
            radius[r, c] = math.sqrt((r - r0) ** 2 + (c - c0) ** 2)
            d[r, c] = 2 * math.pi / q[r, c] if q[r, c] > 0 else math.inf
    return radius, two_theta, q, d


@pytest.mark.parametrize("positions", ["ogrid", "indices"])
def test_positions_match_the_wave_vector_reference_on_non_square_pixels(positions):
    rows, cols = np.ogrid[: SHAPE[0], : SHAPE[1]] if positions == "ogrid" else np.indices(SHAPE)
    radius, two_theta, q, d = reference(HEADER, SHAPE)
    for name, ref in (("radius", radius), ("two_theta", two_theta), ("q", q), ("d", d)):
        got = getattr(HEADER, name)(rows, cols)
        assert got.dtype == np.float64 and got.shape == SHAPE, name
        np.testing.assert_allclose(got, ref, rtol=1e-12, err_msg=name)
    (r0, c0), (py, px) = HEADER.beam_center, HEADER.pixel_size
    rr, cc = np.indices(SHAPE)
    np.testing.assert_allclose(HEADER.radius_m(rows, cols), np.sqrt(((rr - r0) * py) ** 2 + ((cc - c0) * px) ** 2),
                               rtol=1e-14)


def test_scattered_spots_take_arbitrary_positions():
    rows, cols = np.array([0.0, 7.3, 12.75, -3.5]), np.array([0.0, 25.6, 30.25, 40.0])
    q, d = HEADER.q(rows, cols), HEADER.d(rows, cols)
    assert q[1] == 0 and d[1] == np.inf                                    # the beam centre itself
    lam, dist = HEADER.wavelength, HEADER.distance
    for i in (0, 2, 3):
        y, x = (rows[i] - 7.3) * 172e-6, (cols[i] - 25.6) * 75e-6
        theta = math.atan(math.hypot(x, y) / dist) / 2
        assert d[i] == pytest.approx(lam / (2 * math.sin(theta)), rel=1e-13)   # Bragg: λ = 2 d sin θ
        assert q[i] == pytest.approx(4 * math.pi * math.sin(theta) / lam, rel=1e-13)


def test_pixel_centre_origin():
    g = Geometry(beam_center=(5.0, 9.0), pixel_size=(100e-6, 50e-6), distance=0.1, wavelength=1.0)
    assert g.radius(5, 9) == 0 and g.q(5, 9) == 0 and g.two_theta(5, 9) == 0 and g.d(5, 9) == math.inf
    assert g.radius(6, 9) == 1 and g.radius(5, 8) == 1 and g.radius(8, 13) == 5
    assert g.radius_m(6, 9) == pytest.approx(100e-6) and g.radius_m(5, 10) == pytest.approx(50e-6)
    corner = Geometry(beam_center=(4.5, 8.5))        # the beam on the corner shared by four pixels
    np.testing.assert_allclose(corner.radius(*np.ogrid[4:6, 8:10]), np.full((2, 2), math.sqrt(0.5)), rtol=1e-15)
    square = Geometry(beam_center=(5.0, 9.0), pixel_size=(75e-6, 75e-6), distance=0.1, wavelength=1.0)
    assert square.d_at_radius(0.0) == math.inf and square.q_at_radius(0.0) == 0


def test_radius_form_equals_the_position_form_for_square_pixels():
    g = HEADER.with_overrides(pixel_size=75e-6)
    rows, cols = np.ogrid[: SHAPE[0], : SHAPE[1]]
    radius = g.radius(rows, cols)
    np.testing.assert_allclose(g.q_at_radius(radius), g.q(rows, cols), rtol=1e-14)
    np.testing.assert_allclose(g.d_at_radius(radius), g.d(rows, cols), rtol=1e-14)
    np.testing.assert_allclose(g.two_theta_at_radius(radius), g.two_theta(rows, cols), rtol=1e-14)
    _, two_theta, q, d = reference(g, SHAPE)
    np.testing.assert_allclose(g.q_at_radius(radius), q, rtol=1e-12)
    np.testing.assert_allclose(g.two_theta_at_radius(radius), two_theta, rtol=1e-12)
    r = np.array([0.5, 3.0, 100.0])                                           # bin-centre radii
    np.testing.assert_allclose(g.q_at_radius(r), 4 * np.pi * np.sin(np.arctan(r * 75e-6 / g.distance) / 2)
                               / g.wavelength, rtol=1e-15)


def test_q_times_d_is_two_pi():
    rows, cols = np.indices(SHAPE)
    finite = (rows != 7) | (cols != 25)
    np.testing.assert_allclose((HEADER.q(rows, cols) * HEADER.d(rows, cols))[finite], 2 * np.pi, rtol=1e-14)
    g = HEADER.with_overrides(pixel_size=75e-6)
    r = np.linspace(0.25, 400.0, 97)
    np.testing.assert_allclose(g.q_at_radius(r) * g.d_at_radius(r), 2 * np.pi, rtol=1e-14)


def test_radius_form_needs_square_pixels():
    with pytest.raises(ValueError, match=r"pixels are not square, \(y, x\) = \(0.000172, 7.5e-05\) m"):
        HEADER.q_at_radius([1.0, 2.0])
    with pytest.raises(ValueError, match="not square"):
        HEADER.d_at_radius(1.0)
    nearly = HEADER.with_overrides(pixel_size=(75e-6, 75e-6 * (1 + 1e-8)))
    assert nearly.square_pixel_size() == 75e-6 and nearly.q_at_radius(10.0) > 0


@pytest.mark.parametrize("geometry, call, missing", [
    (Geometry(), lambda g: g.q(0, 0), "beam_center, pixel_size, distance, wavelength"),
    (Geometry(beam_center=(1, 1), pixel_size=(1e-4, 1e-4)), lambda g: g.d([0], [0]), "distance, wavelength"),
    (Geometry(pixel_size=(1e-4, 1e-4), distance=0.1, wavelength=1.0), lambda g: g.two_theta(0, 0), "beam_center"),
    (Geometry(beam_center=(1, 1), wavelength=1.0), lambda g: g.q_at_radius(3.0), "pixel_size, distance"),
    (Geometry(pixel_size=(1e-4, 1e-4), distance=0.1), lambda g: g.d_at_radius(3.0), "wavelength"),
    (Geometry(pixel_size=(1e-4, 1e-4)), lambda g: g.radius(0, 0), "beam_center"),
    (Geometry(beam_center=(1, 1)), lambda g: g.radius_m(0, 0), "pixel_size"),
])
def test_a_missing_field_is_named(geometry, call, missing):
    with pytest.raises(ValueError, match=f"missing: {missing} \\(give them in the config or the series header\\)"):
        call(geometry)


def test_missing_lists_the_none_fields():
    assert Geometry().missing() == ("beam_center", "pixel_size", "distance", "wavelength")
    assert HEADER.missing() == ()
    assert Geometry(distance=0.1).missing(*Geometry.SCALE_FIELDS) == ("pixel_size", "wavelength")
    assert Geometry(beam_center=(1.0, 2.0)).radius(1, 2) == 0                  # the radius needs nothing else
    with pytest.raises(ValueError, match="not geometry fields: center"):
        HEADER.missing("center")


def test_overrides_replace_the_header_field_by_field():
    assert HEADER.with_overrides() == HEADER
    assert HEADER.with_overrides(distance=0.5) == Geometry((7.3, 25.6), (172e-6, 75e-6), 0.5, 0.9537)
    assert HEADER.with_overrides(wavelength=0.025, beam_center=[1, 2]) == Geometry((1.0, 2.0), (172e-6, 75e-6),
                                                                                   0.012, 0.025)
    assert HEADER.with_overrides(pixel_size=50e-6).pixel_size == (50e-6, 50e-6)      # one number: square
    assert HEADER.with_overrides(pixel_size=(1e-4, 2e-4)).pixel_size == (1e-4, 2e-4)
    assert Geometry().with_overrides(distance=1, wavelength=2) == Geometry(distance=1.0, wavelength=2.0)
    assert HEADER == Geometry((7.3, 25.6), (172e-6, 75e-6), 0.012, 0.9537)          # unchanged
    with pytest.raises(ValueError, match=r"beam_center must be two numbers .*\(1.0, 2.0, 3.0\)"):
        HEADER.with_overrides(beam_center=(1.0, 2.0, 3.0))


def test_electron_wavelength_lives_in_the_model_and_stays_importable_from_azimuthal():
    assert azimuthal.electron_wavelength is electron_wavelength
    assert electron_wavelength(200.0) == pytest.approx(0.025079, abs=2e-6)
    with pytest.raises(ValueError, match="must be > 0 kV, got 0"):
        electron_wavelength(0)


def test_azimuthal_takes_its_geometry_by_the_override_rule():
    header = HEADER.with_overrides(pixel_size=75e-6)
    series = SeriesStart(1, SHAPE, "uint16", geometry=header)
    op = Azimuthal(AzimuthalParams(distance=0.05, center=(10.0, 11.5), bin_width=0.5))
    op.start(series)
    assert op.map.center == (10.0, 11.5)
    r = op.map.radius
    np.testing.assert_array_equal(op.snapshot()["q"], 4 * np.pi * np.sin(np.arctan(r * 75e-6 / 0.05) / 2) / 0.9537)
    op = Azimuthal(AzimuthalParams(voltage_kv=300.0))
    op.start(series)
    assert op.map.center == header.beam_center
    electrons = header.with_overrides(wavelength=electron_wavelength(300.0))
    np.testing.assert_array_equal(op.snapshot()["q"], electrons.q_at_radius(op.map.radius))


def test_azimuthal_without_a_q_scale_needs_no_square_pixels():
    op = Azimuthal()
    op.start(SeriesStart(1, SHAPE, "uint16", geometry=Geometry(beam_center=(4.0, 4.0), pixel_size=(75e-6, 55e-6))))
    assert "q" not in op.reductions
    with pytest.raises(ValueError, match="azimuthal: geometry: pixels are not square.*set operators.azimuthal.pixel_"):
        op.start(SeriesStart(1, SHAPE, "uint16", geometry=HEADER))
    op = Azimuthal(AzimuthalParams(pixel_size=75e-6))
    op.start(SeriesStart(1, SHAPE, "uint16", geometry=HEADER))
    assert "q" in op.reductions
