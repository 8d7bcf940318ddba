"""Main paper, the stochastic side (section 3): batch norm's randomness measured (Fig. 4),
BN-like noise for the deterministic normalizations (Fig. 5), Bayesian learning of the scale
noise (Figs. 6-7, Table 1), and from the same runs the error-coverage curves (appendix
Fig. A.3) and the robustness to input perturbations (appendix Fig. A.4).

The five experiments share their runs: `bn_noise_measurement` trains batch norm and
measures its noise once per lab (cached in the lab's run directory); `evaluated_runs`
trains and evaluates the runs of Table 1 and the appendix figures once (`Lab.train` and
`Lab.evaluate` return the cached runs and evaluations).

Per-profile settings (PROFILE_SETTINGS): the demo profile measures BN noise at 4 batch
sizes with 10 batches each, draws 2 and 3 MC samples and perturbs 200 test images; quick
and full use the defaults of `stochnorm diagnose bn-noise` (batch sizes 4 ... 256, 40
batches, so that the BN-like sigmas equal those of results/bn-noise/bn-noise.json and the
committed `-bnlike` runs are reused), the paper's MC-10 and MC-30, and 2,000 (quick) or all
10,000 (full) perturbed test images.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import load_json, save_json
from ..config import TrainConfig
from ..diagnostics import measure_bn_noise
from ..plots import (
    plot_bn_noise,
    plot_curves,
    plot_error_coverage,
    plot_grouped_bars,
    plot_robustness,
)
from ..runs import RunDir
from .base import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    RUN_SETTINGS,
    Experiment,
    Lab,
    Verdict,
    combine,
    compare,
    config_key,
    exclusive,
    iterate_spread,
    tail_mean,
)
from .main_training import run_summary

BN_BATCH_SIZES = (4, 8, 16, 32, 64, 128, 256)  # `stochnorm diagnose bn-noise` defaults

_QUICK = {
    "bn_batch_sizes": BN_BATCH_SIZES,
    "bn_batches": 40,
    "samples": (10, 30),
    "robustness_size": 2000,
}
PROFILE_SETTINGS: dict[str, dict[str, Any]] = {
    "demo": {"bn_batch_sizes": (8, 16, 32, 64), "bn_batches": 10, "samples": (2, 3),
             "robustness_size": 200},
    "quick": _QUICK,
    "quick-full": _QUICK,
    "full": {**_QUICK, "robustness_size": 10_000},
}  # fmt: skip

QQ_LAYER = 6  # the layer of the paper's Q-Q plot (Fig. 4 left)
TAIL = 10  # epochs over which end points are averaged (base.tail_mean's default)

TABLE1_RUNS = (
    "batch", "batch-proj", "weight-proj-bnlike", "analytic-proj-bnlike", "weight-proj-bayes",
    "analytic-proj-bayes",
)  # fmt: skip
COUNTERPARTS = {"weight-proj-bayes": "weight-proj", "analytic-proj-bayes": "analytic-proj"}
EVALUATED_RUNS = ("none", *TABLE1_RUNS, *COUNTERPARTS.values())

# Test-set NLLs closer than this fraction are not called different (the evaluation keeps
# no per-image values from which a paired standard error could be computed).
NLL_TOLERANCE = 0.02


def profile_settings(lab: Lab) -> dict[str, Any]:
    """The measurement settings of `lab`'s profile (quick's for an unlisted profile)."""
    return PROFILE_SETTINGS.get(lab.profile, _QUICK)


# ---------------------------------------------------------------- shared runs


def bn_noise_measurement(lab: Lab) -> dict[str, Any]:
    """The BN run of the lab ("batch") and its noise: `diagnostics.measure_bn_noise` with
    the profile's batch sizes and batch count and the lab's seed, computed once and kept in
    the lab's run directory. Returns {"run", "summary", "measurements"}."""
    run = lab.train(lab.config(**RUN_SETTINGS["batch"]), label="batch")
    s = profile_settings(lab)
    sizes, batches = tuple(s["bn_batch_sizes"]), s["bn_batches"]
    name = f"bn-noise-{config_key(run.config())}-k{'_'.join(map(str, sizes))}-b{batches}"
    cache = lab.runs_dir / f"{name}-s{lab.seed}.json"
    # Measured once, also when processes share the lab: the runs with BN-like noise take
    # their sigmas from this file, and a second measurement on a GPU may differ in the last
    # digits, which would change their configurations.
    with exclusive(cache.with_suffix(".lock")):
        if cache.is_file():
            found = load_json(cache)
            if found.get("run") == str(run.path):
                return found
        measured = measure_bn_noise(run.path, sizes, batches=batches, seed=lab.seed)
        save_json(measured, cache)
    return measured


