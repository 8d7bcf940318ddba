"""Markdown reports built only from saved files: run directories, and the results of
`stochnorm reproduce`."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import RunDirError
from .experiments import PAPERS, load_result, registry
from .experiments.base import RESULT_FILE
from .experiments.verdicts import FAILS, claim_sentence
from .plots import plot_curves, plot_error_coverage
from .runs import RunDir


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def write_report(runs: Sequence[RunDir], out: Path, title: str = "stochnorm report") -> Path:
    """Write `out`/report.md (one row per run: configuration, final training losses, test
    accuracy, NLL, ECE, Brier) and `out`/curves.png (all runs' curves overlaid)."""
    out.mkdir(parents=True, exist_ok=True)
    loaded = [(run, run.metrics()) for run in runs]
    lines = [
        f"# {title}",
        "",
        "| run | norm | projection | noise | width | train images | epochs | lr "
        "| train loss (train mode) | train loss (eval mode) | val acc % | test acc % | test NLL "
        "| test ECE | test Brier | minutes |",
        "|" + "---|" * 16,
    ]
    for run, m in loaded:
        cfg, last = m["config"], (m["history"][-1] if m["history"] else {})
        test = m.get("final", {}).get("test")
        status = ""
        if not m.get("complete"):
            status = " (diverged)" if m.get("diverged") else " (incomplete)"
        cells = [
            f"{run.name}{status}", cfg["norm"], "yes" if cfg.get("project") else "no",
            cfg.get("noise") or "-", f"{cfg['width']:.3g}", str(m["data"]["train"]),
            f"{len(m['history'])}/{cfg['epochs']}", f"{cfg['lr']:.3g}",
            f"{last.get('train_loss', float('nan')):.4f}",
            f"{last.get('train_eval_loss', float('nan')):.4f}",
            _pct(last["val_acc"]) if "val_acc" in last else "-",
            _pct(test["accuracy"]) if test else "-",
            f"{test['nll']:.3f}" if test else "-",
            f"{test['ece']:.3f}" if test else "-",
            f"{test['brier']:.3f}" if test else "-",
            f"{m.get('train_seconds', 0) / 60:.1f}",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    hardware = sorted({m["provenance"]["hardware"] for _, m in loaded})
    commits = sorted({m["provenance"]["commit"] for _, m in loaded})
    lines += [
        "",
        "Test metrics are those of the last epoch's weights in eval mode (the test set is "
        "never used for selection); ECE uses 15 bins.",
        "",
        f"Hardware: {'; '.join(hardware)}. Code: {', '.join(commits)}.",
        "",
        "![curves](curves.png)",
        "",
        "Training loss: solid = train mode (running mean over the epoch), dashed = the same "
        "weights in eval mode on a fixed training subset.",
        "",
    ]
    lines += _uncertainty_section(runs, out)
    plot_curves({run.name: m["history"] for run, m in loaded}, out / "curves.png")
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _mode_label(mode: str) -> str:
    return "single pass" if mode == "single" else f"MC-{mode.removeprefix('mc')}"


def _uncertainty_section(runs: Sequence[RunDir], out: Path) -> list[str]:
    """The main paper's Table 1 columns for the runs evaluated with `stochnorm evaluate`
    (test set; MC-K only for models with noise) and their error-coverage curves."""
    evaluated = [(run, ev) for run in runs if (ev := run.evaluation()) is not None]
    if not evaluated:
        return []
    modes = []
    for _, ev in evaluated:
        modes += [m for m in ev["test"] if m not in modes]
    labels = [_mode_label(m) for m in modes]
    header = (
        ["run"] + [f"acc % {x}" for x in labels] + [f"NLL {x}" for x in labels]
        + [f"ECE {x}" for x in labels] + [f"AURC % {x}" for x in labels]
        + ["T", "NLL single, T-scaled", "ECE single, T-scaled", "sigma_S / s"]
    )  # fmt: skip
    lines = [
        "## Test set: single pass and Monte-Carlo prediction",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for run, ev in evaluated:
        test = ev["test"]

        def cells(key: str, fmt, test=test) -> list[str]:
            return [fmt(test[m][key]) if m in test else "-" for m in modes]

        ratios = [r["sigma_s_over_s"] for r in ev.get("learned_noise", [])]
        scaled = ev.get("temperature_scaled")  # absent in evaluations before it existed
        calibrated = (
            [f"{scaled['temperature']:.2f}", f"{scaled['test']['nll']:.3f}",
             f"{scaled['test']['ece']:.3f}"] if scaled else ["-"] * 3
        )  # fmt: skip
        row = (
            [run.name] + cells("accuracy", _pct) + cells("nll", "{:.3f}".format)
            + cells("ece", "{:.3f}".format) + cells("aurc_entropy", _pct) + calibrated
            + [" ".join(f"{r:.2f}" for r in ratios) if ratios else "-"]
        )  # fmt: skip
        lines.append("| " + " | ".join(row) + " |")
    plot_error_coverage({run.name: ev["test"] for run, ev in evaluated}, out / "error_coverage.png")
    return [
        *lines,
        "",
        "MC-K averages the softmax of K noisy passes (learned or BN-like noise on); models "
        "without noise have only the single pass. AURC: area under the error-vs-coverage "
        "curve, rejecting by predictive entropy. T: the temperature fitted on the validation "
        "set (post-hoc temperature scaling of the single pass; '-': evaluated before it was "
        "reported). sigma_S / s: learned noise per layer (mean over channels).",
        "",
        "![error vs coverage](error_coverage.png)",
        "",
    ]


def _reproduce_command(record: dict) -> str:
    """The `stochnorm reproduce` call that made a result (its overrides as flags)."""
    words = ["stochnorm reproduce", record["experiment"], "--profile", record["profile"]]
    if record["seed"]:
        words += ["--seed", str(record["seed"])]
    if record.get("seeds", 1) > 1:
        words += ["--seeds", str(record["seeds"])]
    for key, value in record["overrides"].items():
        words += [f"--{key.replace('_', '-')}", str(value)]
    return " ".join(words)


def _overrides(record: dict) -> str:
    """The overrides a result ran under, e.g. "width=1.0" ("" if none)."""
    return ", ".join(f"{k}={v}" for k, v in record["overrides"].items())


def _setting(record: dict) -> str:
    """The profile of a result with the overrides it ran under, e.g. "quick, width=1.0"."""
    overrides = _overrides(record)
    seeds = record.get("seeds", 1)
    parts = [record["profile"], *([f"{seeds} seeds"] if seeds > 1 else []), overrides]
    return ", ".join(p for p in parts if p)


def _anchor(record: dict) -> str:
    """A link target unique per experiment and setting."""
    return re.sub(r"[^a-z0-9]+", "-", f"{record['experiment']} {_setting(record)}".lower())


def _hardware(record: dict) -> str:
    """Where the runs of a result were trained and where its verdict was computed."""
    verdict_on = record["provenance"]["hardware"]
    trained_on = record.get("runs_trained_on")
    if not trained_on or trained_on == [verdict_on]:
        return f"Hardware: {verdict_on}"
    return f"Runs trained on {'; '.join(trained_on)}; verdict computed on {verdict_on}"


def _verdict_parts(verdict: dict) -> list[dict]:
    """The parts of a saved verdict, each with its status and summary (the verdict itself
    when it was not combined from parts)."""
    return verdict.get("parts") or [
        {k: verdict[k] for k in ("status", "summary", "rule") if k in verdict}
    ]


def _rules(verdict: dict) -> list[str]:
    """The distinct decision rules a saved verdict's parts state (older records: none)."""
    return list(dict.fromkeys(p["rule"] for p in _verdict_parts(verdict) if p.get("rule")))


def write_reproduction_report(
    result_dirs: Sequence[Path], out: Path, title: str = "Reproduction of the papers' claims"
) -> Path:
    """Write the markdown file `out` from the saved `stochnorm reproduce` results found in
    `result_dirs` (each an experiment directory with result.json, or a directory of them):
    a summary table, the claims our measurement contradicts, and per experiment the
    paper's claim, our figures, numbers, verdict, profile and hardware."""

    files = []
    for d in map(Path, result_dirs):
        files += (
            [d / RESULT_FILE] if (d / RESULT_FILE).is_file() else sorted(d.glob(f"*/{RESULT_FILE}"))
        )
    if not files:
        raise RunDirError(f"no {RESULT_FILE} under {', '.join(map(str, result_dirs))}")
    records = [(f.parent, load_result(f)) for f in files]
    order = list(PAPERS)
    records.sort(key=lambda r: (order.index(r[1]["paper"]), r[1]["figure"], _setting(r[1])))
    out = Path(out)
    lines = [
        f"# {title}",
        "",
        "Built by `stochnorm report --reproduction` from the result files of `stochnorm "
        "reproduce NAME --profile PROFILE` (rerun one to refresh its entry). Verdicts are "
        "computed from the numbers: a claim holds when our margin exceeds the noise it is "
        "compared with, does not hold when it falls short by more than that noise, and is "
        "inconclusive otherwise.",
        "",
        "Papers: " + "; ".join(f"**{k}** = {v}" for k, v in PAPERS.items()) + ".",
        "",
        "| experiment | paper | figure | profile | verdict |",
        "|---|---|---|---|---|",
    ]
    for _, r in records:
        lines.append(
            f"| [{r['experiment']}](#{_anchor(r)}) | {r['paper']} | "
            f"{r['figure']} | {_setting(r)} | {r['verdict']['status']} |"
        )
    done = {r["experiment"] for _, r in records}
    for name, exp in registry().items():
        if name not in done:
            lines.append(f"| {name} | {exp.paper} | {exp.figure} | - | not run yet |")
    disagreements = [r for _, r in records if r["verdict"]["status"] == FAILS]
    lines += ["", "## Where our measurement disagrees with the paper", ""]
    for r in disagreements:
        failed = [p for p in _verdict_parts(r["verdict"]) if p["status"] == FAILS]
        lines.append(f"- **{r['experiment']}** ({r['paper']}, {r['figure']}, {_setting(r)}):")
        lines += [f"  - {p['summary']}" for p in failed]
    if not disagreements:
        lines.append(
            "None of the measured claims is contradicted (see the inconclusive ones below)."
        )
    for folder, r in records:
        lines += [
            "",
            f"## {r['experiment']} ({_setting(r)})",
            f'<a id="{_anchor(r)}"></a>',
            "",
            f"**Paper** ({PAPERS[r['paper']]}, {r['figure']}): {r['claim']}",
            "",
            f"**Verdict: {claim_sentence(r['verdict']['status'])}.**",
            "",
            *[f"- {p['status']}: {p['summary']}" for p in _verdict_parts(r["verdict"])],
            *[f"- rule: {rule}" for rule in _rules(r["verdict"])],
            *[f"- reported beside it: {note}" for note in r["verdict"].get("notes", [])],
            "",
            f"Profile `{r['profile']}`, seed {r['seed']}, overrides: {_overrides(r) or 'none'}. "
            f"{_hardware(r)}; code {r['provenance']['commit']}. "
            f"Command: `{_reproduce_command(r)}`.",
            "",
        ]
        for fig in r["figures"]:
            rel = os.path.relpath(folder / fig, out.parent)
            lines.append(f"![{r['experiment']}]({rel})")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    return out


def analytic_statistics_markdown(found: dict[str, Any], stage: str) -> str:
    """The tables of `stochnorm diagnose an-stats` from `evaluation.diagnose_analytic`."""
    lines = [
        f"Analytic normalization, estimated vs true statistics per layer, {stage}; true = "
        f"measured over {found['images']} augmented training images. exact_first_layer = "
        f"{found['exact_first_layer']}.",
        "",
        "| layer | channels | mean abs(mu_est - mu_true) / sigma_true | sigma_est / sigma_true "
        "mean | min | max |",
        "|---|---|---|---|---|---|",
    ]
    for r in found["rows"]:
        lines.append(
            f"| {r['layer']} | {r['channels']} | {r['mean_error']:.3f} | "
            f"{r['sigma_ratio_mean']:.3f} | {r['sigma_ratio_min']:.3f} | {r['sigma_ratio_max']:.3f} |"
        )
    lines += [
        "",
        "Each layer's own rule given its true input moments: sqrt(rule variance / true "
        "variance) of the conv output, mean over channels, when the input patch covariance "
        "is reduced to its diagonal (the independence assumption), to same-channel pairs "
        "(spatial correlations kept), to same-offset pairs (cross-channel kept) or replaced "
        "by the separable model C0[c, d] r(a - b) (the channels' covariance at equal "
        "positions times one spatial correlation per displacement; both kinds kept, "
        "in two small factors) or by the between-image model (each image's channel means "
        "with their covariance across images, independent pixels around them):",
        "",
        "| layer | independent | spatial kept | cross-channel kept | separable | between |",
        "|---|---|---|---|---|---|",
    ]
    for r in found["independence_error"]:
        extra = [f"{r[k]:.3f}" if k in r else "-" for k in ("separable", "between")]
        lines.append(
            f"| {r['layer']} | {r['independent']:.3f} | {r['spatial']:.3f} | {r['channel']:.3f} "
            f"| {' | '.join(extra)} |"
        )
    if found.get("rule_errors"):
        lines += ["", *rule_errors_markdown(found["rule_errors"])]
    return "\n".join(lines) + "\n"


def rule_errors_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """The lines of the table of `diagnostics.rule_errors`: every rule on its own (given the
    true moments of its inputs) beside the propagated estimate."""
    lines = [
        "Every step's rule on its own, given the true moments of its inputs, beside the "
        "propagated estimate that carries the errors of all steps before it (medians over "
        "channels; normalizations and exact pass-throughs left out):",
        "",
        "| step | operation | own rule: sigma / sigma_true | abs(mu - mu_true) / sigma_true "
        "| propagated: sigma / sigma_true | abs(mu - mu_true) / sigma_true |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        carried = (
            f"{r['sigma_ratio']:.3f} | {r['mean_error']:.3f}" if "sigma_ratio" in r else "- | -"
        )
        lines.append(
            f"| {r['step']} | {r['operation']} | {r['own_sigma_ratio']:.3f} | "
            f"{r['own_mean_error']:.3f} | {carried} |"
        )
    return lines


def bn_noise_markdown(run: str | Path, summary: dict[str, Any], batches: int) -> str:
    """The table of `stochnorm diagnose bn-noise` from a `summarize_bn_noise` summary."""
    lines = [
        f"BN noise of {run} (batch size {summary['batch_size']}, {batches} random batches "
        "per batch size):",
        "",
        "| layer | z | sigma_V | sigma_U | KS(n S^2/sigma^2, chi2(n-1)) | slope of var vs k |",
        "|---|---|---|---|---|---|",
    ]
    for r in summary["layers"]:
        lines.append(
            f"| {r['layer']} | {r['spatial']} | {r['sigma_v']:.4f} | {r['sigma_u']:.4f} | "
            f"{r['chi2_ks']:.3f} | {r['var_vs_k_slope']:.2f} |"
        )
    slope = summary["var_times_k_vs_z_slope"]
    lines += ["", f"Slope of k * variance against z over layers: {slope:.2f} (model: -1)."]
    return "\n".join(lines) + "\n"
