"""Learning-rate search as in the main paper, appendix A.1: the initial learning rate that
minimizes the training loss reached after a few epochs, found per training case."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import torch

from . import data as datasets
from .config import LR_FIND_EPOCHS, TrainConfig
from .errors import ConfigError
from .train import prepare_data, train

# The searched range of initial rates by optimizer (SGD: the paper's; Adam, whose steps do
# not scale with the gradient, is searched three decades lower).
LR_RANGE = {"sgd": (1e-3, 1.0), "adam": (1e-5, 1e-2)}


def lr_find(
    cfg: TrainConfig,
    *,
    lr_min: float | None = None,
    lr_max: float | None = None,
    per_decade: int = 2,
    refine: int = 3,
    epochs: int | None = None,
    data: datasets.Splits | None = None,
    device: str | torch.device | None = "cpu",
    progress: bool = False,
    on_trial: Callable[[float, float], None] | None = None,
    known: Mapping[float, float] | None = None,
) -> dict[str, Any]:
    """Train `cfg` for `epochs` epochs (default: the profile's, see LR_FIND_EPOCHS) from the
    same initialization with learning rates on a log grid over [lr_min, lr_max] (default:
    LR_RANGE of the configuration's optimizer)
    (`per_decade` points per decade), then narrow the bracket around the best one by
    `refine` more trials, each halving (in log scale) the larger side of the bracket.

    The score of a trial is the mean training loss of its last epoch, +inf if it diverged.
    `on_trial(lr, loss)` is called after each trial trained; `known` holds the scores {lr:
    loss} that earlier trials of the same search measured (an interrupted search resumes:
    they are not trained again). Returns the best `lr`, every trial, and
    `at_edge` = True when the best rate lies at an end of the range (then the range should be
    widened).
    """
    default_min, default_max = LR_RANGE[cfg.optimizer]
    lr_min = default_min if lr_min is None else lr_min
    lr_max = default_max if lr_max is None else lr_max
    if not 0 < lr_min < lr_max:
        raise ConfigError(f"need 0 < lr_min < lr_max, got {lr_min} and {lr_max}")
    if per_decade < 1 or refine < 0:
        raise ConfigError("per_decade must be >= 1 and refine >= 0")
    epochs = epochs or LR_FIND_EPOCHS.get(cfg.profile, 5)
    if data is None:
        data = prepare_data(cfg)
    scores: dict[float, float] = {}
    earlier = {round(math.log10(lr), 9): loss for lr, loss in (known or {}).items()}

    def score(log_lr: float) -> float:
        if log_lr not in scores and round(log_lr, 9) in earlier:
            scores[log_lr] = earlier[round(log_lr, 9)]
        if log_lr not in scores:
            trial = replace(cfg, lr=10.0**log_lr, epochs=epochs)
            result = train(trial, data=data, device=device, progress=progress, evaluate=False)
            history = result.metrics["history"]
            diverged = result.metrics["diverged"] or not history
            scores[log_lr] = math.inf if diverged else history[-1]["train_loss"]
            if on_trial is not None:
                on_trial(10.0**log_lr, scores[log_lr])
        return scores[log_lr]

    lo, hi = math.log10(lr_min), math.log10(lr_max)
    count = max(2, round((hi - lo) * per_decade) + 1)
    grid = [lo + (hi - lo) * i / (count - 1) for i in range(count)]
    best = min(grid, key=score)
    i = grid.index(best)
    at_edge = i in (0, len(grid) - 1)
    left, right = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    for _ in range(refine):
        wide_right = right - best >= best - left
        probe = (best + right) / 2 if wide_right else (left + best) / 2
        if score(probe) < score(best):
            left, right = (best, right) if wide_right else (left, best)
            best = probe
        elif wide_right:
            right = probe
        else:
            left = probe
    trials = [{"lr": 10.0**k, "train_loss": v} for k, v in sorted(scores.items())]
    return {"lr": 10.0**best, "epochs": epochs, "at_edge": at_edge, "trials": trials}
