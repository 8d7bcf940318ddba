"""Run-level tasks: load a run directory's trained model, evaluate it (`stochnorm
evaluate`) and diagnose it or a fresh model (`stochnorm diagnose`). The predictions and
measurements themselves live in `stochnorm.prediction` and `stochnorm.diagnostics`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import data as datasets
from . import metrics
from .checkpoint import save_json
from .config import TrainConfig
from .diagnostics import (
    analytic_statistics,
    bn_noise,
    independence_error,
    rule_errors,
    summarize_bn_noise,
)
from .errors import ConfigError
from .noise import noise_modules
from .plots import plot_error_coverage, plot_robustness
from .prediction import (
    fgsm_robustness,
    learned_noise,
    noise_robustness,
    predict_mc_batchnorm,
    predict_val_and_test,
    uncertainty_report,
)
from .provenance import provenance
from .runs import RunDir
from .train import (
    load_model_state,
    make_model,
    prepare_data,
    resolve_device,
    training_inputs,
)


def load_run(
    path: str | Path, *, device: str | torch.device | None = "cpu"
) -> tuple[TrainConfig, datasets.Splits, nn.Module]:
    """The configuration, data splits and trained model (from the checkpoint, in eval mode)
    of the run directory `path`. The model is rebuilt from its configuration and state
    dict alone (the data gives only its shapes; checkpoints written before analytic norm
    kept its input moments in the state dict have them measured again)."""
    run = RunDir(path)
    cfg = run.config()
    state = run.checkpoint()
    data = prepare_data(cfg)
    model = make_model(cfg, data)
    load_model_state(model, state["model"], cfg, data)
    return cfg, data, model.to(resolve_device(device)).eval()


def evaluate_run(
    path: str | Path,
    *,
    samples: tuple[int, ...] = (10, 30),
    seed: int = 0,
    robustness_size: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Evaluate the trained run in directory `path` and save `evaluation.json` and
    `error_coverage.png` there (with `robustness_size` > 0 also `robustness.png`): final
    metrics, the uncertainty report on the test set (single pass, and MC-K for each K in
    `samples` when the model has noise; "samples" lists those used, "requested_samples"
    those asked for), the single pass after temperature scaling fitted on the validation
    set, the learned sigma_S / s per layer, and accuracy under Gaussian input noise and FGSM
    on the first `robustness_size` test images."""
    device = resolve_device(device)
    out = Path(path)
    cfg, data, model = load_run(out, device=device)
    requested, samples = list(samples), tuple(samples) if noise_modules(model) else ()
    test = uncertainty_report(
        model, data.test, samples=samples, batch_size=cfg.eval_batch_size, device=device,
        seed=seed,
    )  # fmt: skip
    result = {
        **single_pass(model, data, cfg.eval_batch_size, device),
        "requested_samples": requested,
        "samples": list(samples),
        "robustness_size": robustness_size,
        "test": test,
        "learned_noise": learned_noise(model),
        "provenance": provenance(device),
    }
    if cfg.norm == "batch" and any(k > 1 for k in requested):
        result["mc_batchnorm"] = mc_batchnorm_report(
            model, data, cfg, tuple(k for k in requested if k > 1), device, seed
        )
        result["mc_batchnorm_crop_size"] = cfg.crop_size  # its statistics' crops (None: images)
    if robustness_size:
        subset = data.test.head(robustness_size)
        modes = {"single": 0, **({f"mc{samples[0]}": samples[0]} if samples else {})}
        kwargs = {"batch_size": cfg.eval_batch_size, "device": device, "seed": seed}
        result["robustness"] = {
            "images": len(subset),
            "gaussian": {
                m: noise_robustness(model, subset, samples=k, **kwargs) for m, k in modes.items()
            },
            "fgsm": {
                m: fgsm_robustness(model, subset, samples=k, **kwargs) for m, k in modes.items()
            },
        }
        plot_robustness({out.name: result["robustness"]}, out / "robustness.png")
    save_json(result, RunDir(out).evaluation_path)
    plot_error_coverage({out.name: test}, out / "error_coverage.png")
    return result


