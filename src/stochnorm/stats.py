"""Statistics helpers shared by diagnostics, plots and the experiments' verdicts: line fits,
standard errors, the chi-square distribution and the Kolmogorov-Smirnov distance, and the
spread of a run's last epochs. Plain numbers in, plain numbers out (float64 throughout)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def linear_fit(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope of y against x and its standard error
    sqrt(RSS / (m - 2) / sum (x - mean x)^2) over the m points (nan for m = 2)."""
    tx = torch.as_tensor(list(x), dtype=torch.float64)
    ty = torch.as_tensor(list(y), dtype=torch.float64)
    if len(tx) != len(ty) or len(tx) < 2:
        raise ValueError(f"a line fit needs two or more (x, y) pairs, got {len(tx)} and {len(ty)}")
    dx = tx - tx.mean()
    sxx = (dx * dx).sum()
    if sxx == 0:
        raise ValueError("a line fit needs at least two distinct x values")
    slope = (dx * (ty - ty.mean())).sum() / sxx
    residual = ty - ty.mean() - slope * dx
    m = len(tx)
    se = (residual.pow(2).sum() / (m - 2) / sxx).sqrt().item() if m > 2 else math.nan
    return slope.item(), se


def loglog_fit(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """`linear_fit` of log y against log x: the exponent of a power law y ~ x^slope."""
    return linear_fit([math.log(v) for v in x], [math.log(v) for v in y])


def mean_and_error(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for a single value)."""
    mean = statistics.fmean(values)
    error = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return mean, error


def binomial_se(p: float, n: int) -> float:
    """Standard error of a proportion p measured on n independent trials."""
    return math.sqrt(max(p * (1 - p), 0.0) / n)


def iterate_spread(history: Sequence[dict], key: str, last: int = 10) -> float:
    """Standard deviation of `key` over the last `last` epochs of one run: the paper's error
    bar (its Fig. A.2 shows seed-to-seed differences fall within it)."""
    values = [row[key] for row in history[-last:] if key in row]
    return statistics.stdev(values) if len(values) > 1 else 0.0


def tail_mean(history: Sequence[dict], key: str, last: int = 10) -> float:
    """Mean of `key` over the last `last` epochs (smooths the iterate noise of the end point)."""
    values = [row[key] for row in history[-last:] if key in row]
    return sum(values) / len(values) if values else math.nan


def chi2_cdf(x: Tensor, dof: float) -> Tensor:
    """CDF of the chi-square distribution with `dof` degrees of freedom."""
    return torch.special.gammainc(torch.as_tensor(dof / 2, dtype=x.dtype), x / 2)


def chi2_quantile(p: Tensor, dof: float, iterations: int = 80) -> Tensor:
    """Quantiles of chi^2(dof) at probabilities `p`, by bisection on `chi2_cdf`."""
    p = p.double()
    lo = torch.zeros_like(p)
    hi = torch.full_like(p, dof + 40 * (2 * dof) ** 0.5 + 40)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        below = chi2_cdf(mid, dof) < p
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return (lo + hi) / 2


def ks_statistic(samples: Tensor, cdf: Callable[[Tensor], Tensor]) -> float:
    """Kolmogorov-Smirnov distance between the empirical CDF of `samples` and `cdf`."""
    x, _ = samples.double().sort()
    f = cdf(x)
    n = len(x)
    upper = torch.arange(1, n + 1, dtype=torch.float64) / n - f
    lower = f - torch.arange(0, n, dtype=torch.float64) / n
    return torch.maximum(upper, lower).max().item()
