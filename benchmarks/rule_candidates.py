"""Candidate moment rules for analytic norm, measured before they enter the propagation:
per normalized layer of a zoo model at initialization, sigma_est / sigma_true of the layer's
output on real images (as in zoo.py), when the propagation replaces some of its rules.

    python benchmarks/rule_candidates.py [--models resnet18 tv-resnet18 resnet50]
        [--out results/benchmarks/rule-candidates.md]

Candidates (each applied to every step it fits, the library's rule everywhere else):
- "rectified residual": a ReLU whose input is the sum of an earlier ReLU's output relu(a)
  and a Gaussian branch b independent of it gets the moments of relu(relu(a) + b) by
  quadrature over a (the library's rule takes the sum as Gaussian, which it is
  not: at initialization timm's last BN of a block has scale 0, so the sum is relu(a) itself).
  Every ReLU output is kept as a rectified Gaussian relu(N(m, v)), with (m, v) its input's
  moments, or, after a residual ReLU, the (m, v) whose rectification has the computed mean
  and variance (found by bisection); a max-pool passes it on, as its rule passes the moments.
- "border-aware conv": the conv rule counts zero padding. Under the rule's independence
  assumption, the output mean and variance over positions, where an output position near
  the border sums fewer input terms (the library's rule assumes every term is present).

Needs timm, as zoo.py. Walks the library's plan with its private rule method (`_rule`): a
measurement of what a rule change would give, not a feature.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
from pathlib import Path

import numpy as np
import timm
import torch
from torch import Tensor, nn
from zoo import BAND, build, real_images, warmed_batch_norm

from stochnorm.analytic import _Ref, propagation_of
from stochnorm.checkpoint import atomic_write
from stochnorm.convert import convert
from stochnorm.norms import AnalyticNorm
from stochnorm.provenance import hardware

CANDIDATES = ("as is", "rectified residual", "border-aware conv", "both")


def _cdf(t: Tensor) -> Tensor:
    return 0.5 * torch.erfc(-t / math.sqrt(2.0))


def _pdf(t: Tensor) -> Tensor:
    return torch.exp(-0.5 * t * t) / math.sqrt(2.0 * math.pi)


def relu_raw_moments(mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
    """E[relu(x)] and E[relu(x)^2] for x ~ N(mean, var)."""
    sd = var.clamp_min(1e-30).sqrt()
    t = mean / sd
    first = mean * _cdf(t) + sd * _pdf(t)
    second = (mean * mean + var) * _cdf(t) + mean * sd * _pdf(t)
    return first, second


def rectified_source(mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
    """The (m, v) for which relu(N(m, v)) has `mean` and `var`: mean / sd of relu(N(t, 1))
    grows with t, so t is found by bisection, then the scale from the variance."""

    def ratio(t: Tensor) -> Tensor:
        first, second = relu_raw_moments(t, torch.ones_like(t))
        return first / (second - first * first).clamp_min(1e-30).sqrt()

    target = mean / var.clamp_min(1e-30).sqrt()
    low, high = torch.full_like(mean, -30.0), torch.full_like(mean, 30.0)
    for _ in range(80):
        mid = (low + high) / 2
        above = ratio(mid) > target
        high, low = torch.where(above, mid, high), torch.where(above, low, mid)
    t = (low + high) / 2
    first, second = relu_raw_moments(t, torch.ones_like(t))
    scale = var.sqrt() / (second - first * first).clamp_min(1e-30).sqrt()
    return t * scale, scale * scale


def residual_relu(
    source: tuple[Tensor, Tensor], branch: tuple[Tensor, Tensor]
) -> tuple[Tensor, Tensor]:
    """Mean and variance of relu(relu(a) + b), a ~ N(*source), b ~ N(*branch) independent,
    per channel. Where a <= 0 the value is relu(b) (closed form, weighted by P(a <= 0));
    where a > 0 it is relu(a + b), whose moments over b are in closed form and are
    integrated over a by 96-node Gauss-Legendre quadrature in the coordinate u = Phi((a - m)
    / sd) on (P(a <= 0), 1), where the integrand is smooth (no kink at a = 0)."""
    nodes, weights = (torch.tensor(v, dtype=source[0].dtype) for v in
                      np.polynomial.legendre.leggauss(96))  # fmt: skip
    sd = source[1].clamp_min(1e-30).sqrt()
    below = _cdf(-source[0] / sd)  # P(a <= 0)
    u = below[:, None] + (1 - below[:, None]) * (nodes + 1) / 2  # [C, nodes] in (below, 1)
    a = source[0][:, None] + sd[:, None] * math.sqrt(2.0) * torch.special.erfinv(2 * u - 1)
    first, second = relu_raw_moments(a + branch[0][:, None], branch[1][:, None].expand_as(a))
    share = (1 - below)[:, None] * weights / 2  # each node's probability mass
    first0, second0 = relu_raw_moments(branch[0], branch[1])
    mean = below * first0 + (first * share).sum(1)
    square = below * second0 + (second * share).sum(1)
    return mean, (square - mean * mean).clamp_min(0)


def _valid_fractions(n: int, kernel: int, stride: int, padding: int, dilation: int):
    """For one spatial dimension: the fraction of output positions at which each kernel
    offset reads inside the input [k], and at which each pair of offsets both do [k, k]."""
    out = (n + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    position = torch.arange(out)[:, None] * stride - padding + torch.arange(kernel) * dilation
    inside = ((position >= 0) & (position < n)).float()
    return inside.mean(0), inside.T @ inside / out


def border_aware_conv(conv: nn.Conv2d, mean: Tensor, var: Tensor, size) -> tuple[Tensor, Tensor]:
    """The conv rule with zero padding counted (groups of 1), under independent inputs:
    the mean over output positions of the position's mean, and the mean of the position's
    variance plus the variance of the position's mean."""
    (fy, gy), (fx, gx) = (_valid_fractions(n, *a) for n, *a in zip(
        size, conv.kernel_size, conv.stride, conv.padding, conv.dilation, strict=True))  # fmt: skip
    inside, both = torch.kron(fy, fx).to(mean), torch.kron(gy, gx).to(mean)
    w = conv.weight.reshape(conv.weight.shape[0], conv.weight.shape[1], -1)
    per_offset = torch.einsum("ock,c->ok", w, mean)
    spread = torch.einsum("ock,c->ok", w * w, var)
    centre = per_offset @ inside
    bias = conv.bias if conv.bias is not None else 0.0
    between = torch.einsum("ok,kl,ol->o", per_offset, both, per_offset) - centre * centre
    return centre + bias, (spread @ inside + between).clamp_min(0)


