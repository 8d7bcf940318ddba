"""Figures drawn from saved per-epoch histories (lists of dicts as in metrics.json)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .stats import chi2_quantile  # noqa: E402


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _curve_panels(row, histories: Mapping[str, Sequence[Mapping[str, float]]],
                  prefix: str = "") -> None:  # fmt: skip
    """Draw on three axes: training loss (train mode solid, eval mode on a fixed training
    subset dashed, log scale), validation loss and validation accuracy against epochs, one
    colour per run; `prefix` starts each title."""
    for i, (name, history) in enumerate(histories.items()):
        colour = f"C{i}"
        epochs = [r["epoch"] for r in history]
        row[0].plot(epochs, [r["train_loss"] for r in history], color=colour, label=name)
        if history and "train_eval_loss" in history[0]:
            row[0].plot(
                epochs, [r["train_eval_loss"] for r in history], color=colour, ls="--",
                label=f"{name} (eval mode)",
            )  # fmt: skip
        row[1].plot(epochs, [r["val_loss"] for r in history], color=colour, label=name)
        row[2].plot(epochs, [100 * r["val_acc"] for r in history], color=colour, label=name)
    row[0].set(title=f"{prefix}training loss", xlabel="epoch", yscale="log")
    row[1].set(title=f"{prefix}validation loss (NLL)", xlabel="epoch")
    row[2].set(title=f"{prefix}validation accuracy, %", xlabel="epoch")
    for ax in row:
        ax.grid(alpha=0.3)
    row[0].legend(fontsize=7)
    row[2].legend(fontsize=7, loc="lower right")


def plot_curves(histories: Mapping[str, Sequence[Mapping[str, float]]], path: Path) -> Path:
    """Training loss (train mode, solid; eval mode on a fixed training subset, dashed),
    validation loss and validation accuracy against epochs, one colour per run."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    _curve_panels(axes, histories)
    return _save(fig, path)


def plot_learned_noise(
    histories: Mapping[str, Sequence[Mapping]],
    path: Path,
    *,
    reference: Sequence[float] = (),
    reference_name: str = "paper",
) -> Path:
    """Learned sigma_S / s of every noise layer against epochs (the `sigma_s_over_s` lists
    of the history rows, log scale), one panel per run and one colour per layer; the
    `reference` values per layer (e.g. the paper's) as crosses after the last epoch."""
    fig, axes = plt.subplots(1, len(histories), figsize=(5.5 * len(histories), 3.8),
                             squeeze=False)  # fmt: skip
    for ax, (name, history) in zip(axes[0], histories.items(), strict=True):
        rows = [r for r in history if "sigma_s_over_s" in r]
        epochs = [r["epoch"] for r in rows]
        layers = len(rows[0]["sigma_s_over_s"]) if rows else 0
        for k in range(layers):
            ax.plot(epochs, [r["sigma_s_over_s"][k] for r in rows], color=f"C{k}",
                    label=f"layer {k + 1}")  # fmt: skip
            if k < len(reference) and epochs:
                ax.plot([epochs[-1] * 1.04], [reference[k]], "x", color=f"C{k}")
        ax.set(title=f"{name}: learned sigma_S / s (x: {reference_name})", xlabel="epoch",
               yscale="log")  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    return _save(fig, path)


