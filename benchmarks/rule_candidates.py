"""Moment rules for analytic norm, measured against each other: per normalized layer of a
zoo model at initialization, sigma_est / sigma_true of the layer's output on real images
(as in zoo.py), for combinations of the rules below ("both": rectified residual and
border-aware conv; "both, max-pool measured": and the max-pool oracle).

    python benchmarks/rule_candidates.py [--models resnet18 tv-resnet18 resnet50 regnetx_002]
        [--seeds 0 1 2] [--out results/benchmarks/rule-candidates.md]

- "rectified residual": the library's option `rectified_residuals=True` (of `convert`
  and `MomentPropagation`): a ReLU after the residual addition of an earlier ReLU's output
  and another branch gets the moments of relu(relu(a) + b) (`moments.residual_relu`); "as
  is" is the default, every ReLU's input taken as Gaussian (the papers' rule).
- "max-pool measured", an oracle: the max-pool's output moments measured on the images,
  standing for a max-pool rule that knows the spatial correlation of its input (the
  library's rule passes the input's moments on: the max of equal values).
- "border-aware conv", a candidate not in the library: the conv rule counts zero padding.
  Under the rule's independence assumption, the output mean and variance over positions,
  where an output position near the border sums fewer input terms (the library's rule
  assumes every term is present).

Needs timm, as zoo.py. Walks the library's plan with its private rule method (`_rule`), to
put the candidate conv rule and the oracle in: a measurement, not a feature.
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

from stochnorm.analytic import _first_ref, propagation_of
from stochnorm.checkpoint import atomic_write
from stochnorm.convert import convert
from stochnorm.norms import AnalyticNorm
from stochnorm.provenance import hardware

CANDIDATES = ("as is", "rectified residual", "border-aware conv", "both",
              "both, max-pool measured")  # fmt: skip


def _valid_fractions(n: int, kernel: int, stride: int, padding: int, dilation: int):
    """For one spatial dimension: the fraction of output positions at which each kernel
    offset reads inside the input [k], and at which each pair of offsets both do [k, k]."""
    out = (n + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    position = torch.arange(out)[:, None] * stride - padding + torch.arange(kernel) * dilation
    inside = ((position >= 0) & (position < n)).float()
    return inside.mean(0), inside.T @ inside / out


def border_aware_conv(conv: nn.Conv2d, mean: Tensor, var: Tensor, size) -> tuple[Tensor, Tensor]:
    """The conv rule with zero padding counted, under independent inputs: the mean over
    output positions of the position's mean, and the mean of the position's variance plus
    the variance of the position's mean (grouped convs: each output reads its group)."""
    (fy, gy), (fx, gx) = (_valid_fractions(n, *a) for n, *a in zip(
        size, conv.kernel_size, conv.stride, conv.padding, conv.dilation, strict=True))  # fmt: skip
    inside, both = torch.kron(fy, fx).to(mean), torch.kron(gy, gx).to(mean)
    groups, out = conv.groups, conv.weight.shape[0]
    w = conv.weight.reshape(groups, out // groups, conv.weight.shape[1], -1)
    per_offset = torch.einsum("gock,gc->gok", w, mean.view(groups, -1)).reshape(out, -1)
    spread = torch.einsum("gock,gc->gok", w * w, var.view(groups, -1)).reshape(out, -1)
    centre = per_offset @ inside
    bias = conv.bias if conv.bias is not None else 0.0
    between = torch.einsum("ok,kl,ol->o", per_offset, both, per_offset) - centre * centre
    return centre + bias, (spread @ inside + between).clamp_min(0)


@torch.no_grad()
def monte_carlo_checks(maps: int = 100_000) -> dict[str, float]:
    """The border-aware conv rule against Monte-Carlo (float64, a strided, grouped 3x3 conv
    with padding on 7x7 maps of independent Gaussian pixels): the largest error of the mean in
    output standard deviations and the largest relative error of the variance."""
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(4, 4, 3, padding=1, stride=2, groups=2).double()
    mean_in = torch.tensor([0.5, -1.0, 0.0, 1.0], dtype=torch.float64)
    var_in = torch.tensor([1.0, 2.0, 0.25, 0.5], dtype=torch.float64)
    noise = torch.randn(maps, 4, 7, 7, generator=g, dtype=torch.float64)
    out = conv(mean_in[:, None, None] + var_in.sqrt()[:, None, None] * noise)
    mean, var = border_aware_conv(conv, mean_in, var_in, (7, 7))
    true_var = out.var((0, 2, 3))
    return {
        "border-aware conv mean": ((mean - out.mean((0, 2, 3))) / true_var.sqrt())
        .abs()
        .max()
        .item(),
        "border-aware conv variance": (var / true_var - 1).abs().max().item(),
    }


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
def propagate(model: nn.Module, x: Tensor, candidate: str) -> None:
    """The library's propagation of `model` with `candidate`'s rules, setting every
    analytic norm's statistics as the propagation before a training forward does."""
    prop = propagation_of(model)
    chosen = prop.rectified_residuals
    prop.rectified_residuals = candidate != "as is" and candidate != "border-aware conv"
    border = "both" in candidate or candidate == "border-aware conv"
    # the max-pools' inputs depend on the first layers only, whose statistics (exact first
    # conv) no candidate changes
    pools = measured_max_pools(model, x) if "max-pool measured" in candidate else {}
    env: list = []
    for step in prop.plan:
        if step.op == "placeholder":
            channels = x.shape[1]
            start = (prop.input_mean.expand(channels), prop.input_var.expand(channels),
                     tuple(x.shape[2:]))  # fmt: skip
            env.append(start if not env else None)
            continue
        state = prop._rule(model, step, env)
        first = _first_ref(step)
        given = env[first] if first is not None else None
        if border and step.op == "call_module" and not step.reads_input and given is not None:
            conv = model.get_submodule(step.target)
            if isinstance(conv, nn.Conv2d):
                state = (*border_aware_conv(conv, given[0], given[1], given[2]), state[2])
        env.append(pools.get(step.name, state))
    prop.rectified_residuals = chosen


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
        "The border-aware conv rule against Monte-Carlo (`monte_carlo_checks`: 100,000 maps, "
        "float64; mean error in standard deviations of the output, variance error relative; "
        "the sampling error is about 0.001-0.002 on either; the residual ReLU rule is tested "
        "in tests/test_moments.py):",
        "",
        *[f"- {name}: {error:.4f}" for name, error in monte_carlo_checks().items()],
        "",
        "| model | seed | rules | min | median | max | layers in band |",
        "|---|---|---|---|---|---|---|",
    ]
    per_layer = []
    for name in args.models:
        for seed in args.seeds:
            torch.manual_seed(seed)  # 0 as zoo.py: its "as is" row repeats zoo-statistics.md
            model = convert(warmed_batch_norm(build(name), x), "analytic", inputs=x)
            for candidate in CANDIDATES:
                propagate(model, x, candidate)
                found = ratios(model, x)
                inside = sum(BAND[0] <= r <= BAND[1] for r in found)
                lines.append(f"| {name} | {seed} | {candidate} | {min(found):.2f} | "
                             f"{statistics.median(found):.2f} | {max(found):.2f} | "
                             f"{inside}/{len(found)} |")  # fmt: skip
                per_layer.append(f"- {name}, seed {seed}, {candidate}: "
                                 + ", ".join(f"{r:.2f}" for r in found))  # fmt: skip
                print(per_layer[-1], file=sys.stderr)
    lines += ["", "Per layer:", "", *per_layer]
    text = "\n".join(lines) + "\n"
    atomic_write(args.out, lambda f: f.write(text.encode()))


if __name__ == "__main__":
    main()
