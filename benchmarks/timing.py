"""Side-by-side timing shared by the benchmark scripts: steps of several variants are
interleaved (one step of each per round) and the median over rounds is kept, so a load that
comes and goes on the machine affects all variants alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch.nn import functional as F


def _wait(x: torch.Tensor) -> None:
    """Wait for the device of `x` to finish its queued work (CUDA runs asynchronously)."""
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)


def train_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One SGD (momentum 0.9) step of `model` on (x, y) with the cross-entropy loss (for a
    model that outputs log-probabilities that is their NLL: log_softmax leaves them as
    they are), finished on the device when it returns."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _wait(x)

    return step


def eval_step(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """One forward pass of `model` on `x` without gradients."""

    @torch.no_grad()
    def step() -> None:
        model(x)
        _wait(x)

    return step


def interleaved(
    steps: dict[str, Callable[[], None]], repeats: int, warmup: int = 3
) -> dict[str, float]:
    """Median seconds per call of each step, the steps taking turns `repeats` times."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}
