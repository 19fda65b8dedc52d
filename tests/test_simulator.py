"""The simulator's frames agree with its own ground truth."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from livediff.operators.azimuthal import electron_wavelength
from simulators import DiffractionSimulator
from simulators.powder import de_broglie_wavelength


def test_frames_are_reproducible_and_typed():
    a, b = DiffractionSimulator(seed=4, dtype="uint32"), DiffractionSimulator(seed=4, dtype="uint32")
    np.testing.assert_array_equal(a.frame(7), b.frame(7))
    assert a.frame(7).dtype == np.uint32 and a.frame(7).shape == (256, 320)
    assert not np.array_equal(a.frame(7), a.frame(8))


def test_spot_centroids_in_expected_image_match_truth():
    sim = DiffractionSimulator(shape=(120, 150), n_spots=10, background=0.0, beamstop=False, seed=2)
    image = sim.expected(0)
    truth = sim.spots(0)
    for r, c, total in zip(truth["row"], truth["col"], truth["intensity"]):
        r0, c0 = int(round(r)), int(round(c))
        patch = image[r0 - 4: r0 + 5, c0 - 4: c0 + 5]
        cy, cx = ndimage.center_of_mass(patch)
        assert cy + r0 - 4 == pytest.approx(r, abs=0.01) and cx + c0 - 4 == pytest.approx(c, abs=0.01)
        assert patch.sum() == pytest.approx(total, rel=1e-3)


def test_defects_gaps_and_beamstop():
    sim = DiffractionSimulator(shape=(128, 160), seed=1, background=50.0)
    frame, mask, truth = sim.frame(0), sim.detector_mask, sim.truth()
    assert (frame[~mask & (frame == sim.top)].size > 0) and np.all(frame[sim._derived["gap"]] == sim.top)
    for r, c in truth["dead_pixels"]:
        assert frame[r, c] == 0 and not mask[r, c]
    for r, c in truth["hot_pixels"]:
        assert frame[r, c] >= 2000 and mask[r, c]
    shadow = sim.beamstop_mask & mask
    assert frame[shadow].mean() < 0.1 * frame[~sim.beamstop_mask & mask & (frame < 2000)].mean()


def test_fixed_pattern_drifts_as_a_whole(tmp_path):
    sim = DiffractionSimulator(n_frames=5, pattern="fixed", drift=1.5, seed=3)
    s0, s4 = sim.spots(0), sim.spots(4)
    dy, dx = sim.drift_at(4)
    assert (dy, dx) != (0.0, 0.0)
    np.testing.assert_allclose(s4["row"] - s0["row"], dy)
    np.testing.assert_allclose(s4["col"] - s0["col"], dx)
    sim.write_truth(tmp_path / "t.json")
    truth = json.loads((tmp_path / "t.json").read_text())
    assert len(truth["spots"]["row"]) == 5 * len(s0["row"]) and truth["drift"][4] == [dy, dx]


def test_invalid_parameters_are_refused():
    with pytest.raises(ValueError, match="dtype must be 'uint16' or 'uint32', got 'int8'"):
        DiffractionSimulator(dtype="int8")
    with pytest.raises(IndexError, match="frame 10 is outside the series of 10"):
        DiffractionSimulator(n_frames=10).frame(10)


@pytest.mark.parametrize(("voltage_kv", "published"), [(60.0, 0.04866), (100.0, 0.03701), (200.0, 0.02508),
                                                      (300.0, 0.01969)])
def test_powder_wavelength_agrees_with_the_operators_and_published_values(voltage_kv, published):
    """The simulator's wavelength is its own; it cross-checks the azimuthal operator's."""
    assert de_broglie_wavelength(voltage_kv) == pytest.approx(published, abs=5e-6)
    assert de_broglie_wavelength(voltage_kv) == pytest.approx(electron_wavelength(voltage_kv), rel=1e-12)


def test_powder_wavelength_rejects_a_voltage_that_is_not_positive():
    with pytest.raises(ValueError, match="voltage_kv must be > 0, got 0"):
        de_broglie_wavelength(0.0)
