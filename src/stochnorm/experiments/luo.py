"""Luo et al. (2019): batch norm = population normalization + gamma decay.

Luo et al. decompose BN into population normalization (PN: the population statistics
instead of the batch's, `norm="population"`) plus an implicit regularizer that acts as an
explicit penalty on the scales ("gamma decay", `TrainConfig.gamma_decay` adds
`gamma_decay * sum of s^2` to the loss); their learning dynamics say that BN converges with
a large maximum and effective learning rate. We train BN, PN and PN + gamma decay under
the one protocol and compare validation curves and the effective learning rate of the
scales (`stochnorm.diagnostics.scale_step_sizes`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .. import data as datasets
from ..diagnostics import scale_step_sizes
from ..evaluation import load_run
from ..labels import POPULATION_GAMMA_DECAY
from ..plots import _save, plot_curves, plt
from ..runs import RunDir
from ..stats import iterate_spread, tail_mean
from ..train import augment_batch, build_model
from .base import Experiment, Lab, device_of
from .cases import run_summary
from .verdicts import FAILS, HOLDS, INCONCLUSIVE, Verdict, combine, compare

# The coefficient of the committed quick runs (a population-norm label's default), so that
# the run is found among them; the quick and full profiles also try ten times that.
GAMMA_DECAY = POPULATION_GAMMA_DECAY
LARGER_GAMMA_DECAY = 1e-3

# Training batches the effective learning rate is averaged over, per profile.
MEASURE_BATCHES = {"demo": 8, "quick": 50, "quick-full": 50, "full": 100}
TINY = 1e-300  # guards the logarithm of a zero step


def luo_cases(profile: str) -> dict[str, dict[str, Any]]:
    """The runs by label: BN, PN, PN + gamma decay (and a larger decay outside demo)."""
    cases = {
        "batch": {"norm": "batch"},
        "population": {"norm": "population"},
        "population-gd": {"norm": "population", "gamma_decay": GAMMA_DECAY},
    }
    if profile != "demo":
        cases["population-gd-large"] = {"norm": "population", "gamma_decay": LARGER_GAMMA_DECAY}
    return cases


def training_batches(
    data: datasets.Splits, batch_size: int, count: int, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`count` shuffled, augmented training batches of `batch_size`, as training draws them."""
    g = torch.Generator().manual_seed(seed)
    batches = datasets.batches(data.train, batch_size, g, drop_last=True)
    for x, y in itertools.islice(batches, count):
        yield augment_batch(x, data.fill, g), y


def measure_scale_steps(run: RunDir, batches: int, device: torch.device) -> dict[str, Any]:
    """The effective learning rate of the scales of `run`, per normalization layer, at
    initialization (the run's own starting weights, rebuilt from its seed, with its initial
    learning rate) and at the end (its final checkpoint, with the learning rate of its last
    epoch), each averaged over the same `batches` augmented training batches."""
    cfg, data, model = load_run(run.path, device=device)
    history = run.metrics()["history"]
    last_lr = history[-1]["lr"] if history else cfg.lr
    init_model = build_model(cfg, data).to(device)
    out = {}
    for stage, net, lr in (("init", init_model, cfg.lr), ("final", model, last_lr)):
        steps = training_batches(data, cfg.batch_size, batches, cfg.seed)
        layers = scale_step_sizes(net, steps, lr, gamma_decay=cfg.gamma_decay)
        out[stage] = {"lr": lr, "layers": layers}
    return out


def log_ratio(numbers: dict, a: str, b: str, stage: str = "final") -> tuple[float, float, int]:
    """Mean over layers of log(effective lr of `a` / that of `b`), its standard error from
    the batch-to-batch spread of both measurements, and how many layers have a > b."""
    rows_a = numbers[a]["scale_steps"][stage]["layers"]
    rows_b = numbers[b]["scale_steps"][stage]["layers"]
    logs, variances, larger = [], [], 0
    for ra, rb in zip(rows_a, rows_b, strict=True):
        logs.append(math.log(max(ra["effective_lr"], TINY) / max(rb["effective_lr"], TINY)))
        variances.append(
            (ra["effective_lr_se"] / max(ra["effective_lr"], TINY)) ** 2
            + (rb["effective_lr_se"] / max(rb["effective_lr"], TINY)) ** 2
        )
        larger += ra["effective_lr"] > rb["effective_lr"]
    return sum(logs) / len(logs), math.sqrt(sum(variances)) / len(logs), larger


def pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def closeness(gap: float, noise: float, summary: str) -> Verdict:
    """The claim that |gap| is small: holds within one `noise`, does not hold beyond three,
    else (and when there is no noise estimate) inconclusive."""
    if noise <= 0:
        return Verdict(INCONCLUSIVE, f"{summary}; no iterate spread to judge by", -abs(gap), 0.0)
    status = HOLDS if abs(gap) <= noise else FAILS if abs(gap) > 3 * noise else INCONCLUSIVE
    return Verdict(status, summary, -abs(gap), noise)


