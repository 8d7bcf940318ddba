"""Predictions of a model on a whole split, and the metrics computed from them: what the
training loop measures every epoch and what `stochnorm.evaluation` reports for a run."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from . import metrics
from .bayes import predict, predict_running
from .data import Split, Splits, crop_batches
from .noise import ScaleNoise
from .norms import BATCH_NORMS, PopulationNorm, normalizations


def predict_probs(
    model: nn.Module,
    data: Split,
    *,
    samples: int = 0,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Class probabilities [N, C] of the eval-mode model on `data` (on the CPU): the single
    pass with mean parameters, or the MC average over `samples` noisy passes."""
    probs = predict(model, data.x.to(device), samples, generator=generator, batch_size=batch_size)
    return probs.cpu()


def predict_val_and_test(model: nn.Module, data: Splits, **kwargs) -> tuple[Tensor, Tensor]:
    """`predict_probs` on the validation and the test split (`kwargs` passed on); a
    segmentation set's test split is its validation split, predicted once."""
    val = predict_probs(model, data.val, **kwargs)
    return val, val if data.test is data.val else predict_probs(model, data.test, **kwargs)


@torch.no_grad()
def predict_mc_batchnorm(
    model: nn.Module,
    data: Split,
    train: Split,
    samples: Sequence[int],
    *,
    stats_batch: int = 32,
    crop_size: int | None = None,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> dict[int, Tensor]:
    """Monte-Carlo batch normalization (Teye et al., 2018): for each K in `samples`, the
    average of the class probabilities [N, C] of the first K of max(samples) passes over
    `data` (one sequence of draws, as `bayes.predict_running`), each normalizing every batch norm
    with the statistics of one random batch of `stats_batch` images from `train` (mean and
    biased variance, as in training: each layer's from the batch normalized by the layers
    before it), instead of the running estimates; with `crop_size` (a network trained on
    crops of few large images), one batch of `stats_batch` random unaugmented crops of that
    size (`data.crop_batches`), as training saw them. Batch norm as `torch.nn` or
    stochnorm's; the model, its running estimates and its mode are left as they were."""
    layers = [  # population norm normalizes by its estimates, not by the batch
        m for m in model.modules()
        if isinstance(m, BATCH_NORMS) and not isinstance(m, PopulationNorm)
    ]  # fmt: skip
    if not layers:
        raise ValueError("MC batch norm needs a model with batch normalization")
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in layers]  # fmt: skip
    captured: dict[nn.Module, tuple[Tensor, Tensor]] = {}

    def capture(module: nn.Module, inputs: tuple) -> None:
        u = inputs[0]
        var, mean = torch.var_mean(u, [0, *range(2, u.ndim)], correction=0)
        captured[module] = (mean, var)

    total, averages = None, {}
    was_training = model.training
    handles = [m.register_forward_pre_hook(capture) for m in layers]
    try:
        for k in range(1, max(samples) + 1):
            if crop_size is None:
                idx = torch.randint(len(train), (stats_batch,), generator=generator)
                batch = train.x[idx]
            else:
                crops = crop_batches(train, stats_batch, crop_size, generator, augment=False)
                batch = next(crops)[0]
            model.train()(batch.to(device))  # each layer sees the batch-normalized one
            for m in layers:
                m.running_mean.copy_(captured[m][0])
                m.running_var.copy_(captured[m][1])
            for h in handles:
                h.remove()
            handles = []
            probs = predict_probs(model.eval(), data, batch_size=batch_size, device=device)
            total = probs if total is None else total + probs
            if k in samples:
                averages[k] = total / k
            handles = [m.register_forward_pre_hook(capture) for m in layers]
    finally:
        for h in handles:
            h.remove()
        for m, (mean, var, count) in zip(layers, saved, strict=True):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)
        model.train(was_training)
    return averages


