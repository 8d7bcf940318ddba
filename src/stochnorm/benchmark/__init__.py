"""`stochnorm benchmark`: when does batch-independent normalization with learned noise pay,
against what a practitioner would use instead? The grid of runs (`grid`), what is measured
of each (`measure`) and BENCHMARK.md (`document`)."""

from .grid import BASELINES, METHODS, REGIMES, Benchmark, Cell, Regime, regime

__all__ = ["BASELINES", "METHODS", "REGIMES", "Benchmark", "Cell", "Regime", "regime"]
