"""Bjorck, Gomes, Selman & Weinberger, "Understanding Batch Normalization" (NeurIPS 2018),
on our All-CNN-C: three of its central claims, one experiment each.

The paper trains a 110-layer ResNet on CIFAR-10. Its main observation (abstract) is that
batch norm (BN) makes much larger learning rates usable, and that those large rates are
what improves generalization. It explains the limit on the rate of an unnormalized network
by the signal in deep layers: activations grow with depth and, after a large parameter
update, grow exponentially with depth, with large gradients in the deep layers; BN
trivially avoids both. It traces the ill-conditioning back to random initialization: the
condition number of a product of random Gaussian matrices grows exponentially with the
number of factors.

The paper itself is not available offline; the section numbers in `figure` are our
recollection of where each claim sits (the learning-rate study, the signal by depth, the
random-matrix argument) and should be read as "the analogue of".

- `bjorck-max-lr` (Sec. 2): short runs over a log grid of learning rates with and
  without BN (`lab.train(..., search_lr=False)`); the largest stable rate of each, and
  where BN's best accuracy lies.
- `bjorck-depth-signal` (Sec. 3): activation and gradient magnitudes by depth at
  initialization and after one large plain gradient step (`diagnostics.layer_signal`,
  `diagnostics.sgd_step_`).
- `bjorck-conditioning` (Sec. 4): singular values of products of d random n x n Gaussian
  matrices with N(0, 1/n) entries, against d (pure linear algebra, no training), in
  `bjorck_conditioning`.
"""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .. import data as datasets
from ..diagnostics import layer_signal, sgd_step_
from ..plots import _save, plt  # pyplot with the Agg backend that plots selects
from ..runs import RunDir
from ..stats import iterate_spread, linear_fit, mean_and_error
from ..train import build_model
from .base import Experiment, Lab, device_of, per_profile
from .verdicts import FAILS, HOLDS, INCONCLUSIVE, Verdict, combine, compare

NORMS = ("batch", "none")
CLASSES = 10  # Fashion-MNIST and CIFAR-10 both have ten classes


# --------------------------------------------------------------------------------------
# 1. The largest usable learning rate with and without BN
# --------------------------------------------------------------------------------------

# (log10 of the learning rates, epochs of each run) per profile. The rate falls to 0.1x
# over the run (lr_decay_epochs = the run's epochs), the same schedule for every rate.
MAX_LR_GRID: dict[str, tuple[tuple[float, ...], int]] = {
    "demo": ((-2.0, -0.5, 1.0), 3),
    "quick": ((-2.5, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0), 8),
    "quick-full": ((-2.5, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0), 3),
    "full": ((-2.5, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0), 30),
}
SPREAD_EPOCHS = 3  # the iterate spread of a short run: its last three epochs


def rate_summary(run: RunDir) -> dict[str, Any]:
    """What the learning-rate study keeps of one short run: the rate, whether it diverged
    (a non-finite loss, or one above 100 x ln(classes): `train.divergence`), the final
    training loss and validation accuracy (None after a divergence), the spread of the
    validation accuracy over the last epochs, and `stable`: no divergence and a final
    training loss below ln(classes), the loss of a uniform prediction (the network learned
    something and its loss did not blow up)."""
    metrics = run.metrics()
    history = metrics.get("history", [])
    diverged = bool(metrics.get("diverged", False))
    last = history[-1] if history and not diverged else {}
    train_loss = last.get("train_loss")
    return {
        "run": str(run.path),
        "lr": metrics["config"]["lr"],
        "diverged": diverged,
        "epochs_done": len(history),
        "train_loss": train_loss,
        "val_acc": last.get("val_acc"),
        "val_acc_spread": iterate_spread(history, "val_acc", SPREAD_EPOCHS) if last else None,
        "stable": (not diverged and train_loss is not None and train_loss < math.log(CLASSES)),
        "history": history,
    }


def stable_bracket(rates_log10: Sequence[float], stable: Sequence[bool]) -> tuple[float, float]:
    """Bounds (log10) on the largest stable rate from a grid: [the largest stable rate of
    the grid, the next grid rate above it) -- -inf if no rate was stable, +inf if the
    largest rate of the grid was."""
    ok = [i for i, s in enumerate(stable) if s]
    if not ok:
        return -math.inf, rates_log10[0]
    top = ok[-1]
    upper = rates_log10[top + 1] if top + 1 < len(rates_log10) else math.inf
    return rates_log10[top], upper


