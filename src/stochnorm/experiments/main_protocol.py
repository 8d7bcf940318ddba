"""Main paper, the training protocol: BN's randomness at a fixed training batch (Fig. 2),
the dependence of SGD on the training batch size (appendix A, Fig. A.1) and the spread of
runs over random seeds against the iterate spread of one run (appendix A, Fig. A.2)."""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..plots import plot_curve_rows, plot_curves, plot_seed_spread
from ..stats import iterate_spread, tail_mean
from .base import Experiment, Lab
from .cases import ANALYTIC_BAYES, run_config, run_summary
from .verdicts import (
    INCONCLUSIVE,
    ITERATE_RULE,
    Verdict,
    combine,
    compare,
    decide,
    improvement_verdict,
)

TAIL = 10  # epochs over which end points are averaged (base.tail_mean's default)


def with_mode_gap(history: Sequence[dict]) -> list[dict]:
    """The epochs of `history` that have both losses, each with `mode_gap` =
    ln(train-mode loss / eval-mode loss of the same weights on a fixed training subset):
    how much BN's batch statistics raise the training loss (main paper Figs. 1 and 2), as
    a ratio so that runs at different loss levels compare."""
    return [
        {**row, "mode_gap": math.log(row["train_loss"] / row["train_eval_loss"])}
        for row in history
        if row.get("train_loss", 0) > 0 and row.get("train_eval_loss", 0) > 0
    ]


def with_log_loss(history: Sequence[dict], key: str) -> list[dict]:
    """The epochs of `history` with a positive `key`, each with `log_loss` = ln(key)."""
    return [{**row, "log_loss": math.log(row[key])} for row in history if row.get(key, 0) > 0]


def seed_deviation(histories: Sequence[Sequence[dict]], key: str, last: int = TAIL) -> dict:
    """How far runs that differ only in their seed end apart, against the iterate spread of
    the first run (main paper Fig. A.2, "runs with different random seeds are within the
    standard deviation of iterates of a single run").

    With m_i the mean of `key` over the last `last` epochs of run i, s_i the standard
    deviation of those iterates and n_i their number: `deviation` = max_i |m_i - m_0|,
    `iterate_std` = s_0, `seed_std` = the standard deviation of the m_i, and
    `standard_error` = max_i sqrt(s_i^2 / n_i + s_0^2 / n_0), the standard error of
    m_i - m_0 if the iterates were independent (they are correlated, so this is a lower
    bound on the uncertainty of the deviation)."""
    if len(histories) < 2:
        raise ValueError("seed_deviation needs at least two runs")
    means = [tail_mean(h, key, last) for h in histories]
    stds = [iterate_spread(h, key, last) for h in histories]
    counts = [sum(1 for row in h[-last:] if key in row) for h in histories]
    return {
        "tail_means": means,
        "iterate_std": stds[0],
        "deviation": max(abs(m - means[0]) for m in means[1:]),
        "seed_std": statistics.stdev(means),
        "standard_error": max(
            math.sqrt(stds[i] ** 2 / counts[i] + stds[0] ** 2 / counts[0])
            for i in range(1, len(means))
        ),
    }


# ---------------------------------------------------------------------------------------
# Fig. 2: the normalization batch

# Samples in BN's statistics in the larger-normalization-batch run: the paper's 1024 in the
# full profile (32x the compute of a batch-32 step, a GPU run). The demo and quick profiles
# use 256, still 8x the training batch, so that a CPU finishes them (quick: about 8x the
# 10-20 min of a quick BN run); with fewer training images than that the extra samples
# repeat (they are drawn with replacement).
NORM_BATCH = {"demo": 256, "quick": 256}
PAPER_NORM_BATCH = 1024


def norm_batch_of(profile: str) -> int:
    """The normalization batch of the larger-batch run in `profile`."""
    return NORM_BATCH.get(profile, PAPER_NORM_BATCH)


