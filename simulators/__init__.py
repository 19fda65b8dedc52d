"""Frame simulators with known ground truth, and stream emitters for every protocol."""
from .diffraction import DiffractionSimulator
from .stream import ENCODERS, stream_series

__all__ = ["DiffractionSimulator", "ENCODERS", "stream_series"]
