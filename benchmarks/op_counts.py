"""Operations per training step of each normalization relative to batch norm: the ATen
operations that one step dispatches (forward with the loss, backward, SGD step), counted
with a dispatch mode. The counts depend on the model and on torch's version, not on the
machine: the launch overhead that analytic norm's propagation adds on a GPU.

    python benchmarks/op_counts.py [--models allcnn resnet20] [--batch 8] [--top 8]

Goal (eager mode): weight norm <= 2x, analytic <= 5x, analytic + bayes <= 6x BN's total.
"""

from __future__ import annotations

import argparse
import platform
from collections import Counter

import torch
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from stochnorm import models
from stochnorm.analytic import propagation_of
from stochnorm.bayes import add_noise

CASES = {  # name -> (norm, learned noise, options of analytic norm's MomentPropagation)
    "batch": ("batch", False, {}),
    "weight": ("weight", False, {}),
    "population": ("population", False, {}),
    "group": ("group", False, {}),
    "layer": ("layer", False, {}),
    "analytic": ("analytic", False, {}),
    "analytic + bayes": ("analytic", True, {}),
    "analytic, rectified residuals": ("analytic", False, {"rectified_residuals": True}),
    "analytic, border-aware convs": ("analytic", False, {"border_aware_convs": True}),
}
PHASES = ("forward", "backward", "step")


class OperationCounter(TorchDispatchMode):
    """Counts every ATen operation dispatched while it is active, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def count_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Counter]:
    """The operations of one training step of `model` on (x, y), per phase."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True,
                                foreach=False)  # fmt: skip
    model.train()
    for _ in range(2):  # warm up: lazily built state (momentum buffers, traced graphs)
        optimizer.zero_grad(set_to_none=True)
        F.nll_loss(model(x), y).backward()
        optimizer.step()
    counted = {}
    optimizer.zero_grad(set_to_none=True)
    with OperationCounter() as forward:
        loss = F.nll_loss(model(x), y)
    with OperationCounter() as backward:
        loss.backward()
    with OperationCounter() as step:
        optimizer.step()
    for phase, counter in zip(PHASES, (forward, backward, step), strict=True):
        counted[phase] = counter.ops
    return counted


def build(model: str, norm: str, bayes: bool, options: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    net = models.build(model, 1, 10, norm=norm, width=1 / 3)
    if bayes:
        add_noise(net, "bayes", sigma_s=0.1)
    for name, value in options.items():  # the refined rules
        setattr(propagation_of(net), name, value)
    return net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["allcnn", "resnet20"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--top", type=int, default=8, help="most frequent operations shown")
    args = parser.parse_args()
    print(f"# torch {torch.__version__}; Python {platform.python_version()}; width 1/3, "
          f"batch {args.batch}, 28x28 inputs")  # fmt: skip
    for name in args.models:
        x, y = torch.randn(args.batch, 1, 28, 28), torch.randint(0, 10, (args.batch,))
        found = {case: count_step(build(name, *spec), x, y) for case, spec in CASES.items()}
        reference = sum(sum(c.values()) for c in found["batch"].values())
        print(
            f"\n## {name}\n\n| norm | forward | backward | step | total | / BN |\n|---|---|---|---|---|---|"
        )
        for case, phases in found.items():
            sizes = [sum(phases[p].values()) for p in PHASES]
            print(f"| {case} | {' | '.join(map(str, sizes))} | {sum(sizes)} | "
                  f"{sum(sizes) / reference:.2f} |")  # fmt: skip
        for case in ("analytic", "analytic + bayes"):
            total = sum(found[case].values(), Counter())
            common = ", ".join(f"{op} {n}" for op, n in total.most_common(args.top))
            print(f"\n{case}, most frequent: {common}")


if __name__ == "__main__":
    main()
