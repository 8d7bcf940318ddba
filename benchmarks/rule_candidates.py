"""Moment rules for analytic norm, measured against each other: per normalized layer of a
zoo model at initialization, sigma_est / sigma_true of the layer's output on real images
(as in zoo.py), for combinations of the rules below.

    python benchmarks/rule_candidates.py [--models resnet18 tv-resnet18 resnet50 regnetx_002]
        [--seeds 0 1 2] [--out results/benchmarks/rule-candidates.md]

- "papers' rules": every ReLU's input taken as Gaussian, a max-pool passes its input's
  moments on (the max of equal values); the first conv exact from its patch covariance.
- "rectified residual": the library's option `rectified_residuals=True` (of `convert`
  and `MomentPropagation`): a ReLU after the residual addition of an earlier ReLU's output
  and another branch gets the moments of relu(relu(a) + b) (`moments.residual_relu`).
- "max-pool rule": the library's rule for a max-pool after the exact first conv (its
  default whenever the first layer is exact): the max of the window's correlated
  pre-activations (`moments.exchangeable_max`), the correlation from the conv's weights and
  the input patches' cross-covariances.
- "max-pool measured", an oracle: the max-pool's output moments measured on the images,
  the best any max-pool rule could do.
- "border-aware conv": the library's option `border_aware_convs=True`: the conv rule
  counts zero padding (`moments.conv_with_padding`; the papers' rule takes every tap as
  inside).

The rules are tested against Monte-Carlo in tests/test_moments.py. Needs timm, as zoo.py.
Walks the library's plan with its private rule method (`_rule`), to put the oracle in: a
measurement, not a feature.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from pathlib import Path

import timm
import torch
from torch import Tensor, nn
from zoo import BAND, build, real_images, warmed_batch_norm

from stochnorm.analytic import propagation_of
from stochnorm.checkpoint import atomic_write
from stochnorm.convert import convert
from stochnorm.norms import AnalyticNorm
from stochnorm.provenance import hardware

RECTIFIED, BORDER, POOL_RULE, POOL_MEASURED = ("rectified residual", "border-aware conv",
                                              "max-pool rule", "max-pool measured")  # fmt: skip
CANDIDATES = (
    ("papers' rules",), (RECTIFIED,), (POOL_RULE,), (RECTIFIED, POOL_RULE),
    (RECTIFIED, POOL_MEASURED), (RECTIFIED, BORDER, POOL_RULE), (RECTIFIED, BORDER, POOL_MEASURED),
)  # fmt: skip


def _operation(model: nn.Module, step) -> str:
    if step.op == "call_module":
        return type(model.get_submodule(step.target)).__name__
    return getattr(step.target, "__name__", str(step.target))


@torch.no_grad()
def measured_max_pools(model: nn.Module, x: Tensor) -> dict[str, tuple]:
    """The per-channel mean and variance of every max-pool's output on `x` (the model in
    eval mode), by plan step name: an oracle standing in for a max-pool rule that would
    know the spatial correlation of its input."""
    prop, found = propagation_of(model), {}
    for step, value in prop.execute(model.eval(), x):
        if step.op == "call_module" and isinstance(model.get_submodule(step.target),
                                                   nn.MaxPool1d | nn.MaxPool2d | nn.MaxPool3d):  # fmt: skip
            dims = [0, *range(2, value.dim())]
            found[step.name] = (value.mean(dims), value.var(dims, unbiased=False),
                                tuple(value.shape[2:]))  # fmt: skip
    return found


@torch.no_grad()
def propagate(model: nn.Module, x: Tensor, candidate: tuple[str, ...]) -> None:
    """The library's propagation of `model` with `candidate`'s rules, setting every
    analytic norm's statistics as the propagation before a training forward does."""
    prop = propagation_of(model)
    chosen = prop.rectified_residuals, prop.border_aware_convs, prop.patch_cross
    prop.rectified_residuals, prop.border_aware_convs = RECTIFIED in candidate, BORDER in candidate
    if POOL_RULE not in candidate:
        prop.patch_cross = None  # the papers' max-pool rule
    # the max-pools' inputs depend on the first layers only, whose statistics (exact first
    # conv) no candidate changes
    pools = measured_max_pools(model, x) if POOL_MEASURED in candidate else {}
    env: list = []
    for step in prop.plan:
        if step.op == "placeholder":
            channels = x.shape[1]
            start = (prop.input_mean.expand(channels), prop.input_var.expand(channels),
                     tuple(x.shape[2:]))  # fmt: skip
            env.append(start if not env else None)
            continue
        env.append(pools.get(step.name) or prop._rule(model, step, env))
    prop.rectified_residuals, prop.border_aware_convs, prop.patch_cross = chosen


