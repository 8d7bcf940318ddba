"""BENCHMARK.md and its figures, written from the benchmark's saved numbers (`results`)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..checkpoint import atomic_write
from ..config import PROFILES
from ..data.corruptions import CORRUPTIONS, SEVERITIES
from ..experiments.verdicts import SEED_RULE
from ..plots import plot_reliability, plot_seed_means, plot_severity_curves
from ..stats import mean_and_error
from .grid import LR_PROFILE, NOISE, PRIMARY, REFERENCE_BATCH
from .results import (
    METRICS,
    by_side,
    comparisons,
    entries,
    paired,
    seed_mean,
    values,
)

PERCENT = {"accuracy", "aurc", "shift_accuracy"}  # shown in percent
TABLE = ("accuracy", "nll", "nll_ts", "temperature", "ece_ts", "brier", "aurc",
         "shift_accuracy", "shift_nll_ts", "ood_auroc_entropy", "ood_auroc_mi",
         "ood_fpr95_entropy")  # fmt: skip


def _display(metric: str) -> tuple[float, int]:
    """The factor and the decimals a metric is shown with (percent: 100 and 2)."""
    return (100.0, 2) if metric in PERCENT else (1.0, 3)


def _value(entry: Mapping[str, Any], metric: str) -> tuple[float, float, int] | None:
    """Seed mean, its standard error and the number of seeds (None without a value)."""
    found = list(values(entry, metric).values())
    if not found:
        return None
    scale, _ = _display(metric)
    mean, se = mean_and_error(found)
    return scale * mean, scale * se, len(found)


def _cell(entry: Mapping[str, Any], metric: str) -> str:
    found = _value(entry, metric)
    if found is None:
        return "-"
    _, digits = _display(metric)
    mean, se, n = found
    return f"{mean:.{digits}f} ± {se:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def _difference(result: Mapping[str, Any], metric: str) -> str:
    if not result["pairs"]:
        return "-"
    scale, digits = _display(metric)
    d, se = scale * result["difference"], scale * result["se"]
    return f"{d:+.{digits}f} ± {se:.{digits}f} ({result['verdict']}, {result['pairs']} seeds)"


def _regimes(numbers: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [r for r in numbers["regimes"] if entries(numbers, r["name"])]


def answer_table(numbers: Mapping[str, Any]) -> list[str]:
    """Per regime and deciding metric: the best baseline against the stochnorm entry named in
    advance and against the best stochnorm entry, with the paired differences."""
    lines = ["| regime | metric | best baseline | its value | stochnorm entry | its value | "
             "difference ± its SE (stochnorm - baseline) |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in _regimes(numbers):
        found = entries(numbers, r["name"])
        for metric, rows in comparisons(numbers, r["name"]).items():
            for c in rows:
                lines.append(
                    f"| {r['title']} | {METRICS[metric][2]} | {c['baseline']} | "
                    f"{_cell(found[c['baseline']][1], metric)} | {c['stochnorm']} "
                    f"({c['kind']}) | {_cell(found[c['stochnorm']][1], metric)} | "
                    f"{_difference(c, metric)} |"
                )
    return lines


def regime_table(numbers: Mapping[str, Any], regime: Mapping[str, Any]) -> list[str]:
    """Every entry of `regime` with every metric (seed mean ± SE), and its paired difference
    from the best baseline in accuracy and temperature-scaled NLL."""
    found = entries(numbers, regime["name"])
    best = comparisons(numbers, regime["name"])
    heads = [METRICS[m][2] for m in TABLE]
    lines = [
        "| entry | seeds | " + " | ".join(heads) + " | acc vs best baseline | "
        "NLL (T-scaled) vs best baseline |",
        "|---|---|" + "---|" * (len(TABLE) + 2),
    ]
    for name, (method, entry) in found.items():
        versus = []
        for metric in ("accuracy", "nll_ts"):
            base = best[metric][0]["baseline"] if best.get(metric) else None
            if base is None or method in numbers["baselines"]:
                versus.append("-")
            else:
                versus.append(_difference(paired(entry, found[base][1], metric), metric))
        cells = " | ".join(_cell(entry, m) for m in TABLE)
        lines.append(f"| {name} | {len(entry['seeds'])} | {cells} | {' | '.join(versus)} |")
    return lines


def goal_lines(numbers: Mapping[str, Any], regime: str = "b4") -> list[str]:
    """Our goal at 4 images per step: analytic or weight norm with learned noise at least as
    accurate as GroupNorm and BN, and NLL at most 0.9x the best temperature-scaled baseline."""
    found = entries(numbers, regime)
    ours = {n: v for n, v in found.items() if v[0].startswith(("analytic", "weight"))
            and NOISE in v[0]}  # fmt: skip
    if not ours:
        return ["Not measured yet."]
    base, _ = by_side(numbers, found)
    scaled = [(seed_mean(e, "nll_ts"), n) for n, (_, e) in base.items()]
    scaled = [(v, n) for v, n in scaled if math.isfinite(v)]
    if not scaled:
        return ["No baseline measured yet."]
    best_nll = min(scaled)
    lines = []
    for name, (_, entry) in ours.items():
        parts = []
        for rival in ("group", "batch"):
            if rival in found:
                verdict = paired(entry, found[rival][1], "accuracy")
                parts.append(f"accuracy vs {rival}: {_difference(verdict, 'accuracy')}")
        for metric in ("nll", "nll_ts"):
            ratio = seed_mean(entry, metric) / best_nll[0]
            parts.append(f"{METRICS[metric][2]} / best T-scaled baseline NLL ({best_nll[1]}) "
                         f"= {ratio:.3f} (goal <= 0.9)")  # fmt: skip
        lines.append(f"- **{name}**: " + "; ".join(parts))
    return lines


def figures(numbers: Mapping[str, Any], out: Path) -> list[Path]:
    """The seed means with 2-SE bars, the corruption curves and the reliability diagrams of
    the three entries of lowest temperature-scaled NLL at 4 images per step."""
    regimes = _regimes(numbers)
    if not regimes:
        return []
    panels: dict[str, dict[str, dict[str, tuple[float, float]]]] = {}
    for metric in ("accuracy", "nll_ts", "shift_accuracy", "ood_auroc_entropy"):
        panels[METRICS[metric][2]] = {
            r["title"]: {n: v[:2] for n, (_, e) in entries(numbers, r["name"]).items()
                         if (v := _value(e, metric)) is not None}
            for r in regimes
        }  # fmt: skip
    paths = [plot_seed_means(panels, out / "benchmark_methods.png")]
    curves = {}
    for r in regimes:
        lines = {}
        for name, (_, e) in entries(numbers, r["name"]).items():
            clean = statistics.fmean(run["accuracy"] for run in e["shift_clean"])
            per_severity = [
                statistics.fmean(run[c][s - 1]["accuracy"] for run in e["shift"] for c in run)
                for s in SEVERITIES
            ]
            lines[name] = [100 * clean] + [100 * v for v in per_severity]
        curves[r["title"]] = lines
    paths.append(plot_severity_curves(curves, out / "benchmark_shift.png",
                                      ylabel="accuracy %, mean over corruptions"))  # fmt: skip
    focus = next((r for r in regimes if r["name"] == "b4"), regimes[0] if regimes else None)
    if focus is not None:
        found = entries(numbers, focus["name"])
        ranked = sorted((v, n) for n, (_, e) in found.items()
                        if math.isfinite(v := seed_mean(e, "nll_ts")))[:3]  # fmt: skip
        diagrams = {
            f"{focus['name']}: {n} (T-scaled, seed {found[n][1]['seeds'][0]})":
                found[n][1]["reliability_ts"][0]
            for _, n in ranked
        }  # fmt: skip
        if diagrams:
            paths.append(plot_reliability(diagrams, out / "benchmark_reliability.png"))
    return paths


def write_benchmark(numbers: Mapping[str, Any], out: Path, command: str) -> Path:
    """BENCHMARK.md in `out` with its figures; returns its path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    drawn = [p.name for p in figures(numbers, out)]
    profile = PROFILES[numbers["profile"]]
    sizes = numbers["sizes"]
    missing = numbers["missing"]
    lines = [
        "# Benchmark: does batch-independent normalization with learned noise pay?",
        "",
        f"Command: `{command}` (profile `{numbers['profile']}`: width {profile.get('width', 1):.3g}"
        f", {profile.get('subset', 1):.0%} of the Fashion-MNIST training split, "
        f"{profile.get('epochs')} epochs; {numbers['seeds']} seeds per cell).",
        f"Hardware: {'; '.join(numbers['runs_trained_on']) or 'unknown'}. "
        f"Training time of the runs: {numbers['train_hours']:.1f} hours of wall-clock time "
        "(one run at a time on that hardware"
        + (
            f"; {numbers['untimed_runs']} runs without a recorded time"
            if numbers.get("untimed_runs")
            else ""
        )
        + "; measuring a run takes another 0.5-4 minutes).",
        "",
    ]
    if numbers.get("unusable"):
        lines += [f"Runs with nothing to measure: {', '.join(numbers['unusable'])}.", ""]
    diverged = [f"{r} {m} (seeds {', '.join(map(str, c['diverged']))})"
                for r, ms in numbers["cells"].items() for m, c in ms.items() if c["diverged"]]  # fmt: skip
    if diverged:
        lines += [f"Diverged during training, measured at their last finite epoch: "
                  f"{'; '.join(diverged)}.", ""]  # fmt: skip
    if missing:
        lines += [f"**Partial**: {len(missing)} cells are not trained yet "
                  f"({', '.join(missing[:8])}{', ...' if len(missing) > 8 else ''}); "
                  "their rows are missing or have fewer seeds.", ""]  # fmt: skip
    lines += [
        "## The answer",
        "",
        f"Rule: {SEED_RULE}. Baselines: {', '.join(numbers['baselines'])} (each with its "
        "temperature fitted on validation, and batch norm also as MC batch norm); the best "
        "baseline by seed mean is compared with the entry named in advance (the paper's "
        f"method, {PRIMARY}, in its MC mode: the confirmatory test) and with the best of all "
        "stochnorm entries (exploratory: picked after seeing the means among many, so a "
        "'better' there is weaker evidence; with 3 seeds a 2-SE rule also errs more often "
        "than 5%: the 95% t-quantile of 2 degrees of freedom is 4.3).",
        "",
        *answer_table(numbers),
        "",
        "### Our goal at 4 images per step",
        "",
        *goal_lines(numbers),
        "",
    ]
    for r in _regimes(numbers):
        lines += [f"## {r['title']}", ""]
        if r["pruned"]:
            lines += [f"Pruned: {r['pruned']}.", ""]
        lines += [*regime_table(numbers, r), ""]
    lines += [
        "## How it is measured",
        "",
        f"- Learning rate: the paper's 5-epoch search of each method at batch {REFERENCE_BATCH} "
        f"(in the `{LR_PROFILE.get(numbers['profile'], numbers['profile'])}` profile), scaled "
        "linearly with the batch size; the data-parallel regimes keep the global batch and "
        "its rate. Per method (at batch 32): "
        + ", ".join(f"{m} {v:.4g}" for m, v in _rates(numbers).items())
        + ". "
        + _rule_check(numbers),
        "- Data-parallel regimes: batch norm's statistics over each replica's share of the "
        "global batch, emulated with ghost batches in one process (a 2-process torchrun run "
        "equals ghost batches of 16, tests/test_train.py); population norm is not measured "
        "there.",
        f"- Learned noise (`{NOISE[1:]}`): sigma_S starting at 0.1 per channel, its parameters "
        "stepping at 30 times the learning rate (chosen on validation in the quick screen, "
        "results/quick/bayes-screen).",
        f"- Prediction modes: single pass; MC-{numbers['samples']} for models with noise; "
        f"MC batch norm (K = {numbers['samples']} passes, each with the statistics of one "
        "random training batch of the per-replica size) for batch norm. Temperature "
        f"scaling: one T per mode fitted on the first {sizes['val']} validation images.",
        f"- Test metrics on the first {sizes['test']} test images (AURC: area under the "
        "error-vs-coverage curve rejecting by entropy, ties as one block).",
        f"- Shift: {', '.join(CORRUPTIONS)} (Hendrycks & Dietterich's corruptions, our "
        f"severity constants for 28x28 images: `stochnorm.data.corruptions`) at severities "
        f"1-5 on the first {sizes['shift']} test images (the same images for every model, "
        "so differences between models are paired; the seed SE leaves out the sampling of "
        "those images); the table shows the mean over all, the figure starts from those "
        "images clean.",
        f"- Unfamiliar inputs: {sizes['unfamiliar'] or 1797} UCI handwritten digits "
        "(scikit-learn's copy) framed "
        "as MNIST frames digits, against the test images; AUROC of the uncertainty score, "
        "FPR at 95% TPR with the test images as positives.",
        "",
        *[f"![{name}]({name})" for name in drawn],
        "![corruptions](benchmark_corruptions.png)",
        "",
    ]
    path = out / "BENCHMARK.md"
    atomic_write(path, lambda f: f.write(("\n".join(lines) + "\n").encode()))
    return path


def _rule_check(numbers: Mapping[str, Any]) -> str:
    checked = numbers.get("lr_check", {})
    parts = [f"{m}: rule {c['rule']:.3g}, search {c['searched']:.3g} "
             f"({c['searched'] / c['rule']:.2f}x)"
             for m, c in checked.items() if c["rule"] and c["searched"]]  # fmt: skip
    if not parts:
        return "The rule's check (the search at batch 4) is not run yet."
    return "The rule against the search itself at batch 4: " + "; ".join(parts) + "."


def _rates(numbers: Mapping[str, Any]) -> dict[str, float]:
    rates = {}
    for r in numbers["regimes"]:
        for method, found in numbers["cells"].get(r["name"], {}).items():
            if not r["ghost_batch"]:
                rates.setdefault(method, found["lr"] * REFERENCE_BATCH / r["batch_size"])
    return {m: v for m, v in rates.items() if math.isfinite(v)}
