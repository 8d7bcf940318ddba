"""Runs named by label in one directory (`stochnorm runs`): for every label, the learning
rate of the paper's search (DIR/lr-find-LABEL.json, searched once) or of a given search
file, the run DIR/LABEL trained or resumed, and optionally its evaluation. The committed
results/quick runs are laid out this way; their configurations follow from their labels
(`stochnorm.labels`) and the profile."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_json, save_json
from .config import TrainConfig
from .errors import ConfigError
from .evaluation import evaluate_run
from .labels import needs_bn_noise, with_bn_noise, without_search
from .lr_search import lr_find
from .runs import RunDir
from .train import train


def bn_like_sigmas(path: Path) -> dict[str, tuple[float, ...]]:
    """The per-layer sigma_V, sigma_U that `stochnorm diagnose bn-noise` wrote to `path`."""
    summary = _bn_noise_summary(path)
    return {"sigma_v": tuple(summary["sigma_v"]), "sigma_u": tuple(summary["sigma_u"])}


def _bn_noise_summary(path: Path) -> dict[str, Any]:
    summary = load_json(Path(path)).get("summary", {})
    if "sigma_v" not in summary:
        raise ConfigError(f"{path}: no per-layer sigma_v/sigma_u (not bn-noise output)")
    return summary


def label_config(
    label: str,
    profile: str,
    overrides: dict[str, Any] | None = None,
    *,
    noise_from: Path | None = None,
) -> TrainConfig:
    """The configuration of run `label` in `profile`, with `overrides` on top (their lr is
    the profile's unless overridden); a "-bnlike" label takes its sigmas from `noise_from`,
    and a "-sbn" label its initial sigma_S per layer (BN's measured sigma_U)."""
    settings = without_search(label)
    if needs_bn_noise(settings):
        if noise_from is None:
            raise ConfigError(f"{label}: BN's measured noise needs --noise-from BN_NOISE_JSON")
        settings = with_bn_noise(settings, _bn_noise_summary(noise_from))
    return TrainConfig.from_profile(profile, **{**settings, **(overrides or {})})


def _searched_lr(cfg: TrainConfig, path: Path, device: str, progress: bool) -> float:
    """The rate of the search saved at `path` for `cfg` (searched and saved if missing); a
    saved search of another configuration is an error, not a silent reuse."""
    if path.is_file():
        found = load_json(path)
        saved = TrainConfig.from_dict(found["config"]) if "config" in found else None
        if saved is not None and saved.replace(lr=cfg.lr) != cfg:
            raise ConfigError(f"{path} is the search of another configuration; remove it")
        return found["lr"]
    result = lr_find(cfg, device=device, progress=progress)
    result["config"] = cfg.to_dict()
    save_json(result, path)
    return result["lr"]


def run_labels(
    labels: Sequence[str],
    out: Path,
    *,
    profile: str,
    overrides: dict[str, Any] | None = None,
    lr_from: Path | None = None,
    noise_from: Path | None = None,
    evaluate: bool = False,
    samples: tuple[int, ...] = (10, 30),
    robustness_size: int = 2000,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> list[RunDir]:
    """Train (or resume, or find finished) the run of every label in `out`/LABEL, at the
    learning rate of `lr_from` (a search file for all labels, or a directory holding
    lr-find-LABEL.json for each) or of its own search, and with `evaluate` also evaluate it
    once (`stochnorm evaluate`). A run that diverges is kept as such (metrics.json says
    why). Returns the run directories."""
    out = Path(out)
    runs = []
    for label in labels:
        cfg = label_config(label, profile, overrides, noise_from=noise_from)
        if lr_from is not None:  # taken as it is (e.g. the quick search for a longer run)
            source = Path(lr_from)
            lr = load_json(source / f"lr-find-{label}.json" if source.is_dir() else source)["lr"]
        else:
            lr = _searched_lr(cfg, out / f"lr-find-{label}.json", str(device), progress)
        cfg = cfg.replace(lr=lr)
        run = RunDir(out / label)
        resume = run.checkpoint_path.exists()
        train(cfg, run.path, resume=resume, device=device, progress=progress)
        if evaluate and run.checkpoint_path.exists():
            saved = run.evaluation()
            wanted = {"requested_samples": list(samples), "robustness_size": robustness_size}
            if saved is None or any(saved.get(k) != v for k, v in wanted.items()):
                evaluate_run(run.path, samples=samples, robustness_size=robustness_size,
                             device=device)  # fmt: skip
        runs.append(run)
    return runs