def plot_error_coverage(reports: Mapping[str, Mapping[str, Mapping]], path: Path) -> Path:
    """Error rate of the kept samples against the kept fraction (main paper Fig. A.3),
    rejecting by predictive entropy (left) and by max probability (right); one line per
    run and prediction mode. `reports`: {label: uncertainty_report(...)}."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, score in zip(axes, ("entropy", "max-prob"), strict=True):
        for i, (label, report) in enumerate(reports.items()):
            for j, (mode, entry) in enumerate(report.items()):
                curve = entry[f"curve_{score}"]
                ax.plot(
                    curve["coverage"], [100 * e for e in curve["error"]], color=f"C{i}",
                    ls=("-", "--", ":", "-.")[j % 4],
                    label=f"{label} {mode} (AURC {100 * entry[f'aurc_{score}']:.2f})",
                )  # fmt: skip
        ax.set(title=f"rejecting by {score}", xlabel="coverage (kept fraction)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    axes[0].set_ylabel("error on kept samples, %")
    return _save(fig, path)


def plot_robustness(reports: Mapping[str, Mapping], path: Path) -> Path:
    """Accuracy against the std of Gaussian input noise (left) and the FGSM step (right),
    main paper Fig. A.4; one colour per run, one line style per prediction mode."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, (kind, key) in zip(axes, (("gaussian", "std"), ("fgsm", "eps")), strict=True):
        for i, (label, report) in enumerate(reports.items()):
            for j, (mode, rows) in enumerate(report[kind].items()):
                ax.plot(
                    [r[key] for r in rows], [100 * r["accuracy"] for r in rows], marker="o",
                    ms=3, color=f"C{i}", ls=("-", "--", ":")[j % 3],
                    label=f"{label} {mode} ({100 * rows[0]['accuracy']:.1f})",
                )  # fmt: skip
        ax.set(xlabel="noise std" if kind == "gaussian" else "FGSM eps", title=kind)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("test accuracy, %")
    return _save(fig, path)