def run_config(lab: Lab, label: str) -> TrainConfig:
    """The configuration of run `label` (RUN_SETTINGS, or a "-bnlike" label: the
    normalization of the label without the suffix, with BN-like noise of the per-layer
    sigma_V, sigma_U measured on the lab's BN run at its training batch size)."""
    if label.endswith("-bnlike"):
        summary = bn_noise_measurement(lab)["summary"]
        return lab.config(
            **RUN_SETTINGS[label.removesuffix("-bnlike")], noise="bn-like",
            sigma_v=tuple(summary["sigma_v"]), sigma_u=tuple(summary["sigma_u"]),
        )  # fmt: skip
    return lab.config(**RUN_SETTINGS[label])


def trained_runs(lab: Lab, labels: Sequence[str]) -> dict[str, RunDir]:
    """The completed run of every label (trained once per configuration by the lab)."""
    return {label: lab.train(run_config(lab, label), label=label) for label in labels}


def evaluate(lab: Lab, run: RunDir) -> dict[str, Any]:
    """`Lab.evaluate` of `run` with the profile's MC sample counts (used only by a model
    with noise) and perturbed test images."""
    s = profile_settings(lab)
    return lab.evaluate(run, tuple(s["samples"]), robustness_size=s["robustness_size"])


def count_test_images(run: RunDir) -> int:
    """The number of test images the run is evaluated on (its `eval_size` honoured)."""
    from ..train import prepare_data

    return len(prepare_data(run.config()).test)


def evaluated_runs(lab: Lab, labels: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per label: `run_summary` of the run, its noise setting and its evaluation."""
    out = {}
    for label, run in trained_runs(lab, labels).items():
        out[label] = {**run_summary(run), "noise": run.config().noise,
                      "evaluation": evaluate(lab, run)}  # fmt: skip
    return out


# ---------------------------------------------------------------- measurements


def loglog_fit(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope of log y against log x and its standard error
    sqrt(RSS / (m - 2) / sum (log x - mean)^2) over the m points (nan for m = 2)."""
    lx = torch.tensor(x, dtype=torch.float64).log()
    ly = torch.tensor(y, dtype=torch.float64).log()
    dx = lx - lx.mean()
    sxx = (dx * dx).sum()
    slope = (dx * (ly - ly.mean())).sum() / sxx
    residual = ly - ly.mean() - slope * dx
    m = len(lx)
    se = (residual.pow(2).sum() / (m - 2) / sxx).sqrt().item() if m > 2 else math.nan
    return slope.item(), se


def strength_area(rows: Sequence[Mapping[str, float]], key: str) -> float:
    """The area under accuracy against perturbation strength `key` (trapezoid rule) divided
    by the strength range: the mean accuracy over the range (main paper Fig. A.4)."""
    points = [(r[key], r["accuracy"]) for r in rows]
    area = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in pairwise(points))
    return area / (points[-1][0] - points[0][0])


def error_at(curve: Mapping[str, Sequence[float]], coverage: float) -> float:
    """The error of an error-coverage curve at `coverage`, interpolated linearly between
    its points (the first point's error below its coverage)."""
    cs, es = curve["coverage"], curve["error"]
    if coverage <= cs[0]:
        return es[0]
    for (c0, e0), (c1, e1) in pairwise(zip(cs, es, strict=True)):
        if c0 <= coverage <= c1:
            return e0 if c1 == c0 else e0 + (e1 - e0) * (coverage - c0) / (c1 - c0)
    return es[-1]


