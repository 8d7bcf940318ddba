"""Measurements on trained or freshly initialized networks."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from . import data as datasets
from .norms import AnalyticNorm, normalizations


@torch.no_grad()
def analytic_statistics(
    model: nn.Module,
    x: Tensor,
    *,
    batch_size: int = 500,
) -> list[dict[str, Any]]:
    """Compare, for every AnalyticNorm of `model`, its estimated statistics (mu, sigma: the
    propagated mean and std of its layer's output) with the true ones, measured on the
    inputs `x` (e.g. the whole augmented training split) with the same weights.

    The model is used in eval mode, where every AnalyticNorm applies its stored estimates;
    call it once in train mode first to refresh them from the current weights. Per layer:
    the mean over channels of |mu_est - mu_true| / sigma_true, and the mean, min and max over
    channels of sigma_est / sigma_true.
    """
    layers = [n for n in normalizations(model) if isinstance(n, AnalyticNorm)]
    if not layers:
        raise ValueError("the model has no analytic normalization")
    sums = {id(n): [0.0, 0.0, 0] for n in layers}

    def accumulate(module: nn.Module, inputs: tuple) -> None:
        u = inputs[0].double()
        dims = [0] + list(range(2, u.ndim))
        entry = sums[id(module)]
        entry[0] = entry[0] + u.sum(dims)
        entry[1] = entry[1] + u.pow(2).sum(dims)
        entry[2] += u.numel() // u.shape[1]

    handles = [n.register_forward_pre_hook(accumulate) for n in layers]
    was_training = model.training
    model.eval()
    try:
        for batch, _ in datasets.batches(datasets.Split(x, torch.zeros(len(x))), batch_size):
            model(batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    rows = []
    for i, n in enumerate(layers, start=1):
        total, total_sq, count = sums[id(n)]
        mean = total / count
        std = (total_sq / count - mean.pow(2)).clamp_min(0).sqrt()
        ratio = n.sigma.double() / std
        rows.append(
            {
                "layer": i,
                "channels": n.num_features,
                "mean_error": ((n.mu.double() - mean).abs() / std).mean().item(),
                "sigma_ratio_mean": ratio.mean().item(),
                "sigma_ratio_min": ratio.min().item(),
                "sigma_ratio_max": ratio.max().item(),
            }
        )
    return rows