@torch.no_grad()
def monte_carlo_checks(samples: int = 2_000_000) -> dict[str, float]:
    """The candidate rules against Monte-Carlo (float64): the largest relative error of the
    mean and of the variance over a few channels with different moments, and of the
    rectified source recovered from a rectified Gaussian's moments."""
    g = torch.Generator().manual_seed(0)
    m_a, v_a = (
        torch.tensor([-1.0, 0.0, 0.5, 2.0]).double(),
        torch.tensor([1.0, 0.5, 2.0, 1.0]).double(),
    )
    m_b, v_b = (
        torch.tensor([0.0, -0.5, 1.0, 0.0]).double(),
        torch.tensor([0.0, 1.0, 0.3, 4.0]).double(),
    )
    a = m_a + v_a.sqrt() * torch.randn(samples, 4, generator=g, dtype=torch.float64)
    b = m_b + v_b.sqrt() * torch.randn(samples, 4, generator=g, dtype=torch.float64)
    y = (a.relu() + b).relu()
    mean, var = residual_relu((m_a, v_a), (m_b, v_b))
    checks = {"residual ReLU mean": ((mean - y.mean(0)) / y.std(0)).abs().max().item(),
              "residual ReLU variance": (var / y.var(0) - 1).abs().max().item()}  # fmt: skip
    first, second = relu_raw_moments(m_a, v_a)
    m, v = rectified_source(first, second - first * first)
    checks["rectified source"] = max((m - m_a).abs().max().item(), (v / v_a - 1).abs().max().item())
    conv = nn.Conv2d(3, 4, 3, padding=1, stride=2).double()
    mean_in, var_in = (
        torch.tensor([0.5, -1.0, 0.0]).double(),
        torch.tensor([1.0, 2.0, 0.25]).double(),
    )
    x = mean_in[:, None, None] + var_in.sqrt()[:, None, None] * torch.randn(
        samples // 20, 3, 7, 7, generator=g, dtype=torch.float64)  # fmt: skip
    out = conv(x)
    mean, var = border_aware_conv(conv, mean_in, var_in, (7, 7))
    true_var = out.var((0, 2, 3))
    checks["border-aware conv mean"] = (
        ((mean - out.mean((0, 2, 3))) / true_var.sqrt()).abs().max().item()
    )
    checks["border-aware conv variance"] = (var / true_var - 1).abs().max().item()
    return checks


def _operation(model: nn.Module, step) -> str:
    if step.op == "call_module":
        return type(model.get_submodule(step.target)).__name__
    return getattr(step.target, "__name__", str(step.target))


@torch.no_grad()
def propagate(model: nn.Module, x: Tensor, candidate: str) -> None:
    """The propagation of `model`'s plan with `candidate`'s rules, setting every analytic
    norm's statistics as the library's propagation does."""
    prop = propagation_of(model)
    rectified = candidate in ("rectified residual", "both")
    border = candidate in ("border-aware conv", "both")
    env: list = []
    sources: dict[int, tuple[Tensor, Tensor]] = {}  # step -> (m, v) of its rectified Gaussian
    for i, step in enumerate(prop.plan):
        if step.op == "placeholder":
            channels = x.shape[1]
            start = (prop.input_mean.expand(channels), prop.input_var.expand(channels),
                     tuple(x.shape[2:]))  # fmt: skip
            env.append(start if not env else None)
            continue
        state = prop._rule(model, step, env)
        op = _operation(model, step)
        given = env[step.args[0].index] if step.args and isinstance(step.args[0], _Ref) else None
        if border and op == "Conv2d" and not step.reads_input and given is not None:
            conv = model.get_submodule(step.target)
            if conv.groups == 1:
                state = (*border_aware_conv(conv, given[0], given[1], given[2]), state[2])
        if rectified and op in ("ReLU", "relu") and given is not None:
            j = step.args[0].index
            producer = prop.plan[j]
            terms = [a.index for a in producer.args if isinstance(a, _Ref)]
            if j in sources:  # relu of a rectified value: itself
                state, sources[i] = given, sources[j]
            elif (
                _operation(model, producer) in ("add", "iadd")
                and len(terms) == 2
                and (sum(t in sources for t in terms) == 1)
            ):
                skip = next(t for t in terms if t in sources)
                branch = env[next(t for t in terms if t not in sources)]
                mean, var = residual_relu(sources[skip], (branch[0], branch[1]))
                state, sources[i] = (mean, var, given[2]), rectified_source(mean, var)
            else:
                sources[i] = (given[0], given[1])
        if rectified and op.startswith("MaxPool") and step.args[0].index in sources:
            sources[i] = sources[step.args[0].index]
        env.append(state)


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
    parser.add_argument("--models", nargs="+", default=["resnet18", "tv-resnet18", "resnet50"])
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
        "The candidate rules against Monte-Carlo (`monte_carlo_checks`: 2,000,000 samples, "
        "100,000 maps for the conv; float64; mean errors in standard deviations of the output, variance errors relative; "
        "the sampling error is about 0.001-0.002 on either):",
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
