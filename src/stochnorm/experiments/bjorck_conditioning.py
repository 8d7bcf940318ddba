"""Bjorck et al., "Understanding Batch Normalization" (2018), section 4's random-matrix
argument: the condition number of a product of d random Gaussian matrices grows
exponentially with d (pure linear algebra, no training; see `bjorck` for the other two
claims)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..plots import _save, plt  # pyplot with the Agg backend that plots selects
from ..stats import linear_fit, mean_and_error
from .base import Experiment, Lab, per_profile
from .verdicts import INCONCLUSIVE, Verdict, compare

# --------------------------------------------------------------------------------------
# 3. The condition number of products of random Gaussian matrices
# --------------------------------------------------------------------------------------


def lyapunov_exponents(n: int) -> torch.Tensor:
    """The Lyapunov exponents mu_1 > ... > mu_n of products of independent n x n matrices
    with i.i.d. N(0, 1/n) entries (Newman 1986): mu_k = (ln(2/n) + psi((n - k + 1)/2)) / 2,
    psi the digamma function; ln sigma_k(W_d ... W_1) / d -> mu_k as d grows, so the log
    condition number grows by mu_1 - mu_n = (psi(n/2) - psi(1/2)) / 2 per factor. (In the
    QR decomposition of a Gaussian matrix, n R_kk^2 ~ chi^2(n - k + 1), and
    E ln chi^2(m) = ln 2 + psi(m/2).)"""
    k = torch.arange(1, n + 1, dtype=torch.float64)
    return (math.log(2 / n) + torch.special.digamma((n - k + 1) / 2)) / 2


def product_conditioning(
    n: int,
    depth: int,
    chains: int,
    generator: torch.Generator,
    *,
    spectra_at: Sequence[int] = (),
) -> dict[str, Any]:
    """For `chains` independent products M_d = W_d ... W_1 of n x n matrices with i.i.d.
    N(0, 1/n) entries (float64), at every depth d = 1..depth (each chain's prefixes):

    - `log_cond` = ln(sigma_max / sigma_min), `log_max` = ln sigma_max;
    - `mean_sq` = ||M_d||_F^2 / n, the mean squared singular value (expectation 1 at every
      depth, since E||W x||^2 = ||x||^2);
    - at the depths in `spectra_at`: `spectra[d]`, all ln sigma_k of every chain.

    sigma_max comes from the explicitly multiplied product, sigma_min as 1/sigma_max of
    the product of inverses W_1^-1 ... W_d^-1: both are largest singular values, which
    floating point gets to a relative accuracy of about n d eps however badly conditioned
    M_d is (a direct SVD loses sigma_min once the condition number nears 1/eps). Both
    products are rescaled to unit norm after each factor, their log-scale kept aside, so
    nothing overflows. The full spectra are direct SVDs: trustworthy only while the
    condition number stays well below 1e16. Arrays are [chains][depth]."""
    log_cond = torch.empty(chains, depth, dtype=torch.float64)
    log_max = torch.empty_like(log_cond)
    mean_sq = torch.empty_like(log_cond)
    spectra: dict[int, list[list[float]]] = {d: [] for d in spectra_at if d <= depth}
    eye = torch.eye(n, dtype=torch.float64)
    for c in range(chains):
        forward, inverse = eye.clone(), eye.clone()
        scale, inverse_scale = 0.0, 0.0
        for d in range(depth):
            w = torch.randn(n, n, generator=generator, dtype=torch.float64) / math.sqrt(n)
            forward = w @ forward
            norm = forward.norm()
            forward, scale = forward / norm, scale + math.log(norm)
            inverse = inverse @ torch.linalg.inv(w)
            norm = inverse.norm()
            inverse, inverse_scale = inverse / norm, inverse_scale + math.log(norm)
            sv = torch.linalg.svdvals(forward)
            log_max[c, d] = scale + sv[0].log()
            log_min = -(inverse_scale + torch.linalg.matrix_norm(inverse, 2).log())
            log_cond[c, d] = log_max[c, d] - log_min
            mean_sq[c, d] = math.exp(2 * scale) * sv.pow(2).sum() / n
            if d + 1 in spectra:
                spectra[d + 1].append((scale + sv.log()).tolist())
    return {
        "log_cond": log_cond.tolist(),
        "log_max": log_max.tolist(),
        "mean_sq": mean_sq.tolist(),
        "spectra": {str(d): s for d, s in spectra.items()},
    }


# (matrix size n, largest depth, chains) per profile
CONDITIONING: dict[str, tuple[int, int, int]] = {
    "demo": (16, 8, 20),
    "quick": (64, 16, 50),
    "full": (256, 32, 100),
}
SPECTRA_AT = (1, 2, 4)
GROWTH_THRESHOLD = math.log(2)  # the claim: the condition number at least doubles per factor


class Conditioning(Experiment):
    """Condition numbers of products of random Gaussian matrices against the number of
    factors, the random-matrix argument of Bjorck et al. for why deep unnormalized networks
    are ill-conditioned at initialization. Entries N(0, 1/n) as in the Glorot/LeCun
    initialization of a square layer (He's 2/n changes every singular value by the same
    factor and no condition number). No training; a torch.Generator seeded from lab.seed.
    Per profile (`CONDITIONING`): demo n = 16, depths 1-8, 20 chains; quick n = 64, 1-16,
    50 chains; full n = 256, 1-32, 100 chains."""

    name = "bjorck-conditioning"
    paper = "bjorck"
    figure = "Sec. 4"
    claim = (
        "The condition number of a product of random Gaussian matrices grows exponentially "
        "with the number of factors (its log roughly linearly, here by more than ln 2 per "
        "factor), while the mean squared singular value stays 1: depth alone makes a "
        "randomly initialized linear network ill-conditioned (Bjorck et al.)."
    )

    def run(self, lab: Lab) -> dict[str, Any]:
        n, depth, chains = per_profile(lab, CONDITIONING)
        generator = torch.Generator().manual_seed(lab.seed)
        result = product_conditioning(n, depth, chains, generator, spectra_at=SPECTRA_AT)
        mu = lyapunov_exponents(n)
        return {
            "n": n,
            "depths": list(range(1, depth + 1)),
            "chains": chains,
            "theory_slope": (mu[0] - mu[-1]).item(),
            **result,
        }

    def plot(self, numbers: dict[str, Any], out: Path) -> list[Path]:
        depths = numbers["depths"]
        log_cond = torch.tensor(numbers["log_cond"])
        mean, std = log_cond.mean(0), log_cond.std(0) if len(log_cond) > 1 else 0 * log_cond[0]
        log10 = math.log(10)
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        axes[0].plot(depths, mean / log10, "o-", ms=3, label="mean over chains")
        axes[0].fill_between(depths, (mean - std) / log10, (mean + std) / log10, alpha=0.3,
                             label="+- 1 std")  # fmt: skip
        slope = linear_fit(depths, mean.tolist())[0]
        middle, at = statistics.fmean(depths), mean.mean().item()  # the fit's centroid
        theory = numbers["theory_slope"]
        for rate, style, text in ((slope, "k--", f"fit: ln kappa +{slope:.2f} per factor"),
                                  (theory, "r:", f"Lyapunov limit: ln kappa +{theory:.2f}")):  # fmt: skip
            line = [(at + rate * (d - middle)) / log10 for d in depths]
            axes[0].plot(depths, line, style, lw=1, label=text)
        axes[0].set(
            xlabel="number of factors d",
            ylabel="log10 condition number",
            title=f"products of {numbers['n']}x{numbers['n']} N(0, 1/n) matrices",
        )
        mean_sq = torch.tensor(numbers["mean_sq"]).mean(0)
        sigma_max = torch.tensor(numbers["log_max"]).exp().mean(0)
        axes[1].plot(depths, mean_sq, "o-", ms=3, label="mean sigma^2 (theory: 1)")
        axes[1].plot(depths, sigma_max, "s-", ms=3, label="sigma_max (d=1 limit: 2)")
        axes[1].axhline(1, color="k", lw=1, ls=":")
        axes[1].set(xlabel="number of factors d", title="scale of the product")
        spectra = {d: (torch.tensor(v).flatten() / log10).tolist()
                   for d, v in numbers["spectra"].items()}  # fmt: skip
        every = [v for values in spectra.values() for v in values]
        bins = [min(every) + (max(every) - min(every)) * j / 40 for j in range(41)] if every else 40
        for i, (d, values) in enumerate(spectra.items()):
            axes[2].hist(values, bins=bins, alpha=0.5, color=f"C{i}", label=f"d = {d}")
        axes[2].set(xlabel="log10 singular value", title="singular values of the product")
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        return [_save(fig, out / "bjorck-conditioning.png")]

    def verdict(self, numbers: dict[str, Any]) -> Verdict:
        """Per chain, the least-squares slope of ln(condition number) against depth; the
        claim holds if their mean exceeds ln 2 by more than twice its standard error."""
        depths = numbers["depths"]
        if len(depths) < 2:
            return Verdict(INCONCLUSIVE, "a slope needs at least two depths")
        slopes = [linear_fit(depths, chain)[0] for chain in numbers["log_cond"]]
        slope, error = mean_and_error(slopes)
        mean_sq = statistics.fmean(row[-1] for row in numbers["mean_sq"])
        return compare(
            slope, 2 * error,
            f"ln condition number grows by {slope:.3f} +- {error:.3f} per factor (n = "
            f"{numbers['n']}, depths 1-{depths[-1]}, {len(slopes)} chains; threshold ln 2 = "
            f"{GROWTH_THRESHOLD:.3f}; Lyapunov limit {numbers['theory_slope']:.3f}); "
            f"condition number at depth {depths[-1]}: "
            f"10^{statistics.fmean(c[-1] for c in numbers['log_cond']) / math.log(10):.1f}; "
            f"mean sigma^2 there {mean_sq:.3f} (theory 1)",
            threshold=GROWTH_THRESHOLD,
        )  # fmt: skip


EXPERIMENTS: list[Experiment] = [Conditioning()]