class NormalizationBatch(Experiment):
    """Main paper §1, Fig. 2: BN at training batch 32 with the learning rate found for it,
    then the same with `norm_batch` samples in BN's statistics and that same rate. Verdict:
    (1) ln(train-mode / eval-mode training loss) shrinks, (2) validation loss rises and
    (3) validation accuracy falls, each on the mean of the last epochs against the larger
    iterate spread of the two runs."""

    name = "fig2-normalization-batch"
    paper = "main"
    figure = "Fig. 2"
    claim = (
        "With the training batch (32), the loss and the learning rate unchanged, computing "
        "BN's statistics over a normalization batch of 1024 (the batch plus 992 random other "
        "samples) makes BN less stochastic (the train-mode training loss comes closer to the "
        "eval-mode one) and worsens validation loss and accuracy (CIFAR-10: 93.0 +- 0.3 vs "
        "92.4 +- 0.3 %)."
    )

    def run(self, lab: Lab) -> dict[str, Any]:
        norm_batch = norm_batch_of(lab.profile)
        small = lab.train(lab.config(norm="batch"), label="batch")
        lr = small.config().lr  # the rate found for batch 32, kept for the larger norm batch
        large_cfg = lab.config(norm="batch", norm_batch=norm_batch).replace(lr=lr)
        large = lab.train(large_cfg, label=f"batch-nb{norm_batch}", search_lr=False)
        return {
            "batch_size": large_cfg.batch_size,
            "norm_batch": norm_batch,
            "runs": {
                f"BN norm batch {large_cfg.batch_size}": run_summary(small),
                f"BN norm batch {norm_batch}": run_summary(large),
            },
        }

    def plot(self, numbers: dict[str, Any], out: Path) -> list[Path]:
        histories = {k: v["history"] for k, v in numbers["runs"].items()}
        return [plot_curves(histories, out / "fig2.png")]

    def verdict(self, numbers: dict[str, Any]) -> Verdict:
        runs, nb = numbers["runs"], numbers["norm_batch"]
        small_key, large_key = (f"BN norm batch {n}" for n in (numbers["batch_size"], nb))
        small, large = runs[small_key]["history"], runs[large_key]["history"]
        gaps = [with_mode_gap(small), with_mode_gap(large)]
        if all(gaps):
            gap_small, gap_large = (tail_mean(g, "mode_gap", TAIL) for g in gaps)
            stochasticity = compare(
                gap_small - gap_large,
                max(iterate_spread(g, "mode_gap", TAIL) for g in gaps),
                f"ln(train-mode / eval-mode training loss) {gap_small:.3f} at normalization "
                f"batch {numbers['batch_size']} vs {gap_large:.3f} at {nb}",
            )  # fmt: skip
        else:
            stochasticity = Verdict(
                INCONCLUSIVE, "no eval-mode training loss recorded (eval_train_size = 0)"
            )
        val_loss_small, val_loss_large = (tail_mean(h, "val_loss", TAIL) for h in (small, large))
        val_loss = compare(
            val_loss_large - val_loss_small,
            max(iterate_spread(h, "val_loss", TAIL) for h in (small, large)),
            f"val loss {val_loss_small:.4f} -> {val_loss_large:.4f} with normalization batch {nb}",
        )  # fmt: skip
        accuracy = improvement_verdict(runs, small_key, large_key, "val_acc")
        return combine([stochasticity, val_loss, accuracy])


# ---------------------------------------------------------------------------------------
# Fig. A.1: the training batch size

BATCH_SIZES = {"demo": (32, 128)}
DEFAULT_BATCH_SIZES = (32, 128, 512)
A1_NORMS = ("none", "batch")
A1_TITLES = {"none": "standard training", "batch": "batch normalization"}


