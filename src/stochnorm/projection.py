"""Projection of scale-invariant weights onto the unit sphere (main paper, section 2)."""

from __future__ import annotations

import torch
from torch import nn

from .noise import noise_modules
from .norms import normalizations, output_rows, set_output_rows


def scale_invariant_weights(model: nn.Module) -> list[nn.Parameter]:
    """The weights of every conv/linear layer followed by a normalization: the model's
    output does not change under w -> c w (c > 0) for any of them."""
    seen: dict[int, nn.Parameter] = {}
    for norm in normalizations(model):
        if norm.layer is not None:
            seen[id(norm.layer.weight)] = norm.layer.weight
    return list(seen.values())


@torch.no_grad()
def project_(model: nn.Module) -> nn.Module:
    """Set `w[o] <- w[o] / ||w[o]||` for every output channel o of every scale-invariant
    weight, in place; returns `model`. The training loop applies it after every optimizer
    step when asked to (`project=True`), keeping the constraint ||w|| = 1 of section 2.
    Where the invariance is shared by k consecutive channels (group norm: k = C / G), each
    such group of rows is scaled together to ||w_group|| = sqrt(k), i.e. rows of norm 1 on
    average; k = 1 is the per-channel rule."""
    seen: set[int] = set()
    for norm in normalizations(model):
        layer = norm.layer
        if layer is None or id(layer.weight) in seen:
            continue
        seen.add(id(layer.weight))
        k = norm.invariant_channels
        channels = output_rows(layer)
        rows = channels.reshape(channels.shape[0] // k, -1)
        norms = rows.norm(dim=1).clamp_min(torch.finfo(rows.dtype).tiny) / k**0.5
        set_output_rows(layer, (rows / norms[:, None]).view_as(channels))
    return model


def parameter_groups(
    model: nn.Module, weight_decay: float, noise_lr_factor: float = 1.0
) -> list[dict]:
    """Optimizer groups: weight decay on every parameter except the scale-invariant weights
    (decay on them has no minimizer, section 2) and the parameters of learned noise (their
    prior is the KL term); those, when the model has any, form a third group whose learning
    rate is `noise_lr_factor` times the others' (key `lr_factor` of each group)."""
    invariant = {id(p) for p in scale_invariant_weights(model)}
    noise = {id(p) for m in noise_modules(model) for p in m.parameters()}
    free = [p for p in model.parameters() if id(p) in invariant]
    decayed = [p for p in model.parameters() if id(p) not in invariant | noise]
    groups = [
        {"params": decayed, "weight_decay": weight_decay, "lr_factor": 1.0},
        {"params": free, "weight_decay": 0.0, "lr_factor": 1.0},
    ]
    if noise:
        learned = [p for p in model.parameters() if id(p) in noise]
        groups.append({"params": learned, "weight_decay": 0.0, "lr_factor": noise_lr_factor})
    return groups
