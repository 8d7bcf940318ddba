"""Data-dependent initialization (main paper, appendix A.1)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .norms import _Normalization, normalizations

_EPS = 1e-5  # as in PyTorch's batch norm


def _channel_moments(out: Tensor) -> tuple[Tensor, Tensor]:
    dims = [d for d in range(out.ndim) if d != 1]
    var, mu = torch.var_mean(out, dims, correction=0)
    return mu, (var + _EPS).sqrt()


@torch.no_grad()
def data_dependent_init_(model: nn.Module, x: Tensor) -> nn.Module:
    """Initialize so that, on the batch `x`, every channel after each layer has zero mean
    and unit variance, layer after layer: one pass of batch normalization with s = 1, b = 0
    and zero learning rate, folded into the parameters (the paper uses 128 training images).

    - A model with stochnorm normalizations: each normalization's affine is set,
      `s <- s / sigma`, `b <- (b - mu) / sigma`, with mu, sigma of its output on `x`.
    - A plain model: each conv/linear layer is rescaled, `w <- w / sigma`,
      `a <- (a - mu) / sigma`; every such layer needs a bias.

    mu and sigma are taken over the batch and spatial positions. Returns `model`, changed in
    place.
    """
    targets: list[nn.Module] = normalizations(model)
    if not targets:
        targets = [
            m
            for m in model.modules()
            if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear)
        ]
        for layer in targets:
            if layer.bias is None:
                raise ValueError(
                    f"data-dependent init needs a bias in every layer; {layer} has none"
                )

    def standardize(module: nn.Module, _inputs, out: Tensor) -> Tensor:
        mu, sigma = _channel_moments(out)
        if isinstance(module, _Normalization):
            module.weight.div_(sigma)
            module.bias.sub_(mu).div_(sigma)
        else:
            module.weight.div_(sigma.view((-1,) + (1,) * (module.weight.ndim - 1)))
            module.bias.sub_(mu).div_(sigma)
        view = (1, -1) + (1,) * (out.ndim - 2)
        return (out - mu.view(view)) / sigma.view(view)

    handles = [m.register_forward_hook(standardize) for m in targets]
    was_training = model.training
    try:
        model.eval()
        model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return model
