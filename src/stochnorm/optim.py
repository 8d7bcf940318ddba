"""The optimizer of a run: SGD with Nesterov momentum (or Adam, `TrainConfig.optimizer`) for
the weights, and for learned noise the same at its own rate or Adam
(`TrainConfig.noise_optimizer`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .config import TrainConfig
from .projection import parameter_groups


class Optimizers:
    """Several optimizers stepped as one (the training loop's interface to an optimizer):
    `param_groups` lists the groups of all of them, so the schedule sets every rate."""

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [group for opt in self.optimizers for group in opt.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("optimizers")
        if saved is None or len(saved) != len(self.optimizers):
            raise ValueError(f"expected the states of {len(self.optimizers)} optimizers")
        for opt, one in zip(self.optimizers, saved, strict=True):
            opt.load_state_dict(one)


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer | Optimizers:
    """SGD with Nesterov momentum; no weight decay on scale-invariant weights or learned
    noise, whose learning rate is `cfg.noise_lr_factor` times the others'. With
    `cfg.noise_optimizer == "adam"` the noise parameters are stepped by Adam instead (at
    that rate, on the same schedule), so that sigma_S moves by about its rate per step
    whatever the size of its gradient, and the rest by SGD as before. With
    `cfg.optimizer == "adam"` every group is stepped by Adam (the noise group at its
    factor times the rate)."""
    groups = parameter_groups(model, cfg.weight_decay, cfg.noise_lr_factor)
    if cfg.optimizer == "adam":
        for group in groups:
            group["lr"] = cfg.lr * group["lr_factor"]
        return torch.optim.Adam(groups, lr=cfg.lr)
    sgd_groups = groups[:2] if cfg.noise_optimizer == "adam" else groups
    sgd = torch.optim.SGD(sgd_groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    if cfg.noise_optimizer != "adam" or len(groups) < 3:
        return sgd
    return Optimizers(sgd, torch.optim.Adam(groups[2:], lr=cfg.lr * cfg.noise_lr_factor))
