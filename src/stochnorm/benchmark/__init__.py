"""`stochnorm benchmark`: when does batch-independent normalization with learned noise pay,
against what a practitioner would use instead? The grid of runs (`grid`), what is measured
of each (`measure`), the numbers and their paired comparisons (`results`) and BENCHMARK.md
(`document`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..checkpoint import save_json
from ..data import Splits
from ..data.corruptions import CORRUPTIONS, SEVERITIES, corrupted
from ..plots import plot_image_rows
from ..train import prepare_data
from .document import write_benchmark
from .grid import BASELINES, METHODS, REGIMES, Benchmark, Cell, Regime, narrowed, regime
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
    plot_corruption_examples(prepare_data(bench.lab.config()), Path(bench.out) / CORRUPTIONS_PNG)
    return numbers


CORRUPTIONS_PNG = "benchmark_corruptions.png"


def plot_corruption_examples(data: Splits, path: Path, image: int = 0) -> Path:
    """Test image `image` of `data` under every corruption at severities 1-5."""
    split = data.test.head(image + 1)
    mean, std = data.mean[0], data.std[0]
    rows = {}
    for name in CORRUPTIONS:
        shown = [(split.x[image] * std + mean).clamp(0, 1)]
        for severity in SEVERITIES:
            found = corrupted(data, split, name, severity, seed=0).x[image]
            shown.append((found * std + mean).clamp(0, 1))
        rows[name] = shown
    return plot_image_rows(rows, path, columns=["clean", *(f"severity {s}" for s in SEVERITIES)])


__all__ = [
    "BASELINES", "DEFAULT_SIZES", "METHODS", "REGIMES", "Benchmark", "Cell", "Regime", "Sizes",
    "measure_run", "narrowed", "regime", "run_benchmark",
]  # fmt: skip
