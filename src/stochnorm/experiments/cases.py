"""The runs that several experiments share, by label ("batch", "analytic-proj-bayes",
"weight-proj-bnlike", ...): their configurations in the lab's profile, the BN noise
measurement that the BN-like runs copy, and what the experiments keep of a run (its
summary and evaluation).

Per-profile settings (PROFILE_SETTINGS): the demo profile measures BN noise at 4 batch
sizes with 10 batches each, draws 2 and 3 MC samples and perturbs 200 test images; quick
and full use the defaults of `stochnorm diagnose bn-noise` (batch sizes 4 ... 256, 40
batches, so that the BN-like sigmas equal those of results/bn-noise/bn-noise.json and the
committed `-bnlike` runs are reused), the paper's MC-10 and MC-30, and 2,000 (quick) or all
10,000 (full) perturbed test images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..checkpoint import load_json, save_json
from ..config import TrainConfig
from ..errors import StochnormError
from ..evaluation import measure_bn_noise
from ..labels import TUNED, TUNED_SUFFIX, needs_bn_noise, parse_label, with_bn_noise
from ..runs import RunDir
from ..stats import tail_mean
from ..train import prepare_data
from .base import Lab, config_key, exclusive, per_profile
from .verdicts import TAIL

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


def profile_settings(lab: Lab) -> dict[str, Any]:
    """The measurement settings of `lab`'s profile (quick's for an unlisted profile)."""
    return per_profile(lab, PROFILE_SETTINGS)


def bn_noise_measurement(lab: Lab) -> dict[str, Any]:
    """The BN run of the lab ("batch") and its noise: `diagnostics.measure_bn_noise` with
    the profile's batch sizes and batch count and the lab's seed, computed once and kept in
    the lab's run directory. Returns {"run", "summary", "measurements"}."""
    run = lab.train(lab.config(**parse_label("batch")), label="batch")
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
    """The configuration of run `label` (`stochnorm.labels`) in the lab; a "-bnlike" label
    gets the per-layer sigma_V, sigma_U measured on the lab's BN run at its training batch
    size, a "-sbn" label that sigma_U as its initial sigma_S, a "-bayes-tuned" label the
    noise configuration that `noise_search` chose."""
    settings = parse_label(label)
    if settings.get(TUNED):
        return run_config(lab, label.removesuffix(TUNED_SUFFIX) + noise_search(lab)["chosen"])
    if needs_bn_noise(settings):
        settings = with_bn_noise(settings, bn_noise_measurement(lab)["summary"])
    return lab.config(**settings)


# The learned-noise configurations that the noise search compares, as label suffixes: the
# paper's (sigma_S from 0.1, SGD at the network's rate), a 30x step for the noise
# parameters, sigma_S from BN's measured sigma_U per layer, and Adam for the noise
# parameters alone (from 0.1 and from BN's sigma_U). The paper's ~1.7 million steps let
# sigma settle at the balance of data term and KL; a short schedule may not (main paper
# section 3.5 reports sigma_S / s of 0.02-0.6; the quick runs' stayed near 0.1).
NOISE_CANDIDATES = ("-bayes", "-bayes-f30", "-bayes-sbn", "-bayes-adam", "-bayes-sbn-adam")
NOISE_SEARCH_BASE = "analytic-proj"  # the proposed method; weight norm takes its choice
# The Bayes runs the experiments judge (Table 1, Figs. 6-7, A.2-A.4): learned noise in the
# configuration the noise search chose (its candidates include the paper's setting).
WEIGHT_BAYES, ANALYTIC_BAYES = "weight-proj" + TUNED_SUFFIX, NOISE_SEARCH_BASE + TUNED_SUFFIX
# The search's runs have seed lab.seed + SEARCH_SEED_OFFSET (their own initialization,
# batch order and noise), so that the judged runs (seeds lab.seed, lab.seed + 1, ...) are
# trained afresh, not the one run that won on the validation set.
SEARCH_SEED_OFFSET = 100


