"""What the benchmark measures of one trained run, in every way the run can predict:

- "single": one eval-mode pass (mean parameters, frozen statistics);
- "mc{K}": for a model with noise, the average of K passes with the noise sampled;
- "mcbn{K}": for batch norm, MC batch norm (Teye et al., 2018): K passes, each normalized
  by the statistics of one random training batch of the run's per-replica size.

For each: test accuracy, NLL, ECE, Brier, AURC and the reliability diagram; the same after
temperature scaling (one temperature fitted on the validation set's predictions of that
mode); accuracy and NLL under
each corruption of `data.corruptions` at 5 severities on the first `shift_size` test images
(and their mean); and how well the unfamiliar handwritten digits are told from the test
set (AUROC and FPR at 95% TPR by max-probability, entropy and, for mc, mutual information).
The temperature is fitted on the first `val_size` validation images and the test metrics
use the first `test_size` test images (MC passes over all 10,000 + 6,000 images cost about
as much as a short training run).
Saved as `benchmark.json` in the run directory and reused while its settings stay the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from .. import metrics
from ..bayes import predict_draws
from ..checkpoint import load_json, save_json
from ..data import Split, Splits
from ..data.corruptions import CORRUPTIONS, SEVERITIES, corrupted
from ..data.digits import unfamiliar_digits
from ..evaluation import load_run
from ..noise import noise_modules
from ..prediction import predict_mc_batchnorm
from ..runs import RunDir

FILE = "benchmark.json"
VERSION = 3  # bump when what is measured changes: saved measurements are then redone

# A mode's prediction of a split: the mean probabilities [N, C] and, for sampled passes,
# the mutual information per sample [N] (None otherwise).
Predictor = Callable[[Split], tuple[Tensor, Tensor | None]]


def predictors(
    model: torch.nn.Module, data: Splits, cfg, samples: int, seed: int, device: str
) -> dict[str, Predictor]:
    """The prediction modes of a trained model (see the module docstring)."""

    def single(split: Split) -> tuple[Tensor, Tensor | None]:
        x = split.x.to(device)
        return predict_draws(model, x, 0, batch_size=cfg.eval_batch_size)[0].cpu(), None

    def sampled(split: Split) -> tuple[Tensor, Tensor | None]:
        g = torch.Generator(device=device).manual_seed(seed)
        draws = predict_draws(model, split.x.to(device), samples, generator=g,
                              batch_size=cfg.eval_batch_size).cpu()  # fmt: skip
        return draws.mean(0), metrics.mutual_information(draws)

    def mc_batchnorm(split: Split) -> tuple[Tensor, Tensor | None]:
        g = torch.Generator().manual_seed(seed)
        found = predict_mc_batchnorm(
            model, split, data.train, (samples,), stats_batch=cfg.ghost_batch or cfg.batch_size,
            batch_size=cfg.eval_batch_size, device=device, generator=g,
        )  # fmt: skip
        return found[samples], None

    modes: dict[str, Predictor] = {"single": single}
    if noise_modules(model) and samples > 1:
        modes[f"mc{samples}"] = sampled
    if cfg.norm == "batch" and samples > 1:
        modes[f"mcbn{samples}"] = mc_batchnorm
    return modes


def _scores(probs: Tensor, labels: Tensor) -> dict[str, float]:
    return {**metrics.summary(probs, labels), "aurc": metrics.aurc(probs, labels)}


def _calibration(probs: Tensor, labels: Tensor) -> dict[str, float]:
    return {k: metrics.summary(probs, labels)[k] for k in ("nll", "ece", "brier")}


@dataclass(frozen=True)
class Sizes:
    """How many images each measurement uses (see the module docstring)."""

    val: int = 2000
    test: int = 5000
    shift: int = 100
    unfamiliar: int | None = None  # None: all 1,797 digits


DEFAULT_SIZES = Sizes()


def measure_mode(
    predict: Predictor, data: Splits, sizes: Sizes, seed: int, bar: tqdm | None = None
) -> dict[str, Any]:
    """Everything the module docstring lists, for one prediction mode."""

    def step(what: str) -> None:
        if bar is not None:
            bar.set_postfix_str(what)
            bar.update()

    val_split, test_split = data.val.head(sizes.val), data.test.head(sizes.test)
    val, _ = predict(val_split)
    temperature = metrics.fit_temperature(val, val_split.y)
    step("validation")
    test, test_mi = predict(test_split)
    scaled = metrics.temperature_scale(test, temperature)
    y = test_split.y
    result: dict[str, Any] = {
        "temperature": temperature,
        "test": _scores(test, y),
        "test_ts": _calibration(scaled, y),
        "reliability": metrics.reliability(test, y),
        "reliability_ts": metrics.reliability(scaled, y),
    }
    step("test")
    subset = data.test.head(sizes.shift)
    clean, _ = predict(subset)
    result["shift_clean"] = {"accuracy": metrics.accuracy(clean, subset.y),
                             "nll": metrics.nll(clean, subset.y)}  # fmt: skip
    shift: dict[str, list[dict[str, float]]] = {}
    for name in CORRUPTIONS:
        rows = []
        for severity in SEVERITIES:
            probs, _ = predict(corrupted(data, subset, name, severity, seed=seed))
            rows.append({
                "severity": severity,
                "accuracy": metrics.accuracy(probs, subset.y),
                "nll": metrics.nll(probs, subset.y),
                "nll_ts": metrics.nll(metrics.temperature_scale(probs, temperature), subset.y),
            })  # fmt: skip
        shift[name] = rows
        step(name)
    result["shift"] = shift
    result["shift_mean"] = {
        key: sum(r[key] for rows in shift.values() for r in rows) / (len(shift) * len(SEVERITIES))
        for key in ("accuracy", "nll", "nll_ts")
    }
    digits = unfamiliar_digits(data)
    digits = digits.head(sizes.unfamiliar) if sizes.unfamiliar is not None else digits
    out, out_mi = predict(digits)
    scores = {name: (metrics.uncertainty(test, name), metrics.uncertainty(out, name))
              for name in ("max-prob", "entropy")}  # fmt: skip
    if test_mi is not None and out_mi is not None:
        scores["mutual-information"] = (test_mi, out_mi)
    result["ood"] = {
        "images": len(digits),
        **{name: {"auroc": metrics.auroc(a, b), "fpr95": metrics.fpr_at_tpr(a, b)}
           for name, (a, b) in scores.items()},
    }  # fmt: skip
    step("digits")
    return result


STEPS_PER_MODE = 3 + len(CORRUPTIONS)  # validation, test, each corruption, digits


def _settings(samples: int, sizes: Sizes, seed: int) -> dict[str, Any]:
    """What a measurement depends on besides the run: kept with it to tell when it is stale."""
    return {"version": VERSION, "samples": samples, **asdict(sizes), "seed": seed}


def saved_measurement(
    run: RunDir, *, samples: int = 10, sizes: Sizes = DEFAULT_SIZES, seed: int = 0
) -> dict[str, Any] | None:
    """The measurements kept in `run`'s benchmark.json if they were made with these settings
    (they stand without the run's checkpoint, which stays on the machine that trained it),
    else None."""
    path = run.path / FILE
    if path.is_file():
        saved = load_json(path)
        if saved.get("settings") == _settings(samples, sizes, seed):
            return saved
    return None


def measure_run(
    run: RunDir,
    *,
    samples: int = 10,
    sizes: Sizes = DEFAULT_SIZES,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """The measurements of every prediction mode of the finished run `run`, computed once per
    settings and kept in its `benchmark.json`."""
    saved = saved_measurement(run, samples=samples, sizes=sizes, seed=seed)
    if saved is not None:
        return saved
    cfg, data, model = load_run(run.path, device=device)
    modes = predictors(model, data, cfg, samples, seed, device)
    bar = tqdm(total=len(modes) * STEPS_PER_MODE, desc=f"measure {run.name}", unit="step",
               disable=not progress, leave=False)  # fmt: skip
    with bar:
        measured = {name: measure_mode(p, data, sizes, seed, bar) for name, p in modes.items()}
    result = {"settings": _settings(samples, sizes, seed), "run": str(run.path), "modes": measured}
    save_json(result, run.path / FILE)
    return result
