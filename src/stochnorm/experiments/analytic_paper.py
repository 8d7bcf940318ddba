"""Shekhovtsov & Flach (CVWW 2018), analytic normalization: how accurate the propagated
statistics are (at initialization and after training), and that the normalization of one
sample does not depend on its batch."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from matplotlib import ticker

from ..diagnostics import analytic_statistics, batch_dependence
from ..evaluation import load_run
from ..plots import _save, plt
from ..runs import RunDir
from ..train import build_model, training_inputs
from .base import Experiment, Lab, device_of
from .verdicts import Verdict, combine, compare

# A layer's estimate counts as accurate when sigma_est / sigma_true (mean over channels)
# lies in [1 / BAND, BAND]: within 25%, symmetric on the log scale.
BAND = 1.25


def analytic_run(lab: Lab) -> RunDir:
    """The trained analytic-norm run (with projection, as in the main paper's Fig. 3 and the
    quick results): shared by both experiments of this module and by fig3-projection."""
    return lab.train(lab.config(norm="analytic", project=True), label="analytic-proj")


def statistics_with_noise(model: torch.nn.Module, x: torch.Tensor) -> list[dict[str, Any]]:
    """`analytic_statistics` of `model` on the images `x`, plus per layer `split_half_noise`:
    half the |difference| of log(sigma_est / sigma_true) measured on the two halves of `x`
    (the sampling error of the true sigma)."""
    with torch.no_grad():
        model.train()(x[:1])  # the estimates from the current weights
    rows = analytic_statistics(model, x)
    half = len(x) // 2
    first, second = analytic_statistics(model, x[:half]), analytic_statistics(model, x[half:])
    for row, a, b in zip(rows, first, second, strict=True):
        row["split_half_noise"] = (
            abs(math.log(a["sigma_ratio_mean"]) - math.log(b["sigma_ratio_mean"])) / 2
        )
    return rows


def band_verdict(rows: list[dict[str, Any]], stage: str) -> Verdict:
    """Every layer's mean sigma_est / sigma_true within [1 / BAND, BAND]: the margin is
    log(BAND) minus the largest |log ratio|, against the largest split-half noise."""
    logs = [abs(math.log(r["sigma_ratio_mean"])) for r in rows]
    worst = max(range(len(rows)), key=lambda i: logs[i])
    ratios = ", ".join(f"{r['sigma_ratio_mean']:.2f}" for r in rows)
    errors = max(r["mean_error"] for r in rows)
    return compare(
        math.log(BAND) - logs[worst], max(r["split_half_noise"] for r in rows),
        f"{stage}: sigma_est/sigma_true per layer {ratios} (worst layer {worst + 1}: "
        f"{rows[worst]['sigma_ratio_mean']:.3f}, band [{1 / BAND:.2f}, {BAND:.2f}]); mean "
        f"errors up to {errors:.2f} sigma",
    )  # fmt: skip


class AnalyticStatistics(Experiment):
    """Estimated (propagated) vs true mean and std of every analytic-norm layer's output, on
    the augmented training images, at initialization and after training (analytic norm with
    projection). Measured with `diagnostics.analytic_statistics`, as `stochnorm diagnose
    an-stats` does. The claim holds for a stage when every layer's mean ratio
    sigma_est / sigma_true lies within [0.8, 1.25]; the noise is the split-half sampling
    error of that ratio. The paper claims accuracy without restricting it to initialization,
    so the trained network is held to the same band."""

    name = "analytic-statistics"
    paper = "analytic"
    figure = "Sec. 4"
    claim = (
        "The propagated estimates of the mean and variance of hidden units are accurate "
        "(suitable for initialization and normalization), checked against the statistics "
        "measured on the training data."
    )

    def run(self, lab: Lab) -> dict[str, Any]:
        device = device_of(lab)
        run = analytic_run(lab)
        cfg, data, trained = load_run(run.path, device=device)
        x = training_inputs(data, cfg, count=len(data.train)).to(device)
        init = build_model(cfg, data).to(device)
        return {
            "run": str(run.path),
            "images": len(x),
            "band": [1 / BAND, BAND],
            "init": statistics_with_noise(init, x),
            "trained": statistics_with_noise(trained, x),
        }

    def plot(self, numbers: dict[str, Any], out: Path) -> list[Path]:

        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        for i, stage in enumerate(("init", "trained")):
            rows = numbers[stage]
            layers = [r["layer"] for r in rows]
            mean = [r["sigma_ratio_mean"] for r in rows]
            low = [m - r["sigma_ratio_min"] for m, r in zip(mean, rows, strict=True)]
            high = [r["sigma_ratio_max"] - m for m, r in zip(mean, rows, strict=True)]
            axes[0].errorbar(layers, mean, yerr=[low, high], marker="o", ms=4, capsize=3,
                             color=f"C{i}", label=stage)  # fmt: skip
            axes[1].plot(layers, [r["mean_error"] for r in rows], marker="o", ms=4,
                         color=f"C{i}", label=stage)  # fmt: skip
        lo, hi = numbers["band"]
        axes[0].axhspan(lo, hi, color="grey", alpha=0.15, label=f"[{lo:.2f}, {hi:.2f}]")
        axes[0].axhline(1.0, color="k", lw=0.8)
        axes[0].set(title="sigma_est / sigma_true (mean, min-max over channels)",
                    yscale="log", xlabel="layer")  # fmt: skip
        axes[0].yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        axes[0].yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        axes[0].yaxis.set_minor_formatter(ticker.NullFormatter())
        axes[1].set(title="mean |mu_est - mu_true| / sigma_true", xlabel="layer")
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        return [_save(fig, out / "analytic-statistics.png")]

    def verdict(self, numbers: dict[str, Any]) -> Verdict:
        return combine([
            band_verdict(numbers["init"], "at initialization"),
            band_verdict(numbers["trained"], "after training"),
        ])  # fmt: skip


BATCH_SIZES = (1, 8, 64)
TOLERANCE = 1e-5  # relative: float32 round-off of outputs computed in other batches
FLOOR = 1e-12  # where exact zeros are drawn on the log scale
BATCH1_SUBSET = 0.001  # 54 training images: the steps of the batch-size-1 smoke test


class BatchIndependence(Experiment):
    """Analytic norm's training-mode output for one image against the batch it comes in:
    `diagnostics.batch_dependence` passes each probe image in batches of size 1, 8 and 64
    with random companions and compares with a reference batch of 64 with other companions.
    Holds when the largest difference (analytic norm, at initialization and trained) is
    below TOLERANCE relative to the outputs' size; batch norm, whose outputs do change, is
    the contrast that shows the probe can see a dependence. A short training at batch size
    1 (one epoch on 54 images, the learning rate scaled by 1/32 from the batch-32 run)
    must end with a finite loss."""

    name = "analytic-batch-independence"
    paper = "analytic"
    figure = "Abstract"
    claim = (
        "Analytic normalization does not depend on the batch: a sample's training-mode "
        "output is the same whatever the other samples of its batch and for any batch "
        "size, including 1 (unlike batch norm)."
    )

    def run(self, lab: Lab) -> dict[str, Any]:
        device = device_of(lab)
        probes = 4 if lab.profile == "demo" else 16
        an_run = analytic_run(lab)
        bn_run = lab.train(lab.config(norm="batch"), label="batch")
        models = {}
        for norm, run in (("analytic", an_run), ("batch", bn_run)):
            cfg, data, trained = load_run(run.path, device=device)
            pool = data.train.x[probes:]
            for stage, model in (("init", build_model(cfg, data).to(device)),
                                 ("trained", trained)):  # fmt: skip
                g = torch.Generator().manual_seed(cfg.seed)
                models[f"{norm}-{stage}"] = batch_dependence(
                    model, data.train.x[:probes], pool, BATCH_SIZES, generator=g
                )
        return {
            "batch_sizes": list(BATCH_SIZES),
            "probes": probes,
            "tolerance": TOLERANCE,
            "models": models,
            "batch1_training": train_at_batch_size_1(lab, an_run),
        }

    def plot(self, numbers: dict[str, Any], out: Path) -> list[Path]:

        fig, ax = plt.subplots(figsize=(7, 4))
        sizes = numbers["batch_sizes"]
        names = list(numbers["models"])
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            rows = numbers["models"][name]
            ax.bar(
                [j + (i - (len(names) - 1) / 2) * width for j in range(len(sizes))],
                [max(r["max_rel_diff"], FLOOR) for r in rows], width, color=f"C{i}",
                label=name,
            )  # fmt: skip
        ax.axhline(numbers["tolerance"], color="k", ls="--", lw=1, label="tolerance")
        ax.set_xticks(range(len(sizes)), [str(k) for k in sizes])
        ax.set(yscale="log", xlabel="batch size", ylim=(FLOOR / 2, None),
               ylabel="max |output - reference| / max |output|",
               title=f"train-mode output vs the batch it is in (0 drawn at {FLOOR:g})")  # fmt: skip
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
        return [_save(fig, out / "batch-independence.png")]

    def verdict(self, numbers: dict[str, Any]) -> Verdict:
        tol = numbers["tolerance"]
        models = numbers["models"]
        an = max(r["max_rel_diff"] for k, v in models.items() if k.startswith("analytic")
                 for r in v)  # fmt: skip
        bn = min(r["max_rel_diff"] for k, v in models.items() if k.startswith("batch")
                 for r in v)  # fmt: skip
        independent = compare(
            math.log10(tol) - math.log10(max(an, FLOOR)), 0.0,
            f"analytic norm: largest relative output difference {an:.2g} over batch sizes "
            f"{numbers['batch_sizes']} (init and trained; tolerance {tol:g})",
        )  # fmt: skip
        contrast = compare(
            math.log10(max(bn, FLOOR)) - math.log10(tol), 0.0,
            f"batch norm (contrast): smallest relative difference {bn:.2g}",
        )  # fmt: skip
        step = numbers["batch1_training"]
        finite = math.isfinite(step["train_loss"]) and not step["diverged"]
        batch1 = compare(
            1.0 if finite else -1.0, 0.0,
            f"training at batch size 1: loss {step['train_loss']:.3f} after {step['steps']} "
            f"steps (lr {step['lr']:.2g}; val acc {100 * step['val_acc']:.1f}%)",
        )  # fmt: skip
        return combine([independent, contrast, batch1])


def train_at_batch_size_1(lab: Lab, reference: RunDir) -> dict[str, Any]:
    """A smoke test of training at batch size 1: one epoch of analytic norm + projection on
    BATCH1_SUBSET of the training split (set after the lab's overrides, as are the single
    epoch and the skipped evaluation on the training subset: the run only has to show that
    the steps work), with the batch-32 run's learning rate / 32 (the same step per sample).
    Returns its mean training loss, whether it diverged, its validation accuracy, steps."""
    lr = reference.config().lr / 32
    cfg = lab.config(norm="analytic", project=True, batch_size=1, lr=lr).replace(
        epochs=1, subset=BATCH1_SUBSET, eval_train_size=0
    )
    run = lab.train(cfg, label="analytic-proj-batch1", search_lr=False)
    metrics = run.metrics()
    history = metrics["history"]
    last = history[-1] if history else {}
    return {
        "run": str(run.path),
        "lr": cfg.lr,
        "steps": metrics.get("data", {}).get("train", 0) * len(history),
        "train_loss": last.get("train_loss", math.nan),
        "val_acc": last.get("val_acc", math.nan),
        "diverged": metrics.get("diverged", False),
    }


EXPERIMENTS: list[Experiment] = [AnalyticStatistics(), BatchIndependence()]
