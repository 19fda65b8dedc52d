"""Recorded data -> arrays and frames: reference arrays named in configs, recorded series."""