def plot_bn_noise(result: Mapping, summary: Mapping, path: Path, qq_layer: int = 6) -> Path:
    """Main paper Fig. 4 on our network: Q-Q plot of n S^2 / sigma^2 against chi^2(n - 1)
    for one layer at the training batch size; BN output variance against the batch size k
    per layer (log-log, model slope -1); k * variance against the spatial size z."""

    k0 = summary["batch_size"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    layer = result["layers"][qq_layer - 1]
    entry = next(e for e in layer["per_batch_size"] if e["k"] == k0)
    observed = torch.tensor(entry["chi2"], dtype=torch.float64).sort().values
    probs = (torch.arange(len(observed), dtype=torch.float64) + 0.5) / len(observed)
    reference = chi2_quantile(probs, entry["n"] - 1)
    axes[0].plot(reference, observed, ".", ms=2)
    lims = [min(reference[0], observed[0]).item(), max(reference[-1], observed[-1]).item()]
    axes[0].plot(lims, lims, "k--", lw=1)
    ks = summary["layers"][qq_layer - 1]["chi2_ks"]
    axes[0].set(
        title=f"layer {qq_layer}, k={k0}, n={entry['n']}: KS {ks:.3f}",
        xlabel=f"chi2({entry['n'] - 1}) quantiles", ylabel="observed n S^2 / sigma^2",
    )  # fmt: skip
    for i, lay in enumerate(result["layers"]):
        ks_ = [e["k"] for e in lay["per_batch_size"]]
        axes[1].loglog(ks_, [e["output_var"] for e in lay["per_batch_size"]], "o-", ms=3,
                       color=f"C{i}", label=f"layer {lay['layer']}")  # fmt: skip
    ref_k = [result["batch_sizes"][0], result["batch_sizes"][-1]]
    top = max(e["output_var"] for lay in result["layers"] for e in lay["per_batch_size"])
    axes[1].loglog(ref_k, [top, top * ref_k[0] / ref_k[1]], "k--", lw=1, label="slope -1")
    axes[1].set(title="BN output variance vs batch size", xlabel="batch size k")
    axes[1].legend(fontsize=6, ncol=2)
    z = [r["spatial"] for r in summary["layers"]]
    var_k = [k0 * next(e for e in lay["per_batch_size"] if e["k"] == k0)["output_var"]
             for lay in result["layers"]]  # fmt: skip
    axes[2].loglog(z, var_k, "o")
    for r, v in zip(summary["layers"], var_k, strict=True):
        axes[2].annotate(str(r["layer"]), (r["spatial"], v), fontsize=7)
    axes[2].set(title=f"k * variance vs spatial size (k={k0})", xlabel="spatial size z")
    axes[2].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


def running_mean_std(values: Sequence[float], window: int) -> tuple[list[float], list[float]]:
    """Trailing running mean and sample standard deviation of `values` over the last
    `window` entries up to each position (fewer at the start; std 0 for a single value):
    the solid line and the shaded band of the main paper's Fig. A.2."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    means, stds = [], []
    for end in range(1, len(values) + 1):
        chunk = values[max(0, end - window) : end]
        mean = sum(chunk) / len(chunk)
        means.append(mean)
        if len(chunk) > 1:
            stds.append((sum((v - mean) ** 2 for v in chunk) / (len(chunk) - 1)) ** 0.5)
        else:
            stds.append(0.0)
    return means, stds


def plot_curve_rows(
    groups: Mapping[str, Mapping[str, Sequence[Mapping[str, float]]]], path: Path
) -> Path:
    """One row per group of runs (e.g. per normalization, main paper Fig. A.1), each with
    the panels of `plot_curves`: training loss (train mode solid, eval mode dashed, log
    scale), validation loss and validation accuracy against epochs, one colour per run."""
    fig, axes = plt.subplots(len(groups), 3, figsize=(13, 3.6 * len(groups)), squeeze=False)
    for row, (group, histories) in zip(axes, groups.items(), strict=True):
        _curve_panels(row, histories, prefix=f"{group}: ")
    return _save(fig, path)


def plot_seed_spread(
    groups: Mapping[str, Mapping[str, Sequence[Mapping[str, float]]]],
    path: Path,
    *,
    key: str = "val_acc",
    window: int = 10,
) -> Path:
    """Main paper Fig. A.2: one panel per group (e.g. per normalization) with the running
    mean of `key` (accuracies in %) over `window` epochs of every run (solid) and, shaded,
    the running mean +- the running standard deviation of the iterates of the group's first
    run."""
    scale, unit = (100, ", %") if key.endswith("acc") else (1, "")
    title = key.replace("val_", "validation ").replace("acc", "accuracy").replace("_", " ")
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 3.8), squeeze=False)
    for ax, (group, histories) in zip(axes[0], groups.items(), strict=True):
        for i, (name, history) in enumerate(histories.items()):
            epochs = [r["epoch"] for r in history]
            mean, std = running_mean_std([scale * r[key] for r in history], window)
            ax.plot(epochs, mean, color=f"C{i}", label=name)
            if i == 0:
                ax.fill_between(
                    epochs, [m - s for m, s in zip(mean, std, strict=True)],
                    [m + s for m, s in zip(mean, std, strict=True)], color=f"C{i}", alpha=0.2,
                    label=f"{name}: std of iterates",
                )  # fmt: skip
        ax.set(title=f"{group}: {title}{unit} (running mean, {window} epochs)", xlabel="epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def plot_grouped_bars(
    values: Mapping[str, Mapping[str, float]], path: Path, *, ylabel: str, title: str = ""
) -> Path:
    """One group of bars per key of `values` (e.g. a run), one bar per inner key (e.g. a
    prediction mode: single pass, MC-10, MC-30), coloured by inner key and labelled with its
    value; inner keys missing from a group leave a gap (main paper Table 1 as a chart)."""
    groups = list(values)
    bars = list(dict.fromkeys(k for inner in values.values() for k in inner))
    width = 0.8 / max(len(bars), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(groups) + 2), 4))
    for j, bar in enumerate(bars):
        offset = (j - (len(bars) - 1) / 2) * width
        xs = [i + offset for i, g in enumerate(groups) if bar in values[g]]
        ys = [values[g][bar] for g in groups if bar in values[g]]
        drawn = ax.bar(xs, ys, width=width, color=f"C{j}", label=bar)
        ax.bar_label(drawn, fmt="%.3f", fontsize=6, rotation=90, padding=2)
    ax.set_xticks(range(len(groups)), groups, rotation=25, ha="right", fontsize=8)
    ax.set(ylabel=ylabel, title=title)
    ax.margins(y=0.15)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def plot_seed_means(
    panels: Mapping[str, Mapping[str, Mapping[str, tuple[float, float]]]], path: Path
) -> Path:
    """One row per metric (outer key), one panel per group (e.g. a regime): a point with a
    two-standard-error bar per entry, {metric: {group: {entry: (mean, se)}}}; entries share a
    colour across panels."""
    metrics_, groups = list(panels), list(dict.fromkeys(g for m in panels.values() for g in m))
    names = list(dict.fromkeys(e for m in panels.values() for g in m.values() for e in g))
    colours = {name: plt.cm.tab20(i % 20) for i, name in enumerate(names)}
    fig, axes = plt.subplots(len(metrics_), len(groups), squeeze=False,
                             figsize=(3.2 * len(groups) + 1.5, 0.25 * len(names) + 2.2 * len(metrics_)))  # fmt: skip
    for i, metric in enumerate(metrics_):
        for j, group in enumerate(groups):
            ax = axes[i][j]
            found = panels[metric].get(group, {})
            for k, name in enumerate(n for n in names if n in found):
                mean, se = found[name]
                ax.errorbar(mean, k, xerr=2 * se, fmt="o", color=colours[name], capsize=3)
            ax.set_yticks(range(len(found)), [n for n in names if n in found], fontsize=7)
            ax.invert_yaxis()
            ax.set(title=f"{group}: {metric}")
            ax.title.set_fontsize(8)
            ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)


def plot_severity_curves(
    curves: Mapping[str, Mapping[str, Sequence[float]]], path: Path, *, ylabel: str
) -> Path:
    """One panel per group (e.g. a regime), one line per entry: a value (e.g. accuracy under
    corruption, mean over corruptions and seeds) against severity 0 (clean) to 5."""
    fig, axes = plt.subplots(1, len(curves), squeeze=False, figsize=(4.5 * len(curves), 3.6))
    for ax, (group, lines) in zip(axes[0], curves.items(), strict=True):
        for i, (name, ys) in enumerate(lines.items()):
            ax.plot(range(len(ys)), ys, marker="o", ms=3, color=plt.cm.tab20(i % 20),
                    ls="-" if i < 20 else "--", label=name)  # fmt: skip
        ax.set(title=group, xlabel="severity (0 = clean)", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    return _save(fig, path)


def plot_reliability(diagrams: Mapping[str, Mapping[str, Sequence[float]]], path: Path) -> Path:
    """Reliability diagrams, one panel per entry: accuracy against mean confidence per
    confidence bin (`metrics.reliability`), bars shaded by the bin's share of samples."""
    fig, axes = plt.subplots(1, len(diagrams), squeeze=False, figsize=(3.4 * len(diagrams), 3.4))
    for ax, (name, d) in zip(axes[0], diagrams.items(), strict=True):
        bins = len(d["count"])
        edges = [b / bins for b in range(bins)]
        total = max(sum(d["count"]), 1)
        for left, n, acc in zip(edges, d["count"], d["accuracy"], strict=True):
            if n:
                ax.bar(left, acc, width=1 / bins, align="edge", color="C0",
                       alpha=0.25 + 0.75 * min(1.0, 5 * n / total), edgecolor="k", lw=0.3)  # fmt: skip
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set(title=name, xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
        ax.title.set_fontsize(8)
    return _save(fig, path)


def plot_image_rows(rows: Mapping[str, Sequence[torch.Tensor]], path: Path, *,
                    columns: Sequence[str]) -> Path:  # fmt: skip
    """A grid of grey images [1, H, W] (or [H, W]) in [0, 1]: one row per key of `rows`,
    titled by `columns` in the first row."""
    n = max(len(images) for images in rows.values())
    fig, axes = plt.subplots(len(rows), n, squeeze=False, figsize=(1.2 * n + 0.8, 1.2 * len(rows)))
    for i, (name, images) in enumerate(rows.items()):
        for j in range(n):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(images):
                ax.imshow(images[j].squeeze(0).numpy(), cmap="gray", vmin=0, vmax=1)
            if i == 0 and j < len(columns):
                ax.set_title(columns[j], fontsize=7)
        axes[i][0].set_ylabel(name, fontsize=7)
    return _save(fig, path)