@torch.no_grad()
def ratios(model: nn.Module, x: Tensor) -> list[float]:
    """Per analytic norm, in plan order: the mean over channels of the estimated (its sigma,
    which includes eps) over the measured standard deviation of its input on `x` (the model in eval mode, normalized with
    the statistics the propagation set)."""
    prop = propagation_of(model)
    norm_inputs = {s.args[0].index for s in prop.plan if s.op == "call_module"
                   and isinstance(model.get_submodule(s.target), AnalyticNorm)}  # fmt: skip
    measured = {}
    for i, (_, value) in enumerate(prop.execute(model.eval(), x)):
        if i in norm_inputs:
            dims = [0, *range(2, value.dim())]
            measured[i] = value.var(dims, unbiased=False).sqrt()
    found = []
    for step in prop.plan:
        if step.op == "call_module" and isinstance(model.get_submodule(step.target), AnalyticNorm):
            norm = model.get_submodule(step.target)
            found.append((norm.sigma / measured[step.args[0].index]).mean().item())
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=["resnet18", "tv-resnet18", "resnet50", "regnetx_002"]
    )
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="of each model's initialization (0 is zoo.py's)",
    )
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/rule-candidates.md"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    x, _ = real_images(args.images, args.size)
    lines = [
        "# Candidate moment rules for analytic norm",
        "",
        f"Command: `python benchmarks/rule_candidates.py --models {' '.join(args.models)} "
        f"--size {args.size} --images {args.images} --seeds {' '.join(map(str, args.seeds))}`. {hardware()}; torch {torch.__version__}, "
        f"timm {timm.__version__}, Python {platform.python_version()}.",
        "",
        f"Untrained models on {args.images} Fashion-MNIST test images at {args.size}x{args.size} "
        "(as in zoo.md; first conv exact). Per normalized layer the mean over channels of "
        "sigma_est / sigma_true of its input; goal: every layer within "
        f"[{BAND[0]}, {BAND[1]}]. The candidates are described in the script's docstring.",
        "",
        "| model | seed | rules | min | median | max | layers in band |",
        "|---|---|---|---|---|---|---|",
    ]
    per_layer = []
    for name in args.models:
        for seed in args.seeds:
            torch.manual_seed(seed)  # 0 as zoo.py
            model = convert(warmed_batch_norm(build(name), x), "analytic", inputs=x)
            for candidate in CANDIDATES:
                propagate(model, x, candidate)
                found = ratios(model, x)
                inside = sum(BAND[0] <= r <= BAND[1] for r in found)
                rules = " + ".join(candidate)
                lines.append(f"| {name} | {seed} | {rules} | {min(found):.2f} | "
                             f"{statistics.median(found):.2f} | {max(found):.2f} | "
                             f"{inside}/{len(found)} |")  # fmt: skip
                per_layer.append(f"- {name}, seed {seed}, {rules}: "
                                 + ", ".join(f"{r:.2f}" for r in found))  # fmt: skip
                print(per_layer[-1], file=sys.stderr)
    lines += ["", "Per layer:", "", *per_layer]
    text = "\n".join(lines) + "\n"
    atomic_write(args.out, lambda f: f.write(text.encode()))


if __name__ == "__main__":
    main()
