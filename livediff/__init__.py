"""livediff: a live streaming acquisition processor for detector frames."""
__version__ = "0.1.0"
