"""Frame simulators with known ground truth: MX spots, powder rings, rotation series.

They build on :mod:`livediff.model`; the encoders and the sender that stream their frames
live in :mod:`livediff.sources` (:mod:`livediff.sources.sender`).
"""
from .diffraction import DiffractionSimulator

__all__ = ["DiffractionSimulator"]
