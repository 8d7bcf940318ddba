"""Predictions of a trained model on a whole split, and the metrics computed from them."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from . import metrics
from .data import Split, batches


@torch.no_grad()
def predict_probs(
    model: nn.Module, data: Split, *, batch_size: int = 500, device: torch.device | str = "cpu"
) -> Tensor:
    """Class probabilities [N, C] of a model that outputs log-probabilities, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        out = [model(x.to(device)).float().exp().cpu() for x, _ in batches(data, batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out)


def loss_and_accuracy(
    model: nn.Module, data: Split, *, batch_size: int = 500, device: torch.device | str = "cpu"
) -> tuple[float, float]:
    """Mean NLL and accuracy of the eval-mode model on `data`."""
    probs = predict_probs(model, data, batch_size=batch_size, device=device)
    return metrics.nll(probs, data.y), metrics.accuracy(probs, data.y)


def nll_loss(log_probs: Tensor, labels: Tensor) -> Tensor:
    """The training loss: mean negative log-likelihood over the batch."""
    return F.nll_loss(log_probs, labels)