def coverage_differences(
    better: Mapping[str, Sequence[float]],
    worse: Mapping[str, Sequence[float]],
    n: int,
    *,
    min_coverage: float = 0.1,
) -> list[tuple[float, float, float]]:
    """(c, d, se) at every coverage c >= `min_coverage` of two error-coverage curves on the
    same n test images (same coverages): d = e_worse(c) - e_better(c) and se =
    sqrt((e_w (1 - e_w) + e_b (1 - e_b)) / (c n)), the binomial standard error of the
    difference of two independent error rates on c n images (conservative: the two runs
    are judged on the same images)."""
    rows = []
    for c, eb, ew in zip(better["coverage"], better["error"], worse["error"], strict=True):
        if c >= min_coverage:
            var = max(ew * (1 - ew) + eb * (1 - eb), 1e-12)  # no zero SE at zero error
            rows.append((c, ew - eb, math.sqrt(var / (c * n))))
    return rows


def coverage_verdict(
    better: str,
    worse: str,
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    n: int,
    *,
    min_coverage: float = 0.1,
) -> Verdict:
    """The claim "run `better` has a lower error than `worse` at every coverage" on the
    error-coverage curves `curves[label]` of n test images, at the curves' coverages c >=
    `min_coverage` (below it the kept sets are too small to compare): it does not hold if
    the error of `better` is higher by more than 2 SE anywhere (`coverage_differences`);
    otherwise it is the mean difference against the mean SE (`compare`)."""
    rows = coverage_differences(curves[better], curves[worse], n, min_coverage=min_coverage)
    c, d, se = min(rows, key=lambda r: r[1] / r[2])
    lower = sum(r[1] > 0 for r in rows) / len(rows)
    margin, noise = sum(r[1] for r in rows) / len(rows), sum(r[2] for r in rows) / len(rows)
    text = (
        f"{better} vs {worse}: error lower at {100 * lower:.0f}% of coverages >= "
        f"{min_coverage:g}, mean difference {100 * margin:+.2f} points (mean SE "
        f"{100 * noise:.2f}); least favourable at coverage {c:.2f}: {100 * d:+.2f} points "
        f"(SE {100 * se:.2f})"
    )
    if d < -2 * se:
        return Verdict(FAILS, text + ", worse by more than 2 SE there", margin, noise)
    return compare(margin, noise, text)


def binomial_se(p: float, n: int) -> float:
    """Standard error of a proportion p measured on n independent trials."""
    return math.sqrt(max(p * (1 - p), 0.0) / n)


def _tail(numbers: Mapping[str, Any], better: str, worse: str, key: str, lower: bool):
    """(margin in favour of `better`, the larger iterate spread, the two tail means) of
    `key` over the last TAIL epochs; `lower`: smaller values are better."""
    a, b = numbers[better]["history"], numbers[worse]["history"]
    ma, mb = tail_mean(a, key, TAIL), tail_mean(b, key, TAIL)
    noise = max(iterate_spread(a, key, TAIL), iterate_spread(b, key, TAIL))
    return (mb - ma if lower else ma - mb), noise, ma, mb


def improvement_verdict(
    numbers: Mapping[str, Any], better: str, worse: str, key: str, *, tolerant: bool = False
) -> Verdict:
    """The claim "`better` improves `key` (val_acc: higher, val_loss: lower) over `worse`"
    on the means of the last TAIL epochs against the larger iterate spread of the two.
    `tolerant`: the weaker claim "`better` is not worse by more than the spread" (an
    insignificant improvement, as the paper says of analytic norm in Fig. 5)."""
    lower = key != "val_acc"
    margin, noise, ma, mb = _tail(numbers, better, worse, key, lower)
    scale, unit = (100, "%") if key == "val_acc" else (1, "")
    text = (
        f"{key} {better} {scale * ma:.3f}{unit} vs {worse} {scale * mb:.3f}{unit} (margin "
        f"{scale * margin:+.3f}, iterate spread {scale * noise:.3f})"
    )
    if tolerant:
        return Verdict(HOLDS if margin >= -noise else FAILS, text + ", not worse by more "
                       "than the spread", margin, noise)  # fmt: skip
    return compare(margin, noise, text)


