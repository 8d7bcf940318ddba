"""Data-dependent initialization (main paper, appendix A.1)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

_EPS = 1e-5  # as in PyTorch's batch norm


@torch.no_grad()
def data_dependent_init_(model: nn.Module, x: Tensor) -> nn.Module:
    """Rescale every conv/linear layer so that, on the batch `x`, each of its output channels
    has zero mean and unit variance, layer after layer, as one pass of batch normalization
    with s = 1, b = 0 and zero learning rate would, folded into the weights:
    `w <- w / sigma`, `a <- (a - mu) / sigma`, with mu, sigma over the batch and spatial
    positions (the paper uses a batch of 128 training images). Every such layer needs a bias.
    Returns `model`, changed in place.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    for layer in layers:
        if layer.bias is None:
            raise ValueError(f"data-dependent init needs a bias in every layer; {layer} has none")

    def normalize(layer: nn.Module, _inputs, out: Tensor) -> Tensor:
        dims = [d for d in range(out.ndim) if d != 1]
        mu = out.mean(dims)
        sigma = (out.var(dims, unbiased=False) + _EPS).sqrt()
        shape = (-1,) + (1,) * (layer.weight.ndim - 1)
        layer.weight.div_(sigma.view(shape))
        layer.bias.sub_(mu).div_(sigma)
        view = (1, -1) + (1,) * (out.ndim - 2)
        return (out - mu.view(view)) / sigma.view(view)

    handles = [layer.register_forward_hook(normalize) for layer in layers]
    was_training = model.training
    try:
        model.eval()
        model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return model