def uncertainty_report(
    model: nn.Module,
    data: Split,
    *,
    samples: tuple[int, ...] = (10, 30),
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    seed: int = 0,
    points: int = 100,
) -> dict[str, dict]:
    """Per prediction mode ("single" and "mc{K}" for each K in `samples`): accuracy, NLL,
    ECE, Brier, and the error-vs-coverage curves rejecting by predictive entropy and by
    max probability with their AURC (main paper Table 1 and Fig. A.3). Curves are kept at
    `points` coverages k / points. The MC averages share one sequence of sampled passes
    (`predict_running`): MC-10 averages the first 10 of MC-30's passes."""
    modes = {"single": 0, **{f"mc{k}": k for k in samples if k > 1}}
    g = torch.Generator(device=device).manual_seed(seed)
    predicted = predict_running(
        model, data.x.to(device), list(modes.values()), generator=g, batch_size=batch_size
    )
    report = {}
    for name, k in modes.items():
        probs = predicted[k].cpu()
        entry = metrics.summary(probs, data.y)
        for score in ("entropy", "max-prob"):
            coverage, error = metrics.error_coverage(probs, data.y, score)
            entry[f"aurc_{score}"] = error.mean().item()
            idx = (torch.arange(1, points + 1) * len(coverage) // points - 1).clamp_min(0)
            entry[f"curve_{score}"] = {
                "coverage": coverage[idx].tolist(),
                "error": error[idx].tolist(),
            }
        report[name] = entry
    return report


def loss_and_accuracy(
    model: nn.Module, data: Split, *, batch_size: int = 500, device: torch.device | str = "cpu"
) -> tuple[float, float]:
    """Mean NLL and accuracy of the eval-mode model on `data`."""
    probs = predict_probs(model, data, batch_size=batch_size, device=device)
    return metrics.nll(probs, data.y), metrics.accuracy(probs, data.y)


def nll_loss(log_probs: Tensor, labels: Tensor) -> Tensor:
    """The training loss: mean negative log-likelihood over the batch."""
    return F.nll_loss(log_probs, labels)


def noise_robustness(
    model: nn.Module,
    data: Split,
    stds: tuple[float, ...] = (0.0, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0),
    *,
    samples: int = 0,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> list[dict[str, float]]:
    """Accuracy under additive Gaussian input noise of each std (in the standardized input
    space), for the single pass (`samples` <= 1) or the MC average (main paper Fig. A.4)."""
    rows = []
    for std in stds:
        g = torch.Generator().manual_seed(seed)
        noisy = Split(data.x + std * torch.randn(data.x.shape, generator=g), data.y)
        mc = torch.Generator(device=device).manual_seed(seed) if samples > 1 else None
        probs = predict_probs(
            model, noisy, samples=samples, batch_size=batch_size, device=device, generator=mc
        )
        rows.append({"std": std, "accuracy": metrics.accuracy(probs, data.y)})
    return rows


def fgsm_robustness(
    model: nn.Module,
    data: Split,
    epsilons: tuple[float, ...] = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2),
    *,
    samples: int = 0,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> list[dict[str, float]]:
    """Accuracy under the fast gradient sign attack `x' = x + eps sign(grad_x NLL)` of the
    deterministic eval-mode model (SPEC section 6), evaluated by the single pass or the MC
    average (main paper Fig. A.4)."""
    was_training = model.training
    model.eval()
    try:
        signs = []
        for start in range(0, len(data), batch_size):
            x = data.x[start : start + batch_size].to(device).clone().requires_grad_(True)
            y = data.y[start : start + batch_size].to(device)
            loss = F.cross_entropy(model(x), y)  # log-probs or logits: same gradient sign
            (grad,) = torch.autograd.grad(loss, x)
            signs.append(grad.sign().cpu())
        sign = torch.cat(signs)
    finally:
        model.train(was_training)
    rows = []
    for eps in epsilons:
        mc = torch.Generator(device=device).manual_seed(seed) if samples > 1 else None
        probs = predict_probs(
            model, Split(data.x + eps * sign, data.y), samples=samples, batch_size=batch_size,
            device=device, generator=mc,
        )  # fmt: skip
        rows.append({"eps": eps, "accuracy": metrics.accuracy(probs, data.y)})
    return rows


def learned_noise(model: nn.Module) -> list[dict[str, float]]:
    """Per normalization layer with learned scale noise: the mean over channels of
    sigma_S / |s| (main paper section 3.5 reports these per layer)."""
    rows = []
    for i, layer in enumerate(normalizations(model), start=1):
        if isinstance(layer.noise, ScaleNoise):
            ratio = layer.noise.sigma_s.expand_as(layer.weight) / layer.weight.abs().clamp_min(
                1e-12
            )
            rows.append({"layer": i, "sigma_s_over_s": ratio.mean().item()})
    return rows
