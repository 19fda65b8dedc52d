"""EBSD pattern processing: background, neighbour averaging, pattern quality (kikuchipy's definitions).

Kernels: :func:`~.kernels.rescale`, :func:`~.kernels.image_quality`, :func:`~.kernels.unit_pattern`,
:func:`~.neighbours.window`, :func:`~.neighbours.average_neighbour_patterns`,
:func:`~.neighbours.neighbour_dot_products` and the incremental
:class:`~.neighbours.Neighbourhood`; the static and dynamic background kernels are
:func:`livediff.operators.dynamic_background.remove_background` and
:func:`~livediff.operators.dynamic_background.dynamic_background` (``window="kikuchipy"``).
Operators (:mod:`.operators`): ``ebsd_static``, ``rescale``, ``ebsd_average``, ``ebsd_quality``.
"""
from .kernels import QualityWeights, image_quality, quality_weights, rescale, unit_pattern
from .neighbours import Neighbourhood, average_neighbour_patterns, neighbour_dot_products, window
from .operators import EbsdAverage, EbsdQuality, EbsdStatic, Rescale

__all__ = ["EbsdAverage", "EbsdQuality", "EbsdStatic", "Neighbourhood", "QualityWeights", "Rescale",
           "average_neighbour_patterns", "image_quality", "neighbour_dot_products", "quality_weights", "rescale",
           "unit_pattern", "window"]