def order_of_magnitude_verdict(numbers: dict[str, Any], decades: float = 1.0) -> Verdict:
    """The claim "BN's largest stable rate is at least `decades` orders of magnitude above
    the unnormalized network's", from grid brackets: with BN's in [b, b') and the plain
    network's in [a, a'), the true difference lies in (b - a', b' - a). Holds if even the
    lower end reaches `decades`, does not hold if even the upper end stays at or below it,
    else inconclusive. margin: the measured difference b - a minus `decades`; noise: one
    grid step (the resolution of the difference)."""
    grid = numbers["grid_log10"]
    step = min(b - a for a, b in zip(grid, grid[1:], strict=False)) if len(grid) > 1 else 1.0
    bn_lo, bn_hi = stable_bracket(grid, [r["stable"] for r in numbers["runs"]["batch"]])
    no_lo, no_hi = stable_bracket(grid, [r["stable"] for r in numbers["runs"]["none"]])
    lower, upper = bn_lo - no_hi, bn_hi - no_lo

    def show(lo: float, hi: float) -> str:
        if lo == -math.inf:
            return f"none stable (all >= {10**hi:.3g} unstable)"
        return f">= {10**lo:.3g}" + (" (top of the grid)" if hi == math.inf else "")

    measured = bn_lo - no_lo if math.isfinite(bn_lo) and math.isfinite(no_lo) else None
    summary = (
        f"largest stable lr: BN {show(bn_lo, bn_hi)}, no norm {show(no_lo, no_hi)}; "
        f"BN/no-norm ratio between 10^{lower:.2g} and 10^{upper:.2g} "
        f"(claim: >= 10^{decades:g}; grid step {step:g} decades)"
    )
    if not math.isfinite(bn_lo):
        status = INCONCLUSIVE
        summary += "; BN was stable at no rate of the grid"
    elif lower >= decades:
        status = HOLDS
    elif upper <= decades:
        status = FAILS
    else:
        status = INCONCLUSIVE
    margin = None if measured is None else measured - decades
    return Verdict(status, summary, margin, step)


def high_rate_accuracy_verdict(numbers: dict[str, Any]) -> Verdict:
    """The claim "BN's best accuracy comes at a high rate": BN's best final validation
    accuracy over the rates above the unnormalized network's largest stable one exceeds
    its best over the rates at which the unnormalized network is stable, by more than the
    larger iterate spread (last epochs) of the two runs. Inconclusive if either set of
    rates is empty."""
    bn, plain = numbers["runs"]["batch"], numbers["runs"]["none"]
    plain_ok = [p["lr"] for p in plain if p["stable"]]
    if not plain_ok:
        return Verdict(INCONCLUSIVE, "BN's best rate: the unnormalized net was stable at no rate")
    edge = max(plain_ok)
    high = [b for b in bn if b["stable"] and b["lr"] > edge]
    low = [b for b, p in zip(bn, plain, strict=True) if b["stable"] and p["stable"]]
    if not high or not low:
        return Verdict(
            INCONCLUSIVE,
            f"BN's accuracy above the unnormalized net's largest stable rate {edge:.3g}: "
            + ("BN was stable at no such rate" if not high else "no rate where both train"),
        )
    best_high = max(high, key=lambda r: r["val_acc"])
    best_low = max(low, key=lambda r: r["val_acc"])
    margin = best_high["val_acc"] - best_low["val_acc"]
    noise = max(best_high["val_acc_spread"], best_low["val_acc_spread"])
    return compare(
        margin, noise,
        f"BN val acc {100 * best_high['val_acc']:.2f}% at lr {best_high['lr']:.3g} (unstable "
        f"without BN) vs {100 * best_low['val_acc']:.2f}% at lr {best_low['lr']:.3g} (best "
        f"rate both nets train at; margin {100 * margin:+.2f}, spread {100 * noise:.2f})",
    )  # fmt: skip


