"""``livediff bench``: our kernels against their peers, on the same frames, with ratios.

Families are modules of this package, each exposing ``cases(quick) -> list[Case]``.
"""
from __future__ import annotations

import importlib
import json
from collections.abc import Iterable
from typing import Any

from .core import Case, format_table, run_case

#: benchmark families, in the order their tables print
FAMILIES: tuple[str, ...] = ("decode", "corrections", "stats", "align", "spots", "mx", "azimuthal", "virtual",
                              "ebsd", "hdf5")


def collect(families: Iterable[str], quick: bool) -> list[Case]:
    cases: list[Case] = []
    for family in families:
        try:
            module = importlib.import_module(f"{__name__}.{family}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{family}":
                raise
            continue  # family not built yet
        cases.extend(module.cases(quick))
    return cases


def run(*, only: str | None = None, quick: bool = False, as_json: bool = False) -> list[dict[str, Any]]:
    """Run the cases of the family named ``only`` (or whose operator contains it); print a table or JSON."""
    if only is None or only in FAMILIES:
        cases = collect(FAMILIES if only is None else [only], quick)
    else:
        cases = [c for c in collect(FAMILIES, quick) if only in c.operator]
    rows = []
    for case in cases:
        rows.append(run_case(case, min_seconds=0.2 if quick else 1.0))
        if not as_json:
            print(format_table(rows[-1:]).splitlines()[-1], flush=True)
    if as_json:
        print(json.dumps(rows))
    else:
        print()
        print(format_table(rows))
    return rows