class PopulationNormGammaDecay(Experiment):
    """BN vs PN vs PN + gamma decay: validation accuracy, and the effective learning rate of
    the scales.

    Effective learning rate of the scales, per normalization layer l: the relative size of
    one SGD step of its scale vector, `lr * ||grad_s J|| / ||s||`, averaged over augmented
    training batches (J: the training objective on a batch in train mode, gamma decay
    included; `diagnostics.scale_step_sizes`). This is ||s_{t+1} - s_t|| / ||s_t|| of a
    plain SGD step (momentum multiplies it by the same factor in every run). It is the
    quantity behind Luo et al.'s "converges with a large effective learning rate": the
    layer output is linear in s, so it is the relative change of the output scale per step,
    and it grows with the learning rate a normalization tolerates, with the gradient noise
    of batch statistics, and as a penalty keeps ||s|| small. Measured on what every run
    leaves (its seed and final checkpoint), so that runs found in the cache count too: at
    initialization with the run's initial rate and at the end with its last rate. The
    verdict uses the end (converged) value.
    """

    name = "luo-population-norm"
    paper = "luo"
    figure = "Sec. 5"
    claim = (
        "BN is population normalization plus an explicit gamma decay of the scales: PN + "
        "gamma decay reaches a validation accuracy close to BN's (closer than PN alone), and "
        "BN trains with a larger effective learning rate of the scales."
    )

    def run(self, lab: Lab) -> dict[str, Any]:
        device = device_of(lab)
        batches = MEASURE_BATCHES.get(lab.profile, 50)
        numbers: dict[str, Any] = {"gamma_decay": GAMMA_DECAY, "runs": {}}
        for label, settings in luo_cases(lab.profile).items():
            cfg = lab.config(**settings)
            run = lab.train(cfg, label=label)
            summary = run_summary(run)
            summary["gamma_decay"] = cfg.gamma_decay
            summary["scale_steps"] = measure_scale_steps(run, batches, device)
            numbers["runs"][label] = summary
        numbers["measure_batches"] = batches
        return numbers

    def plot(self, numbers: dict[str, Any], out: Path) -> list[Path]:
        runs = numbers["runs"]
        curves = plot_curves({k: v["history"] for k, v in runs.items()}, out / "luo-curves.png")
        return [curves, plot_scale_steps(runs, out / "luo-scale-lr.png")]

    def verdict(self, numbers: dict[str, Any]) -> Verdict:
        runs = numbers["runs"]
        acc = {k: tail_mean(v["history"], "val_acc") for k, v in runs.items()}
        spread = {k: iterate_spread(v["history"], "val_acc") for k, v in runs.items()}
        noise = max(spread["batch"], spread["population"], spread["population-gd"])
        gap_pn = acc["batch"] - acc["population"]
        gap_gd = acc["batch"] - acc["population-gd"]
        zeta = runs["population-gd"]["gamma_decay"]
        closer = compare(
            abs(gap_pn) - abs(gap_gd), noise,
            f"val acc (last-10 mean) BN {pct(acc['batch'])}, PN {pct(acc['population'])}, "
            f"PN + gamma decay {zeta:g} {pct(acc['population-gd'])}: |BN - PN+gd| "
            f"{100 * abs(gap_gd):.2f} vs |BN - PN| {100 * abs(gap_pn):.2f} points (iterate "
            f"spread {100 * noise:.2f})",
        )  # fmt: skip
        close = closeness(
            gap_gd, noise,
            f"PN + gamma decay within the iterate spread of BN ({100 * gap_gd:+.2f} points)",
        )  # fmt: skip
        mean_log, se, larger = log_ratio(runs, "batch", "population")
        layers = len(runs["batch"]["scale_steps"]["final"]["layers"])
        lr_part = compare(
            mean_log, 2 * se,
            f"effective lr of the scales at the end, BN / PN = {math.exp(mean_log):.2f}x "
            f"(geometric mean over {layers} layers; BN larger in {larger}; lr "
            f"{runs['batch']['lr']:.3g} vs {runs['population']['lr']:.3g}; noise = 2 "
            f"standard errors over {numbers['measure_batches']} batches, in log units "
            f"{2 * se:.3f})",
        )  # fmt: skip
        verdict = combine([closer, close, lr_part])
        extra = []
        gd_log, _, _ = log_ratio(runs, "batch", "population-gd")
        extra.append(f"BN / (PN + gamma decay) effective lr {math.exp(gd_log):.2f}x")
        if "population-gd-large" in runs:
            big, big_acc = runs["population-gd-large"], acc["population-gd-large"]
            extra.append(
                f"with gamma decay {big['gamma_decay']:g}: val acc {pct(big_acc)} "
                f"({100 * (big_acc - acc['batch']):+.2f} points vs BN)"
            )
        diverged = [k for k, v in runs.items() if v["diverged"]]
        if diverged:
            extra.append(f"diverged: {', '.join(diverged)}")
        return replace(
            verdict, summary=f"{verdict.summary}. Also: {'; '.join(extra)}", notes=tuple(extra)
        )


def plot_scale_steps(runs: dict[str, Any], path: Path) -> Path:
    """Per layer: the effective learning rate of the scales at initialization and at the end
    of training (log scale, error bars: standard errors over batches), and the RMS of the
    scales at the end, one colour per run."""

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for i, (label, summary) in enumerate(runs.items()):
        for ax, stage in zip(axes[:2], ("init", "final"), strict=True):
            rows = summary["scale_steps"][stage]["layers"]
            ax.errorbar(
                [r["layer"] for r in rows], [r["effective_lr"] for r in rows],
                yerr=[r["effective_lr_se"] for r in rows], marker="o", ms=3, capsize=2,
                color=f"C{i}", label=f"{label} (lr {summary['scale_steps'][stage]['lr']:.2g})",
            )  # fmt: skip
        rows = summary["scale_steps"]["final"]["layers"]
        axes[2].plot([r["layer"] for r in rows], [r["scale_rms"] for r in rows], marker="o",
                     ms=3, color=f"C{i}", label=label)  # fmt: skip
    axes[0].set(title="effective lr of s at initialization", yscale="log")
    axes[1].set(title="effective lr of s at the end", yscale="log")
    axes[2].set(title="RMS of s at the end", ylabel="||s|| / sqrt(C)")
    for ax in axes:
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("lr ||grad_s J|| / ||s|| per step")
    return _save(fig, path)


EXPERIMENTS: list[Experiment] = [PopulationNormGammaDecay()]
