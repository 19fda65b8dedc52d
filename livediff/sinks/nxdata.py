"""Plottable results: NXdata groups, their axes and units, and the ``@default`` chain viewers follow.

Every group of results in a series file is an NXdata group (NeXus ``NXdata``; read by
silx, h5web, NeXpy): ``@signal`` names its main dataset, ``@auxiliary_signals`` the others
of the same shape, ``@axes`` one name per dimension (``"."`` for none), each axis a child
dataset with ``@units``.  Which name is an axis, and the units of every value livediff
writes, are decided here and nowhere else:

- axes of reductions and per-frame arrays, by name: ``q`` (1/angstrom, q = 2π/d),
  ``two_theta`` (degree), ``radius`` (pixel), ``d`` (angstrom), in that order of
  preference (so a powder profile plots against q when the geometry gives it); images of
  the frame's shape get ``y`` and ``x`` pixel axes; per-frame stacks get ``frame``;
- scan maps get ``scan_y`` and ``scan_x``: position index x scan step, in the scan's unit;
- per-frame values (``/entry/livediff/per_frame``): :data:`UNITS` by column name, times
  (``*_s``, ``timestamp``, ``received``) in s.

The ``@default`` chain goes from the root, through one child group per level, to the
most useful plot (:func:`default_target`): a scan map, else I(q) (or I(r)), else the
running mean, else the first reduction, else the raw frames, else the per-frame values.
"""
from __future__ import annotations

from collections.abc import Mapping

import h5py
import numpy as np

#: axis names (1-D results) and their units, in order of preference for a dimension
AXES = {"q": "1/angstrom", "two_theta": "degree", "radius": "pixel", "d": "angstrom"}

#: units of per-frame values and result names; names ending in ``_s`` are in s
UNITS = {"timestamp": "s", "received": "s", "shift_y": "pixel", "shift_x": "pixel", "x": "pixel", "y": "pixel",
         "com_dy": "pixel", "com_dx": "pixel", "com_magnitude": "pixel", "d": "angstrom", "q": "1/angstrom",
         "radius": "pixel", "two_theta": "degree", "d_min": "angstrom", "center": "pixel", "frame": None}


def units_of(name: str) -> str | None:
    """The units of a value called ``name`` (its last dotted part), or None (counts, ratios, flags)."""
    key = name.rsplit(".", 1)[-1]
    if key.endswith("_s"):
        return "s"
    return UNITS.get(key)


def nxdata(group: h5py.Group, signal: str, axes: list[str], *, auxiliary: list[str] = (),
           image: bool = False) -> None:
    """Mark ``group`` as NXdata with ``signal``, ``axes`` (one per dimension, "." = none), and
    ``auxiliary`` signals; ``image`` sets ``@interpretation`` on the signal (a stack of images)."""
    group.attrs["NX_class"] = "NXdata"
    group.attrs["signal"] = signal
    group.attrs["axes"] = np.array(axes, dtype=h5py.string_dtype())
    if auxiliary:
        group.attrs["auxiliary_signals"] = np.array(list(auxiliary), dtype=h5py.string_dtype())
    if image:
        group[signal].attrs["interpretation"] = "image"
    for name in (signal, *auxiliary):
        group[name].attrs["long_name"] = name
        if units_of(name):
            group[name].attrs["units"] = units_of(name)


def axis(group: h5py.Group, name: str, values: np.ndarray | None = None, *, units: str | None = None,
         link: h5py.Dataset | None = None) -> None:
    """Add axis dataset ``name`` to ``group``: ``values``, or a hard link to ``link`` (written later)."""
    if name in group:
        return
    if link is not None:
        group[name] = link
        link.attrs["target"] = link.name   # NeXus: the original of a linked field names itself
    else:
        group[name] = values
    if units:
        group[name].attrs["units"] = units


def plot_results(group: h5py.Group, declared: Mapping[str, tuple[tuple[int, ...], str]], frame_shape: tuple[int, int],
                 *, leading: str | None = None, axis_links: Mapping[str, h5py.Dataset] | None = None) -> bool:
    """Make ``group`` (holding the ``declared`` {name: (shape, dtype)} datasets of one operator) an NXdata.

    The first declared name that is not an axis is the signal, the others of its shape are
    auxiliary signals; each dimension takes the first matching axis of :data:`AXES` (declared
    here, or in ``axis_links`` to be hard-linked in, other matches become alternative axes
    with ``NAME_indices``), or pixel axes ``y``, ``x`` for an image of the frame's shape.
    ``leading``: the name of a per-frame axis dataset already in ``group`` before those dimensions.

    Returns
    -------
    bool : False when there is nothing to plot (only axes declared).
    """
    candidates = {n: decl[0] for n, decl in declared.items() if n in AXES and len(decl[0]) == 1}
    for name, ds in (axis_links or {}).items():
        candidates.setdefault(name, ds.shape)
    signals = [n for n in declared if n not in candidates]
    if not signals:
        return False
    signal = signals[0]
    shape = tuple(declared[signal][0])
    names = [leading] if leading else []
    image = len(shape) == 2 and shape == tuple(frame_shape)
    if image:
        axis(group, "y", np.arange(shape[0], dtype=np.float64), units="pixel")
        axis(group, "x", np.arange(shape[1], dtype=np.float64), units="pixel")
        names += ["y", "x"]
    else:
        for dim, n in enumerate(shape):
            fits = [a for a in AXES if a in candidates and candidates[a] == (n,)]
            for k, a in enumerate(fits):
                if a in (axis_links or {}):
                    axis(group, a, link=axis_links[a], units=AXES[a])
                elif "units" not in group[a].attrs:
                    group[a].attrs["units"] = AXES[a]
                if k:
                    group.attrs[f"{a}_indices"] = dim + bool(leading)
            names.append(fits[0] if fits else ".")
    nxdata(group, signal, names, auxiliary=[n for n in signals[1:] if tuple(declared[n][0]) == shape],
           image=image and leading is not None)
    return True


def default_target(groups: Mapping[str, str]) -> str | None:
    """The path of the most useful plot among ``groups`` ({kind: path}: ``map``, ``profile``,
    ``mean``, ``reduction``, ``raw``, ``per_frame``), in that order; None when there is none."""
    return next((groups[k] for k in ("map", "profile", "mean", "reduction", "raw", "per_frame") if k in groups), None)


def default_chain(file: h5py.File, target: str) -> None:
    """Set ``@default`` on the root and every group down to ``target`` (an absolute path), each
    naming its child on the way (NeXus: "continue this chain until an NXdata group is reached")."""
    parts = target.strip("/").split("/")
    node = file
    for part in parts:
        node.attrs["default"] = part
        node = node[part]