class BatchSize(Experiment):
    """Main paper appendix A, "Dependence on Batch Size", Fig. A.1: no normalization and BN
    at several training batch sizes, one seed (so one initialization), the rate found per
    run (tabulated in the demo profile). Verdict: per normalization the range of the final
    validation accuracies exceeds the iterate spread; with BN the smallest batch beats the
    largest; and the largest still optimizes the training loss (`_fit_at_equal_steps`)."""

    name = "figA1-batch-size"
    paper = "main"
    figure = "Fig. A.1"
    claim = (
        "From the same initialization, with the learning rate found per run, the results of "
        "SGD depend significantly on the training batch size with and without BN; with BN, "
        "larger batches lose accuracy although the training loss is still optimized."
    )

    def run(self, lab: Lab) -> dict[str, Any]:
        sizes = BATCH_SIZES.get(lab.profile, DEFAULT_BATCH_SIZES)
        runs: dict[str, dict[str, Any]] = {norm: {} for norm in A1_NORMS}
        train_size = None  # known after the first run
        for norm in A1_NORMS:
            for size in sorted(sizes):
                # a batch larger than the training set makes no step (drop_last): skipped
                if train_size is not None and size > train_size:
                    continue
                # the seed, hence the initialization, is the same for every batch size
                run = lab.train(lab.config(norm=norm, batch_size=size), label=f"{norm}-bs{size}")
                train_size = run.metrics()["data"]["train"]
                if size <= train_size:
                    runs[norm][str(size)] = run_summary(run)
        kept = [s for s in sorted(sizes) if train_size is not None and s <= train_size]
        skipped = [s for s in sizes if s not in kept]
        if len(kept) < 2:
            raise ConfigError(
                f"{self.name}: fewer than two of the batch sizes {sizes} fit the training set"
            )
        return {"batch_sizes": kept, "skipped": skipped, "searched_lr": lab.searches_lr,
                "train_size": train_size, "runs": runs}  # fmt: skip

    def plot(self, numbers: dict[str, Any], out: Path) -> list[Path]:
        groups = {
            A1_TITLES[norm]: {
                f"batch {size} (lr {entry['lr']:.3g})": entry["history"]
                for size, entry in by_size.items()
            }
            for norm, by_size in numbers["runs"].items()
        }
        return [plot_curve_rows(groups, out / "figA1.png")]

    def verdict(self, numbers: dict[str, Any]) -> Verdict:
        sizes = [str(s) for s in numbers["batch_sizes"]]
        lr_note = "" if numbers["searched_lr"] else " (tabulated lr, the same for every size)"
        parts = []
        for norm in A1_NORMS:
            histories = [numbers["runs"][norm][s]["history"] for s in sizes]
            accs = [tail_mean(h, "val_acc", TAIL) for h in histories]
            noise = max(iterate_spread(h, "val_acc", TAIL) for h in histories)
            listed = ", ".join(f"{s}: {100 * a:.2f}%" for s, a in zip(sizes, accs, strict=True))
            parts.append(
                compare(
                    max(accs) - min(accs),
                    noise,
                    f"{norm}: val acc by batch size {listed}{lr_note} (range "
                    f"{100 * (max(accs) - min(accs)):.2f}, iterate spread {100 * noise:.2f})",
                )  # fmt: skip
            )
        by_size = numbers["runs"]["batch"]
        small, large = sizes[0], sizes[-1]
        ends = {f"BN batch {s}": by_size[s] for s in (small, large)}
        parts.append(improvement_verdict(ends, f"BN batch {small}", f"BN batch {large}", "val_acc"))
        parts.append(self._fit_at_equal_steps(numbers, small, large))
        return combine(parts)

    @staticmethod
    def _fit_at_equal_steps(numbers: dict[str, Any], small: str, large: str) -> Verdict:
        """The paper's "although optimizing the training loss succeeds" for BN's largest
        batch, at an equal number of steps (equal epochs give the large batch far fewer):
        its eval-mode training loss at its end is not above the smallest batch's loss at
        the first epoch by which that run had made as many steps (the deterministic
        network's fit; the train-mode loss also carries BN's batch noise, which shrinks
        with the batch), against the iterate spread of the large run's log loss."""
        by_size = numbers["runs"]["batch"]
        has_eval = "train_eval_loss" in by_size[small]["history"][0]
        key = "train_eval_loss" if has_eval else "train_loss"
        h_small, h_large = by_size[small]["history"], by_size[large]["history"]
        size = numbers.get("train_size")
        if size is None:  # a result saved before the training-set size was kept
            return Verdict(INCONCLUSIVE, "the training-set size is unknown: rerun the experiment")
        steps = {s: size // int(s) for s in (small, large)}  # per epoch (last batch dropped)
        total = steps[large] * len(h_large)
        epoch = min(len(h_small), math.ceil(total / steps[small]))
        loss_small, loss_large = h_small[epoch - 1][key], h_large[-1][key]
        noise = iterate_spread(with_log_loss(h_large, key), "log_loss", TAIL)
        margin = math.log(loss_small / loss_large)
        text = (
            f"BN {'eval' if has_eval else 'train'}-mode training loss after {total} steps: "
            f"batch {large} {loss_large:.4f} ({len(h_large)} epochs) vs batch {small} "
            f"{loss_small:.4f} (epoch {epoch}, {steps[small] * epoch} steps) (log ratio "
            f"{margin:+.3f}, iterate spread of the log loss {noise:.3f})"
        )
        return decide(margin, noise, text, rule=ITERATE_RULE, tolerant=True)


# ---------------------------------------------------------------------------------------
# Fig. A.2: seed to seed

SEEDS = {"demo": 2}
DEFAULT_SEEDS = 3
# Run labels: BN and the paper's proposed method (analytic norm + projection + learned
# noise, in the configuration the noise search chose, as Table 1 judges it), which Fig. A.2
# shows, and analytic norm with projection alone beside them; BN alone where a run must
# cost little.
A2_CASES = {
    "demo": ("batch",),
    "default": ("batch", ANALYTIC_BAYES, "analytic-proj"),
}


class SeedSpread(Experiment):
    """Main paper appendix A, "Statistical Significance", Fig. A.2: runs with seeds
    lab.seed, lab.seed + 1, ... (initialization, batch order, augmentation; the split and
    the rate of the first seed's run fixed). Verdict per normalization: the largest
    deviation of a seed's final validation accuracy from the first seed's stays below the
    first run's iterate standard deviation, by more than the standard error of the
    difference (`seed_deviation`)."""

    name = "figA2-seed-spread"
    paper = "main"
    figure = "Fig. A.2"
    claim = (
        "With the training/validation split and the learning rate fixed, runs that differ "
        "only in the random seed (initialization, batches, augmentation) end within the "
        "standard deviation of the iterates of a single run (validation accuracy)."
    )

    def run(self, lab: Lab) -> dict[str, Any]:
        count = SEEDS.get(lab.profile, DEFAULT_SEEDS)
        seeds = [lab.seed + i for i in range(count)]
        if "seed" in lab.overrides:
            raise ConfigError(f"{self.name}: the lab's overrides fix the seed; drop it")
        seeded = dataclasses.replace(lab, seeds=count)
        runs: dict[str, dict[str, Any]] = {}
        for label in A2_CASES.get(lab.profile, A2_CASES["default"]):
            found = seeded.train_seeds(run_config(lab, label), label=label)
            runs[label] = {str(s): run_summary(run) for s, run in zip(seeds, found, strict=True)}
        return {"seeds": seeds, "runs": runs}

    def plot(self, numbers: dict[str, Any], out: Path) -> list[Path]:
        groups = {
            label: {f"seed {seed}": entry["history"] for seed, entry in by_seed.items()}
            for label, by_seed in numbers["runs"].items()
        }
        return [plot_seed_spread(groups, out / "figA2.png", window=TAIL)]

    def verdict(self, numbers: dict[str, Any]) -> Verdict:
        parts = []
        for label, by_seed in numbers["runs"].items():
            found = seed_deviation([e["history"] for e in by_seed.values()], "val_acc", TAIL)
            listed = "/".join(f"{100 * m:.2f}" for m in found["tail_means"])
            parts.append(
                compare(
                    found["iterate_std"] - found["deviation"],
                    found["standard_error"],
                    f"{label}: val acc over seeds {listed}% (std {100 * found['seed_std']:.2f}),"
                    f" max deviation from seed {numbers['seeds'][0]} "
                    f"{100 * found['deviation']:.2f} vs its iterate std "
                    f"{100 * found['iterate_std']:.2f} (standard error "
                    f"{100 * found['standard_error']:.2f})",
                )  # fmt: skip
            )
        return combine(parts)


EXPERIMENTS: list[Experiment] = [NormalizationBatch(), BatchSize(), SeedSpread()]