def mc_batchnorm_report(
    model: nn.Module,
    data: datasets.Splits,
    cfg: TrainConfig,
    samples: tuple[int, ...],
    device: torch.device | str,
    seed: int,
) -> dict[str, Any]:
    """MC batch norm of a BN run on the test set (`prediction.predict_mc_batchnorm`): per K
    in `samples`, accuracy, NLL, ECE, Brier of the average over K passes, each with the
    statistics of one random (unaugmented) training batch of the run's per-replica size
    (`ghost_batch`, else `batch_size`), of crops of `crop_size` where the run trained on
    crops."""
    g = torch.Generator().manual_seed(seed)
    found = predict_mc_batchnorm(
        model, data.test, data.train, samples, stats_batch=cfg.ghost_batch or cfg.batch_size,
        crop_size=cfg.crop_size, batch_size=cfg.eval_batch_size, device=device, generator=g,
    )  # fmt: skip
    return {f"mc{k}": metrics.summary(probs, data.test.y) for k, probs in found.items()}


def single_pass(
    model: nn.Module, data: datasets.Splits, batch_size: int, device: torch.device | str
) -> dict[str, Any]:
    """The eval-mode single pass on the validation and test sets, each predicted once (a
    segmentation set's test split is its validation split):
    "metrics" (accuracy, NLL, ECE, Brier per split, as the training loop's final metrics)
    and "temperature_scaled", the test set after post-hoc temperature scaling, the
    standard fix of a network's calibration: one temperature fitted on the validation set
    (`metrics.fit_temperature`): {"temperature", "test": accuracy, NLL, ECE, Brier}."""
    kwargs = {"batch_size": batch_size, "device": device}
    val, test = predict_val_and_test(model, data, **kwargs)
    temperature = metrics.fit_temperature(val, data.val.y)
    scaled = metrics.temperature_scale(test, temperature)
    return {
        "metrics": {"val": metrics.summary(val, data.val.y), "test": metrics.summary(test, data.test.y)},
        "temperature_scaled": {"temperature": temperature, "test": metrics.summary(scaled, data.test.y)},
    }  # fmt: skip


def measure_bn_noise(
    path,
    batch_sizes: tuple[int, ...] = (4, 8, 16, 32, 64, 128, 256),
    *,
    batches: int = 40,
    seed: int = 0,
) -> dict[str, Any]:
    """`bn_noise` and `summarize_bn_noise` of the trained batch-norm run in directory `path`
    (main paper section 3.1, Fig. 4), measured on the CPU as `stochnorm diagnose bn-noise`
    does, at the run's training batch size.

    Returns {"run", "summary", "measurements"}; the n S^2 / sigma^2 samples are kept only at
    the training batch size (all that the summary and `plots.plot_bn_noise` use). Raises
    ConfigError if the run has no batch norm or `batch_sizes` lacks its batch size.
    """
    cfg, data, model = load_run(path)
    if cfg.norm != "batch":
        raise ConfigError(f"{path} was trained with norm={cfg.norm}; bn-noise needs batch")
    if cfg.batch_size not in batch_sizes:
        raise ConfigError(
            f"batch sizes {list(batch_sizes)} must include the run's batch size {cfg.batch_size}"
        )
    result = bn_noise(model, data, tuple(batch_sizes), batches=batches, seed=seed)
    summary = summarize_bn_noise(result, cfg.batch_size)
    for layer in result["layers"]:
        for entry in layer["per_batch_size"]:
            if entry["k"] != cfg.batch_size:
                entry.pop("chi2")
    return {"run": str(path), "summary": summary, "measurements": result}


def diagnose_analytic(cfg: TrainConfig, data: datasets.Splits, model: nn.Module) -> dict[str, Any]:
    """Analytic norm's estimated statistics against the true ones on the whole augmented
    training split (`diagnostics.analytic_statistics`, after one training forward that sets
    them from the current weights), the independence error of each layer's rule
    (`diagnostics.independence_error`) and every rule's own error given its true inputs
    (`diagnostics.rule_errors`): {"images", "exact_first_layer", "rows",
    "independence_error", "rule_errors"} (`stochnorm diagnose an-stats`)."""
    x = training_inputs(data, cfg, count=len(data.train))
    model.train()(x[:1])  # statistics from the current weights
    return {
        "images": len(x),
        "exact_first_layer": cfg.exact_first_layer,
        "rows": analytic_statistics(model, x),
        "independence_error": independence_error(model, x),
        "rule_errors": rule_errors(model, x),
    }