class MaxLearningRate(Experiment):
    """Short runs over a log grid of learning rates, with BN and without normalization.

    Per profile (`MAX_LR_GRID`): demo 3 rates 1.5 decades apart (0.01 to 10), 3 epochs; quick
    8 rates half a decade apart (0.003 to 10), 8 epochs; quick-full and full the same grid,
    3 and 30 epochs.
    The run length is set before the lab applies the user's overrides, so `--epochs` (and
    `--lr-decay-epochs`) given on the command line win; the rate decays to 0.1x over the
    run unless `--lr-decay-epochs` says otherwise. The unnormalized network gets the
    data-dependent initialization of our training protocol (main paper, appendix A.1)."""

    name = "bjorck-max-lr"
    paper = "bjorck"
    figure = "Sec. 2"
    claim = (
        "Batch normalization lets the network train at learning rates an order of magnitude "
        "larger than the largest rate at which the unnormalized network stays stable, and "
        "its best accuracy comes at such a high rate (Bjorck et al.: BN's benefit comes "
        "from the large rates it makes usable)."
    )

    def run(self, lab: Lab) -> dict[str, Any]:
        grid, epochs = per_profile(lab, MAX_LR_GRID)
        run_epochs = lab.config(epochs=epochs).epochs  # after the user's overrides
        runs: dict[str, list[dict[str, Any]]] = {}
        cfg = None
        for norm in NORMS:
            cfg = lab.config(norm=norm, epochs=epochs, lr_decay_epochs=run_epochs)
            runs[norm] = [
                rate_summary(
                    lab.train(cfg.replace(lr=10**e), label=f"bjorck-lr-{norm}", search_lr=False)
                )
                for e in grid
            ]
        return {
            "grid_log10": list(grid),
            "epochs": cfg.epochs,
            "lr_decay_epochs": cfg.lr_decay_epochs,
            "runs": runs,
        }

    def plot(self, numbers: dict[str, Any], out: Path) -> list[Path]:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for i, norm in enumerate(NORMS):
            rows = numbers["runs"][norm]
            label = {"batch": "BN", "none": "no normalization"}[norm]
            lrs = [r["lr"] for r in rows]
            acc = [100 * r["val_acc"] if r["val_acc"] is not None else math.nan for r in rows]
            loss = [r["train_loss"] if r["train_loss"] is not None else math.nan for r in rows]
            axes[0].plot(lrs, acc, "o-", color=f"C{i}", label=label)
            axes[1].plot(lrs, loss, "o-", color=f"C{i}", label=label)
            bad = [r["lr"] for r in rows if not r["stable"]]
            axes[0].plot(bad, [5.0 + 3 * i] * len(bad), "x", color=f"C{i}", ms=9,
                         label=f"{label}: unstable")  # fmt: skip
        axes[1].axhline(math.log(CLASSES), color="k", ls=":", lw=1, label="ln 10 (chance)")
        axes[0].set(xscale="log", xlabel="initial learning rate", ylabel="final val acc, %",
                    title=f"{numbers['epochs']}-epoch runs", ylim=(0, 100))  # fmt: skip
        axes[1].set(xscale="log", yscale="log", xlabel="initial learning rate",
                    title="final training loss (missing: diverged)")  # fmt: skip
        for ax in axes:
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
        return [_save(fig, out / "bjorck-max-lr.png")]

    def verdict(self, numbers: dict[str, Any]) -> Verdict:
        return combine([order_of_magnitude_verdict(numbers), high_rate_accuracy_verdict(numbers)])


# --------------------------------------------------------------------------------------
# 2. The signal by depth at initialization and after one large step
# --------------------------------------------------------------------------------------

# (plain gradient-step sizes, number of initializations, probe batch size) per profile
DEPTH_SIGNAL: dict[str, tuple[tuple[float, ...], int, int]] = {
    "demo": ((0.1, 1.0), 3, 128),
    "quick": ((0.01, 0.03, 0.1, 0.3, 1.0), 5, 128),
    "full": ((0.01, 0.03, 0.1, 0.3, 1.0), 8, 128),
}


