"""The experiments of the four papers behind stochnorm, one command each:
`stochnorm reproduce NAME`. Every module of this package lists its experiments in
`EXPERIMENTS`; `registry()` collects them."""

from __future__ import annotations

import importlib
import pkgutil
import re

from .base import PAPERS, Experiment, Lab, Verdict, load_result, reproduce

__all__ = ["PAPERS", "Experiment", "Lab", "Verdict", "load_result", "registry", "reproduce"]


def _natural(text: str) -> list:
    """Sort key in which "Fig. 2" comes before "Fig. 10"."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def registry() -> dict[str, Experiment]:
    """Every experiment by name, ordered by paper (as in PAPERS) and then by figure."""
    found: list[Experiment] = []
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            module = importlib.import_module(f"{__name__}.{info.name}")
            found += getattr(module, "EXPERIMENTS", [])
    order = list(PAPERS)
    found.sort(key=lambda e: (order.index(e.paper), _natural(e.figure)))
    names = [e.name for e in found]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise RuntimeError(f"experiment names used twice: {', '.join(sorted(duplicates))}")
    return {e.name: e for e in found}