def noise_search(lab: Lab) -> dict[str, Any]:
    """The noise configuration of "-bayes-tuned" runs: NOISE_SEARCH_BASE trained with every
    NOISE_CANDIDATES suffix (seed lab.seed + SEARCH_SEED_OFFSET, each at its own searched
    rate) and the one with the lowest final validation NLL (eval mode: the mean parameters)
    chosen; diverged runs cannot be chosen, ties go to the earlier candidate. The test set
    is never looked at; the validation set is, as for any setting chosen on it, so the
    judged runs' validation figures favour the chosen setting a little. Returns {"base",
    "rule", "seed", "chosen", "candidates": {suffix: {run, lr, val_nll, val_acc, diverged}}}."""
    seed = lab.seed + SEARCH_SEED_OFFSET
    candidates = {}
    for suffix in NOISE_CANDIDATES:
        label = NOISE_SEARCH_BASE + suffix
        cfg = run_config(lab, label).replace(seed=seed)
        summary = run_summary(lab.train(cfg, label=f"search-{label}-seed{seed}"))
        val = summary["final"].get("val", {})
        candidates[suffix] = {
            "run": summary["run"], "lr": summary["lr"], "diverged": summary["diverged"],
            "val_nll": val.get("nll", math.nan), "val_acc": val.get("accuracy", math.nan),
        }  # fmt: skip
    usable = [k for k, c in candidates.items() if not c["diverged"] and math.isfinite(c["val_nll"])]
    if not usable:
        raise StochnormError(f"noise search: every candidate of {NOISE_SEARCH_BASE} diverged")
    return {
        "base": NOISE_SEARCH_BASE,
        "rule": "lowest final validation NLL (eval mode), one seed per candidate",
        "seed": seed,
        "chosen": min(usable, key=lambda k: candidates[k]["val_nll"]),
        "candidates": candidates,
    }


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
    return len(prepare_data(run.config()).test)


def evaluated_runs(lab: Lab, labels: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per label: `run_summary` of the run, its noise setting and its evaluation."""
    out = {}
    for label, run in trained_runs(lab, labels).items():
        out[label] = {**run_summary(run), "noise": run.config().noise,
                      "evaluation": evaluate(lab, run)}  # fmt: skip
    return out


def run_summary(run: RunDir) -> dict[str, Any]:
    """What the experiments keep of a training run: its directory, learning rate, per-epoch
    history and final metrics."""
    metrics = run.metrics()
    return {
        "run": str(run.path),
        "lr": metrics["config"]["lr"],
        "history": metrics["history"],
        "final": metrics.get("final", {}),
        "diverged": metrics.get("diverged", False),
    }


# What a seed's summary keeps of its history: the mean over the last TAIL epochs of these.
SEED_KEYS = ("val_acc", "val_loss", "train_loss", "train_eval_loss")


def seeded_summary(runs: Sequence[RunDir]) -> dict[str, Any]:
    """`run_summary` of the first run, with "seeds": per run (seed), its seed, directory
    and the last-TAIL-epoch means of SEED_KEYS (the values paired verdicts compare)."""
    summary = run_summary(runs[0])
    summary["seeds"] = []
    for run in runs:
        metrics = run.metrics()
        history = metrics["history"]
        summary["seeds"].append({
            "seed": metrics["config"]["seed"], "run": str(run.path),
            "diverged": metrics.get("diverged", False),
            **{key: tail_mean(history, key, TAIL) for key in SEED_KEYS
               if any(key in row for row in history)},
        })  # fmt: skip
    return summary


def trained_summaries(lab: Lab, labels: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """`seeded_summary` of the finished runs of each label, the lab's `seeds` of them,
    trained if need be."""
    return {
        label: seeded_summary(lab.train_seeds(run_config(lab, label), label=label))
        for label in labels
    }
