"""`stochnorm benchmark`: when does batch-independent normalization with learned noise pay,
against what a practitioner would use instead? The grid of runs (`grid`), what is measured
of each (`measure`), the numbers and their paired comparisons (`results`) and BENCHMARK.md
(`document`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..checkpoint import save_json
from .document import write_benchmark
from .grid import BASELINES, METHODS, REGIMES, Benchmark, Cell, Regime, regime
from .measure import DEFAULT_SIZES, Sizes, measure_run
from .results import collect

NUMBERS_FILE = "benchmark.json"


def run_benchmark(
    bench: Benchmark,
    command: str,
    *,
    samples: int = 10,
    sizes: Sizes = DEFAULT_SIZES,
    train: bool = True,
) -> dict[str, Any]:
    """Train what is missing (unless `train` is False: then the finished cells only), measure
    every run, save the numbers in `bench.out`/benchmark.json and write BENCHMARK.md there.
    Returns the numbers; "missing" lists the cells not run."""
    numbers = collect(bench, samples=samples, sizes=sizes, train=train)
    save_json(numbers, Path(bench.out) / NUMBERS_FILE)
    write_benchmark(numbers, bench.out, command)
    return numbers


__all__ = [
    "BASELINES", "DEFAULT_SIZES", "METHODS", "REGIMES", "Benchmark", "Cell", "Regime", "Sizes",
    "measure_run", "regime", "run_benchmark",
]  # fmt: skip
