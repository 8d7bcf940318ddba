"""Predictions of a trained model on a whole split, and the metrics computed from them."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from . import metrics
from .bayes import predict
from .data import Split


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
    `points` coverages k / points."""
    modes = {"single": 0, **{f"mc{k}": k for k in samples if k > 1}}
    report = {}
    for name, k in modes.items():
        g = torch.Generator(device=device).manual_seed(seed) if k else None
        probs = predict_probs(
            model, data, samples=k, batch_size=batch_size, device=device, generator=g
        )
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