def diverged_parts(runs: Mapping[str, Mapping[str, Any]]) -> list[Verdict]:
    """An inconclusive part for every run that diverged (its comparisons rest on the last
    finite epoch)."""
    return [
        Verdict(INCONCLUSIVE, f"{label} diverged (compared at its last finite epoch)")
        for label, entry in runs.items()
        if entry.get("diverged")
    ]


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
        runs = {label: run_summary(run) for label, run in trained_runs(lab, FIG5_RUNS).items()}
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


# ---------------------------------------------------------------- Figs. 6-7, Table 1

FIG6_RUNS = ("weight", "weight-proj", "weight-proj-bnlike", "weight-proj-bayes")
FIG7_RUNS = ("analytic", "analytic-proj", "analytic-proj-bnlike", "analytic-proj-bayes")


def mode_name(mode: str) -> str:
    """The display name of a prediction mode: "single" -> "single pass", "mc10" -> "MC-10"."""
    return "single pass" if mode == "single" else f"MC-{mode.removeprefix('mc')}"


class BayesTable(Experiment):
    """Sections 3.3-3.5, Figs. 6-7 and Table 1: learned scale noise (variational Bayes)
    after weight and analytic normalization, against BN and BN-like noise; test metrics
    of the single pass (mean parameters) and of MC averages."""

    name = "table1-bayes"
    runs = tuple(dict.fromkeys((*TABLE1_RUNS, *COUNTERPARTS.values(), *FIG6_RUNS, *FIG7_RUNS)))
    paper = "main"
    figure = "Figs. 6-7, Table 1"
    claim = (
        "Bayesian learning of the scale noise improves the validation accuracy and especially "
        "the validation loss of weight and analytic normalization (with projection); MC "
        "averages over the scale posterior lower the NLL further (CIFAR-10: weight norm val "
        "loss 0.4 single pass, 0.25 MC-10); analytic norm + projection + Bayes reaches BN + "
        "projection's test accuracy (CIFAR-10: 94.4% vs 94.1%) at a much lower NLL (MC-10 "
        "0.22 vs 0.29; our target: at most 0.75 times BN + projection's)."
    )

    def run(self, lab: Lab) -> dict[str, Any]:
        runs = trained_runs(lab, self.runs)
        numbers: dict[str, Any] = {
            "samples": list(profile_settings(lab)["samples"]),
            "test_size": count_test_images(runs["batch"]),
            "runs": {},
            "table": {},
        }
        for label, run in runs.items():
            entry = {**run_summary(run), "noise": run.config().noise}
            if label in TABLE1_RUNS or label in COUNTERPARTS.values():
                evaluation = evaluate(lab, run)
                test = {mode: {k: v for k, v in e.items() if not k.startswith("curve_")}
                        for mode, e in evaluation["test"].items()}  # fmt: skip
                entry.update(test=test, learned_noise=evaluation["learned_noise"])
                row = {"accuracy": test["single"]["accuracy"]}
                for mode, e in test.items():
                    row[f"nll_{mode}"] = e["nll"]
                    row[f"ece_{mode}"] = e["ece"]
                numbers["table"][label] = row
            numbers["runs"][label] = entry
        return numbers

    def plot(self, numbers: dict[str, Any], out: Path) -> list[Path]:
        runs = numbers["runs"]
        figures = [
            plot_curves({k: runs[k]["history"] for k in group if k in runs}, out / name)
            for group, name in ((FIG6_RUNS, "fig6.png"), (FIG7_RUNS, "fig7.png"))
        ]
        bars = {
            label: {mode_name(mode): e["nll"] for mode, e in runs[label]["test"].items()}
            for label in numbers["table"]
        }
        figures.append(plot_grouped_bars(
            bars, out / "table1-nll.png", ylabel="test NLL",
            title=f"Test NLL: single pass and MC averages ({numbers['test_size']} images)",
        ))  # fmt: skip
        return figures

    def verdict(self, numbers: dict[str, Any]) -> Verdict:
        runs, n = numbers["runs"], numbers["test_size"]
        mc = f"mc{numbers['samples'][0]}"
        parts = []
        for bayes, det in COUNTERPARTS.items():
            parts += [improvement_verdict(runs, bayes, det, key) for key in ("val_acc", "val_loss")]
        for bayes in COUNTERPARTS:
            test = runs[bayes]["test"]
            single, sampled = test["single"]["nll"], test[mc]["nll"]
            others = ", ".join(f"{mode_name(m)} {e['nll']:.3f}" for m, e in test.items())
            parts.append(compare(
                single - sampled, NLL_TOLERANCE * single,
                f"{bayes} test NLL {others} (tolerance {100 * NLL_TOLERANCE:.0f}% of the "
                "single pass)",
            ))  # fmt: skip
        an, bn = runs["analytic-proj-bayes"]["test"], runs["batch-proj"]["test"]["single"]
        acc_an, acc_bn = an["single"]["accuracy"], bn["accuracy"]
        parts.append(compare(
            acc_an - acc_bn, math.hypot(binomial_se(acc_an, n), binomial_se(acc_bn, n)),
            f"target: test acc analytic-proj-bayes {100 * acc_an:.2f}% >= batch-proj "
            f"{100 * acc_bn:.2f}% (noise: binomial SE of the difference on {n} images)",
        ))  # fmt: skip
        ratio = an[mc]["nll"] / bn["nll"]
        spread = max(
            iterate_spread(runs[k]["history"], "val_loss", TAIL)
            / tail_mean(runs[k]["history"], "val_loss", TAIL)
            for k in ("analytic-proj-bayes", "batch-proj")
        )
        parts.append(compare(
            0.75 - ratio, max(NLL_TOLERANCE, spread) * ratio,
            f"target: {mode_name(mc)} test NLL analytic-proj-bayes {an[mc]['nll']:.3f} <= 0.75 x "
            f"batch-proj {bn['nll']:.3f} (ratio {ratio:.2f}; noise: the larger of "
            f"{100 * NLL_TOLERANCE:.0f}% and the relative iterate spread of the val loss)",
        ))  # fmt: skip
        return combine(parts + diverged_parts(runs))