def _copy_with_grads(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of `model` that keeps the gradients (deepcopy drops a Parameter's .grad)."""
    moved = copy.deepcopy(model)
    for p, q in zip(model.parameters(), moved.parameters(), strict=True):
        q.grad = None if p.grad is None else p.grad.clone()
    return moved


def activation_growth(before: dict, after: dict) -> list[float]:
    """ln(rms after / rms before) of the activations leaving blocks 1..L-1 (the inputs of
    layers 2..L of a `layer_signal` result)."""
    return [
        math.log(b["input_rms"] / a["input_rms"])
        for a, b in zip(before["layers"][1:], after["layers"][1:], strict=True)
    ]


def gradient_growth(before: dict, after: dict) -> list[float]:
    """ln(||dL/dW|| after / before) for layers 1..L of two `layer_signal` results."""
    return [
        math.log(b["grad_norm"] / a["grad_norm"])
        for a, b in zip(before["layers"], after["layers"], strict=True)
    ]


def activation_slopes(numbers: dict[str, Any], norm: str, step: int) -> list[float]:
    """Per initialization: the least-squares slope against depth of the log activation
    growth caused by step size number `step` (ln of the growth factor per layer)."""
    slopes = []
    for seed in numbers["nets"][norm]:
        values = activation_growth(seed["init"], seed["after"][step])
        slopes.append(linear_fit(range(1, len(values) + 1), values)[0])
    return slopes


def deep_gradient_growth(numbers: dict[str, Any], norm: str, step: int) -> list[float]:
    """Per initialization: the mean of ln(||dL/dW|| after / before) over the deeper half
    of the layers (those past the middle), for step size number `step`."""
    values = []
    for seed in numbers["nets"][norm]:
        growth = gradient_growth(seed["init"], seed["after"][step])
        values.append(statistics.fmean(growth[len(growth) // 2 :]))
    return values


def _difference(plain: list[float], bn: list[float], text: str) -> Verdict:
    """compare() of the mean over initializations of plain - bn against twice its
    standard error; `text` is completed with the numbers."""
    diff, error = mean_and_error([p - b for p, b in zip(plain, bn, strict=True)])
    return compare(
        diff, 2 * error,
        text.format(plain=math.exp(statistics.fmean(plain)), bn=math.exp(statistics.fmean(bn)))
        + f" (difference of logs {diff:+.3f} +- {error:.3f} s.e., {len(plain)} inits)",
    )  # fmt: skip


def activation_verdict(numbers: dict[str, Any]) -> Verdict:
    """The claim "after the largest step the activations grow with depth faster without BN
    than with it": the per-layer growth slopes, no norm minus BN, against 2 s.e."""
    step = len(numbers["step_lrs"]) - 1
    return _difference(
        activation_slopes(numbers, "none", step), activation_slopes(numbers, "batch", step),
        f"after a step of {numbers['step_lrs'][step]:g} the activations grow with depth by "
        "x{plain:.3g} per layer without norm, x{bn:.3g} with BN",
    )  # fmt: skip


def gradient_verdict(numbers: dict[str, Any]) -> Verdict:
    """The claim "after the largest step the gradients of the deep layers grow more without
    BN than with it": the mean log growth of the deeper half's weight gradients, no norm
    minus BN, against 2 s.e."""
    step = len(numbers["step_lrs"]) - 1
    return _difference(
        deep_gradient_growth(numbers, "none", step), deep_gradient_growth(numbers, "batch", step),
        "the deeper half's weight gradients grow by x{plain:.3g} without norm, x{bn:.3g} "
        "with BN",
    )  # fmt: skip


class DepthSignal(Experiment):
    """Per-layer activation and gradient magnitudes of All-CNN-C against depth, with BN and
    without, at initialization and after one plain gradient step (no momentum) of several
    sizes, on one probe batch of training images, in train mode (BN uses the probe's batch
    statistics). Several initializations (seeds lab.seed, lab.seed + 1, ...).

    Initialization: `stochnorm.train.build_model`, i.e. the networks that the training
    experiments train. The unnormalized net gets the main paper's data-dependent
    initialization (every channel zero-mean, unit-variance on 128 training images),
    which keeps its activations at a constant scale at initialization. Bjorck et al. use
    a standard (variance-preserving) random initialization instead; PyTorch's default
    (weights of variance 1/(3 fan_in)) is not one: it shrinks the signal by about 2.4x
    per layer, which would hide the effect, so the data-dependent one is the closer match.
    A step of size 1 without momentum moves the weights as far as ten steps of 0.1 with
    the training's momentum of 0.9."""

    name = "bjorck-depth-signal"
    paper = "bjorck"
    figure = "Sec. 3"
    claim = (
        "Without normalization, one large gradient step makes the activations grow "
        "exponentially with depth, and with them the gradients of the deep layers; batch "
        "normalization keeps both bounded (Bjorck et al.: what limits the learning rate of "
        "an unnormalized network)."
    )

    def run(self, lab: Lab) -> dict[str, Any]:
        steps, inits, batch = per_profile(lab, DEPTH_SIGNAL)
        device = device_of(lab)
        cfg0 = lab.config(norm="batch")
        data = datasets.prepare(cfg0.dataset, subset=cfg0.subset, split_seed=cfg0.split_seed)
        g = torch.Generator().manual_seed(lab.seed)
        idx = torch.randperm(len(data.train), generator=g)[: min(batch, len(data.train))]
        x, y = data.train.x[idx].to(device), data.train.y[idx].to(device)
        nets: dict[str, list[dict[str, Any]]] = {}
        for norm in NORMS:
            nets[norm] = []
            for k in range(inits):
                cfg = lab.config(norm=norm, seed=lab.seed + k)
                model = build_model(cfg, data).to(device).train()
                init = layer_signal(model, x, y)
                after = []
                for lr in steps:
                    after.append(layer_signal(sgd_step_(_copy_with_grads(model), lr), x, y))
                nets[norm].append({"seed": cfg.seed, "init": init, "after": after})
        return {"step_lrs": list(steps), "probe_batch": len(idx), "nets": nets}

    def plot(self, numbers: dict[str, Any], out: Path) -> list[Path]:
        fig, axes = plt.subplots(2, 2, figsize=(12, 8))
        axes = axes.flatten()
        top = len(numbers["step_lrs"]) - 1
        steps = numbers["step_lrs"]
        for i, norm in enumerate(NORMS):
            label = {"batch": "BN", "none": "no norm"}[norm]
            seeds = numbers["nets"][norm]
            for when, ls in (("init", "--"), ("after", "-")):
                signal = [s["init"] if when == "init" else s["after"][top] for s in seeds]
                rows = signal[0]["layers"]
                act = [statistics.fmean(s["layers"][j]["input_rms"] for s in signal)
                       for j in range(1, len(rows))]  # fmt: skip
                grad = [statistics.fmean(s["layers"][j]["grad_norm"] for s in signal)
                        for j in range(len(rows))]  # fmt: skip
                name = f"{label}, " + ("init" if when == "init" else f"after step {steps[top]:g}")
                axes[0].plot(range(1, len(rows)), act, "o" + ls, color=f"C{i}", ms=3, label=name)
                axes[1].plot([r["layer"] for r in rows], grad, "o" + ls, color=f"C{i}", ms=3,
                             label=name)  # fmt: skip
            for ax, measure in ((axes[2], activation_slopes), (axes[3], deep_gradient_growth)):
                stats = [mean_and_error(measure(numbers, norm, j)) for j in range(len(steps))]
                ax.errorbar(
                    steps, [math.exp(m) for m, _ in stats],
                    yerr=[math.exp(m) * 2 * e for m, e in stats], fmt="o-", color=f"C{i}",
                    ms=4, capsize=2, label=f"{label} (+- 2 s.e.)",
                )  # fmt: skip
        axes[0].set(yscale="log", xlabel="depth (blocks)", ylabel="rms activation",
                    title="activations leaving each block")  # fmt: skip
        axes[1].set(yscale="log", xlabel="layer", ylabel="||dL/dW||", title="weight gradients")
        axes[2].set(
            xscale="log",
            yscale="log",
            xlabel="size of one plain gradient step",
            ylabel="factor per layer",
            title="activation growth with depth (fitted)",
        )
        axes[3].set(xscale="log", yscale="log", xlabel="size of one plain gradient step",
                    ylabel="factor (geometric mean)",
                    title="growth of the deeper half's weight gradients")  # fmt: skip
        for ax in axes:
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
        return [_save(fig, out / "bjorck-depth-signal.png")]

    def verdict(self, numbers: dict[str, Any]) -> Verdict:
        return combine([activation_verdict(numbers), gradient_verdict(numbers)])


EXPERIMENTS: list[Experiment] = [MaxLearningRate(), DepthSignal()]
