"""Two rules for the moments of the max of a window of correlated Gaussians (the max-pool
rule of analytic norm), against Monte-Carlo: the library's `moments.exchangeable_max` (the
mean of the window's correlations, exact for equal ones) and Clark's (1961) pairwise
recursion (a candidate kept here, not in the library), on 3x3 windows of standard Gaussians
whose correlations decay with distance (smooth fields) or are those of neighbouring outputs
of random 5x5 filters on independent pixels (weak, partly negative).

    python benchmarks/max_rules.py [--draws 1000000] [--out results/benchmarks/max-rules.md]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from torch import Tensor

from stochnorm import moments
from stochnorm.checkpoint import atomic_write
from stochnorm.provenance import hardware

POSITIONS = [(i, j) for i in range(3) for j in range(3)]


def clark_max(correlation: Tensor) -> tuple[float, float]:
    """Clark's recursion for standard Gaussians with `correlation` [k, k]: the running max is
    taken as Gaussian, its correlation with each later value in closed form, and the max of
    two correlated Gaussians is exact."""
    mean, var, towards = 0.0, 1.0, correlation[0].clone()
    for j in range(1, len(correlation)):
        sd = math.sqrt(var)
        spread = math.sqrt(max(var + 1 - 2 * sd * towards[j].item(), 1e-300))
        alpha = mean / spread
        cdf = 0.5 * math.erfc(-alpha / math.sqrt(2))
        density = math.exp(-0.5 * alpha * alpha) / math.sqrt(2 * math.pi)
        new_mean = mean * cdf + spread * density
        square = (mean * mean + var) * cdf + (1 - cdf) + mean * spread * density
        new_var = max(square - new_mean * new_mean, 1e-300)
        towards = (sd * towards * cdf + correlation[j] * (1 - cdf)) / math.sqrt(new_var)
        mean, var = new_mean, new_var
    return mean, var


def decaying(decay: float) -> Tensor:
    position = torch.tensor(POSITIONS, dtype=torch.float64)
    return decay ** torch.cdist(position, position)


def random_filter(seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(1, 1, 5, 5, generator=g, dtype=torch.float64)
    lags = torch.nn.functional.conv2d(torch.nn.functional.pad(w, (4,) * 4), w)[0, 0]
    cov = torch.tensor([[lags[4 + b[0] - a[0], 4 + b[1] - a[1]].item() for b in POSITIONS]
                        for a in POSITIONS], dtype=torch.float64)  # fmt: skip
    return cov / lags[4, 4]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/max-rules.md"))
    args = parser.parse_args()
    windows = {f"decay {d}": decaying(d) for d in (0.0, 0.3, 0.5, 0.8, 0.95)}
    windows |= {f"random 5x5 filter {s}": random_filter(s) for s in range(4)}
    lines = [
        "# The max of a window of correlated Gaussians",
        "",
        f"Command: `python benchmarks/max_rules.py --draws {args.draws}`. {hardware()}; "
        f"torch {torch.__version__}.",
        "",
        "The max of 9 standard Gaussians (a 3x3 window) with the correlations named in the "
        "first column; `decay d`: d^distance (d = 0: independent); the filters' windows "
        "have weak, partly negative correlations. Monte-Carlo with the draws above (standard "
        "error of the mean about 0.0006, of the variance about 0.1-0.2%); each rule's error: "
        "its mean minus the sampled one (in sd of the pooled values), its variance over the "
        "sampled one minus 1.",
        "",
        "| window | mean correlation | sampled mean | variance | exchangeable: mean error "
        "| variance error | Clark: mean error | variance error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    g = torch.Generator().manual_seed(0)
    for name, correlation in windows.items():
        u = torch.randn(args.draws, 9, generator=g, dtype=torch.float64)
        peak = (u @ torch.linalg.cholesky(correlation).T).max(1).values
        rho = (correlation.sum() - 9) / 72
        mean, var = (t.item() for t in moments.exchangeable_max(rho, 9))
        clark_mean, clark_var = clark_max(correlation)
        true_mean, true_var = peak.mean().item(), peak.var().item()
        lines.append(
            f"| {name} | {rho.item():.3f} | {true_mean:.4f} | {true_var:.4f} | "
            f"{mean - true_mean:+.4f} | {var / true_var - 1:+.3f} | "
            f"{clark_mean - true_mean:+.4f} | {clark_var / true_var - 1:+.3f} |"
        )
    text = "\n".join(lines) + "\n"
    atomic_write(args.out, lambda f: f.write(text.encode()))
    print(text)


if __name__ == "__main__":
    main()