# ---------------------------------------------------------------- Fig. A.3

COVERAGE = 0.6  # "close to zero error rates are possible with ... about 60% of the cases"
NEAR_ZERO = 0.01  # error at that coverage we call near zero
AURC_MARGIN = 0.25  # "on par": AURC within this fraction of BN's
REGULARIZED_PAIRS = (
    ("batch", "none"),
    ("weight-proj-bayes", "weight-proj"),
    ("analytic-proj-bayes", "analytic-proj"),
)


class ErrorCoverage(Experiment):
    """Appendix A.1, Fig. A.3: error of the kept test images against the kept fraction,
    rejecting by the entropy of the single-pass predictive distribution."""

    name = "figA3-error-coverage"
    runs = EVALUATED_RUNS
    paper = "main"
    figure = "Fig. A.3"
    claim = (
        "Rejecting the test images with the highest predictive entropy (deterministic single "
        "pass), regularization (BN vs no normalization, Bayesian learning vs the same "
        "deterministic normalization) lowers the error at every coverage; analytic norm + "
        "projection + Bayes is on par with BN; the error is close to zero at about 60% "
        "coverage."
    )

    def run(self, lab: Lab) -> dict[str, Any]:
        found = evaluated_runs(lab, EVALUATED_RUNS)
        runs = {}
        for label, entry in found.items():
            single = entry["evaluation"]["test"]["single"]
            runs[label] = {
                "single": {k: single[k] for k in ("accuracy", "aurc_entropy", "aurc_max-prob",
                                                  "curve_entropy", "curve_max-prob")},
                "error_at_60": error_at(single["curve_entropy"], COVERAGE),
            }  # fmt: skip
        size = count_test_images(lab.train(run_config(lab, "batch"), label="batch"))
        return {"test_size": size, "coverage": COVERAGE, "runs": runs}

    def plot(self, numbers: dict[str, Any], out: Path) -> list[Path]:
        reports = {label: {"single": e["single"]} for label, e in numbers["runs"].items()}
        return [plot_error_coverage(reports, out / "figA3.png")]

    def verdict(self, numbers: dict[str, Any]) -> Verdict:
        runs, n = numbers["runs"], numbers["test_size"]
        curves = {label: e["single"]["curve_entropy"] for label, e in runs.items()}
        parts = [coverage_verdict(better, worse, curves, n) for better, worse in REGULARIZED_PAIRS]
        a_an = runs["analytic-proj-bayes"]["single"]["aurc_entropy"]
        a_bn = runs["batch"]["single"]["aurc_entropy"]
        rows = coverage_differences(curves["batch"], curves["analytic-proj-bayes"], n)
        se = sum(r[2] for r in rows) / len(rows)
        parts.append(compare(
            AURC_MARGIN * a_bn - abs(a_an - a_bn), se,
            f"AURC (entropy) analytic-proj-bayes {100 * a_an:.2f}% vs batch {100 * a_bn:.2f}% "
            f"('on par' = within {100 * AURC_MARGIN:.0f}% of BN's; noise: mean SE of the "
            "error difference over coverages >= 0.1)",
        ))  # fmt: skip
        c = numbers["coverage"]
        at = ", ".join(f"{k} {100 * e['error_at_60']:.2f}%" for k, e in runs.items())
        for label in ("batch", "analytic-proj-bayes"):
            e = runs[label]["error_at_60"]
            parts.append(compare(
                NEAR_ZERO - e, binomial_se(NEAR_ZERO, round(c * n)),
                f"error at {100 * c:.0f}% coverage of {label} {100 * e:.2f}% ('near zero' = "
                f"<= {100 * NEAR_ZERO:.0f}%; all runs: {at})",
            ))  # fmt: skip
        return combine(parts)


