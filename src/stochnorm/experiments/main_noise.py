"""Main paper, the stochastic side (section 3): batch norm's randomness measured (Fig. 4)
and BN-like noise for the deterministic normalizations (Fig. 5). Bayesian learning of the
scale noise and what it buys (Figs. 6-7, Table 1, A.3, A.4) is in `main_bayes`."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..plots import plot_bn_noise, plot_curves
from ..stats import loglog_fit
from .base import Experiment, Lab
from .cases import bn_noise_measurement, trained_summaries
from .verdicts import INCONCLUSIVE, Verdict, combine, compare, diverged_parts, improvement_verdict

QQ_LAYER = 6  # the layer of the paper's Q-Q plot (Fig. 4 left)


def _listed(rows: Sequence[Mapping[str, float]], key: str) -> str:
    return ", ".join(f"{r[key]:.2f}" for r in rows)


# ---------------------------------------------------------------- Fig. 4


def fig4_numbers(found: Mapping[str, Any], qq_layer: int = QQ_LAYER) -> dict[str, Any]:
    """The numbers of Fig. 4 from a `measure_bn_noise` result (not changed): per layer of
    its summary also the number m of n S^2 / sigma^2 samples at the training batch size,
    the 5% critical KS distance 1.36 / sqrt(m) of an exact fit, and the standard error of
    the slope of the BN output variance against k (`loglog_fit`); the slope of k times the
    variance against the spatial size z over layers with its standard error; the chi^2
    samples only of the Q-Q layer (`qq_layer`, at most the last layer)."""
    found = copy.deepcopy(dict(found))
    summary, measurements = found["summary"], found["measurements"]
    qq_layer = min(qq_layer, len(summary["layers"]))
    k0 = summary["batch_size"]
    for row, layer in zip(summary["layers"], measurements["layers"], strict=True):
        per_k = layer["per_batch_size"]
        m = len(next(e for e in per_k if e["k"] == k0)["chi2"])
        row["chi2_samples"] = m
        row["ks_critical_5pct"] = 1.36 / math.sqrt(m)
        row["var_vs_k_slope"], row["var_vs_k_slope_se"] = loglog_fit(
            [e["k"] for e in per_k], [e["output_var"] for e in per_k]
        )
        if layer["layer"] != qq_layer:  # the plot needs the samples of one layer only
            for e in per_k:
                e.pop("chi2", None)
    z = [r["spatial"] for r in summary["layers"]]
    var_k = [
        k0 * next(e for e in layer["per_batch_size"] if e["k"] == k0)["output_var"]
        for layer in measurements["layers"]
    ]
    slope, se = loglog_fit(z, var_k) if len(set(z)) > 1 else (None, None)
    return {
        "run": found["run"],
        "batch_sizes": measurements["batch_sizes"],
        "batches": measurements["batches"],
        "qq_layer": qq_layer,
        "summary": summary,
        "var_times_k_vs_z": {"slope": slope, "se": se},
        "measurements": measurements,
    }


class BNNoise(Experiment):
    """Section 3.1, Fig. 4: the noise model of BN, `(x - M)/S = ((x - mu)/sigma + V) U`
    with n = k z i.i.d. values, checked on a trained BN network."""

    name = "fig4-bn-noise"
    runs = ("batch",)
    paper = "main"
    figure = "Fig. 4"
    claim = (
        "In a trained BN network, (n - 1) S^2 / sigma^2 of a unit's batch statistics is close "
        "to chi^2(n - 1) (n = k z values of a batch); the variance of the BN output of a fixed "
        "image falls as 1/k with the batch size k in every layer (log-log slope -1); k times "
        "that variance falls with the spatial size z only approximately as 1/z (spatial "
        "correlations)."
    )

    def run(self, lab: Lab) -> dict[str, Any]:
        return fig4_numbers(bn_noise_measurement(lab))

    def plot(self, numbers: dict[str, Any], out: Path) -> list[Path]:
        return [plot_bn_noise(numbers["measurements"], numbers["summary"], out / "fig4.png",
                              qq_layer=numbers["qq_layer"])]  # fmt: skip

    def verdict(self, numbers: dict[str, Any]) -> Verdict:
        rows = numbers["summary"]["layers"]
        qq = rows[numbers["qq_layer"] - 1]
        # "close": the empirical CDF within 0.2 of chi^2(n - 1)'s everywhere (KS <= 0.2) in
        # the paper's Q-Q layer, against the KS distance a perfect fit reaches by chance
        within = [r["layer"] for r in rows if r["chi2_ks"] <= 0.2]
        chi2 = compare(
            0.2 - qq["chi2_ks"], qq["ks_critical_5pct"],
            f"KS distance of n S^2/sigma^2 to chi2(n-1) in layer {qq['layer']} (z = "
            f"{qq['spatial']}, k = {numbers['summary']['batch_size']}): {qq['chi2_ks']:.3f}; "
            f"'close' = KS <= 0.2, met in layers {within or 'none'}; all layers "
            f"{_listed(rows, 'chi2_ks')} (the exact test at 5% accepts "
            f"only KS <= {qq['ks_critical_5pct']:.3f} with {qq['chi2_samples']} samples)",
        )  # fmt: skip
        worst = max(rows, key=lambda r: abs(r["var_vs_k_slope"] + 1))
        per_k = compare(
            0.2 - abs(worst["var_vs_k_slope"] + 1),
            0.0 if math.isnan(worst["var_vs_k_slope_se"]) else worst["var_vs_k_slope_se"],
            f"log-log slope of the BN output variance vs k per layer: "
            f"{_listed(rows, 'var_vs_k_slope')} (claim: in [-1.2, "
            f"-0.8] in every layer; farthest layer {worst['layer']}, SE "
            f"{worst['var_vs_k_slope_se']:.3f})",
        )  # fmt: skip
        fit = numbers["var_times_k_vs_z"]
        if fit["slope"] is None:
            per_z = Verdict(INCONCLUSIVE, "all layers have the same spatial size")
        else:
            per_z = compare(
                0.5 - abs(fit["slope"] + 1), 0.0 if math.isnan(fit["se"]) else fit["se"],
                f"slope of k * variance vs z over layers {fit['slope']:.2f} (SE "
                f"{fit['se']:.2f}; 'about -1' = within [-1.5, -0.5], the paper: only "
                "approximately -1)",
            )  # fmt: skip
        return combine([chi2, per_k, per_z])


# ---------------------------------------------------------------- Fig. 5

FIG5_RUNS = ("weight-proj", "weight-proj-bnlike", "analytic-proj", "analytic-proj-bnlike")


class BNLikeNoise(Experiment):
    """Section 3.2, Fig. 5: weight and analytic norm (with projection) trained without and
    with BN-like noise whose per-layer sigma_V, sigma_U are measured on the BN run."""

    name = "fig5-bn-like-noise"
    runs = ("batch", *FIG5_RUNS)
    paper = "main"
    figure = "Fig. 5"
    claim = (
        "Injecting BN-like noise (V ~ N(0, sigma_V^2), U ~ N(1, sigma_U^2) per layer, sigmas "
        "measured in a trained BN network) after weight or analytic normalization improves "
        "validation accuracy and loss: noticeably for weight norm, insignificantly for "
        "analytic norm."
    )

    def run(self, lab: Lab) -> dict[str, Any]:
        summary = bn_noise_measurement(lab)["summary"]
        runs = trained_summaries(lab, FIG5_RUNS)
        return {"sigma_v": summary["sigma_v"], "sigma_u": summary["sigma_u"], "runs": runs}

    def plot(self, numbers: dict[str, Any], out: Path) -> list[Path]:
        histories = {k: v["history"] for k, v in numbers["runs"].items()}
        return [plot_curves(histories, out / "fig5.png")]

    def verdict(self, numbers: dict[str, Any]) -> Verdict:
        runs = numbers["runs"]
        parts = [improvement_verdict(runs, "weight-proj-bnlike", "weight-proj", key)
                 for key in ("val_acc", "val_loss")]  # fmt: skip
        parts += [
            improvement_verdict(runs, "analytic-proj-bnlike", "analytic-proj", key, tolerant=True)
            for key in ("val_acc", "val_loss")
        ]
        return combine(parts + diverged_parts(runs))


EXPERIMENTS: list[Experiment] = [BNNoise(), BNLikeNoise()]