# ---------------------------------------------------------------- Fig. A.4

ROBUSTNESS_MARGIN = 0.02  # "does not improve": the area under accuracy vs strength is not
# higher by more than 2 points of accuracy


class Robustness(Experiment):
    """Appendix A.1, Fig. A.4: accuracy of the deterministic single pass under Gaussian
    input noise and FGSM, for the runs of Fig. A.3."""

    name = "figA4-robustness"
    runs = EVALUATED_RUNS
    paper = "main"
    figure = "Fig. A.4"
    claim = (
        "Under Gaussian input noise and the fast gradient sign attack, all models lose "
        "accuracy fast and alike; Bayesian learning does not make the deterministic (mean "
        "parameter) prediction more robust than the same normalization without it."
    )

    def run(self, lab: Lab) -> dict[str, Any]:
        found = evaluated_runs(lab, EVALUATED_RUNS)
        runs, images = {}, 0
        for label, entry in found.items():
            robustness = entry["evaluation"]["robustness"]
            images = robustness["images"]
            single = {kind: robustness[kind]["single"] for kind in ("gaussian", "fgsm")}
            runs[label] = {
                **{kind: robustness[kind] for kind in ("gaussian", "fgsm")},
                "area_gaussian": strength_area(single["gaussian"], "std"),
                "area_fgsm": strength_area(single["fgsm"], "eps"),
            }
        return {"images": images, "runs": runs}

    def plot(self, numbers: dict[str, Any], out: Path) -> list[Path]:
        reports = {
            label: {kind: {"single": e[kind]["single"]} for kind in ("gaussian", "fgsm")}
            for label, e in numbers["runs"].items()
        }
        return [plot_robustness(reports, out / "figA4.png")]

    def verdict(self, numbers: dict[str, Any]) -> Verdict:
        runs, n = numbers["runs"], numbers["images"]
        parts = []
        for kind in ("gaussian", "fgsm"):
            areas = [e[f"area_{kind}"] for e in runs.values()]
            for bayes, det in COUNTERPARTS.items():
                a, b = runs[bayes][f"area_{kind}"], runs[det][f"area_{kind}"]
                p = (a + b) / 2
                parts.append(compare(
                    ROBUSTNESS_MARGIN - (a - b), math.sqrt(2) * binomial_se(p, n),
                    f"{kind}: mean accuracy over the strengths {bayes} {100 * a:.1f}% vs {det} "
                    f"{100 * b:.1f}% (not higher by more than {100 * ROBUSTNESS_MARGIN:.0f} "
                    f"points; {n} images; all runs {100 * min(areas):.1f}-"
                    f"{100 * max(areas):.1f}%)",
                ))  # fmt: skip
        return combine(parts)


EXPERIMENTS: list[Experiment] = [
    BNNoise(), BNLikeNoise(), BayesTable(), ErrorCoverage(), Robustness(),
]  # fmt: skip
