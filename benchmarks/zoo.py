"""convert() on the architectures people use: for each timm model (and torchvision's
resnet18) and each normalization, whether conversion works, a training step at batch 1 and 2,
fold() against the evaluation model, the training-step time relative to the batch-norm model
and, for analytic norm, the propagated against the measured statistics at initialization on
real images (Fashion-MNIST test images, resized and repeated to 3 channels).

    python benchmarks/zoo.py [--models resnet18 ...] [--size 64] [--batch 8] [--out FILE]
    python benchmarks/zoo.py --statistics-only --out results/benchmarks/zoo-statistics.md

Needs timm (and torchvision, which timm imports). Models are built untrained
(`pretrained=False`, 10 classes). Timings are interleaved (`timing.interleaved`).
Goals: analytic sigma_est / sigma_true within [0.8, 1.25] in every layer of resnet18 at init;
one analytic training step <= 1.3x BN's on resnet18 at 64x64 and batch 8.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import warnings
from pathlib import Path

import timm
import torch
from timing import interleaved, train_step
from torch import nn
from torch.nn import functional as F

from stochnorm.checkpoint import atomic_write
from stochnorm.convert import convert, fold
from stochnorm.data import fashion_mnist
from stochnorm.diagnostics import (
    analytic_statistics,
    independence_error,
    rule_error_summary,
    rule_errors,
)
from stochnorm.provenance import hardware

MODELS = ("resnet18", "resnet50", "mobilenetv3_small_100", "efficientnet_b0", "regnetx_002",
          "densenet121", "tv-resnet18")  # fmt: skip
CASES = {  # name -> (norm, noise)
    "batch": ("batch", None),
    "weight": ("weight", None),
    "analytic": ("analytic", None),
    "analytic + bayes": ("analytic", "bayes"),
    "population": ("population", None),
}
BAND = (0.8, 1.25)  # the goal for sigma_est / sigma_true


def build(name: str) -> nn.Module:
    """An untrained model with 10 classes: timm's, or torchvision's for a `tv-` name."""
    if name.startswith("tv-"):
        import torchvision

        return getattr(torchvision.models, name[3:])(num_classes=10)
    return timm.create_model(name, pretrained=False, num_classes=10)


def real_images(count: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` Fashion-MNIST test images resized to `size` and repeated to 3 channels,
    standardized, with their labels."""
    raw = fashion_mnist.load(download_missing=False)
    x = torch.from_numpy(raw.test_x[:count]).float() / 255.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = ((x - x.mean()) / x.std()).repeat(1, 3, 1, 1)
    return x, torch.from_numpy(raw.test_y[:count]).long()


def warmed_batch_norm(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """The batch-norm source after a few training-mode forwards, so that its running
    statistics (which convert copies and fold uses) are not the initial 0 / 1."""
    model.train()
    with torch.no_grad():
        for chunk in x.split(16):
            model(chunk)
    return model


def try_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> str:
    """A training step at batch 1 and at batch 2: 'ok', or the error of the first failing."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    model.train()
    for batch in (1, 2):
        try:
            loss = F.cross_entropy(model(x[:batch]), y[:batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        except Exception as exc:  # reported in the table, not raised
            return f"batch {batch}: {type(exc).__name__}: {short(exc)}"
        if not torch.isfinite(loss):
            return f"batch {batch}: loss {loss.item()}"
    return "ok"


def fold_difference(model: nn.Module, x: torch.Tensor) -> float:
    """max |eval(x) - fold(eval)(x)| / max |eval(x)| after a training-mode forward (which sets
    analytic and population norm's statistics from the current weights)."""
    model.train()
    with torch.no_grad():
        model(x[:16])
        model.eval()
        out = model(x[:8])
        folded = fold(model)(x[:8])
    return ((out - folded).abs().max() / out.abs().max()).item()


def short(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def measure(name: str, args: argparse.Namespace, x: torch.Tensor, y: torch.Tensor) -> dict:
    torch.manual_seed(0)
    source = warmed_batch_norm(build(name), x)
    converted, rows = {}, {}
    cases = {"analytic": CASES["analytic"]} if args.statistics_only else CASES
    for case, (norm, noise) in cases.items():
        row: dict = {}
        inputs = x if norm == "analytic" else None
        try:
            if case == "batch":
                model, row["convert"] = copy.deepcopy(source), "(the source)"
            else:
                model, row["convert"] = convert(source, norm, noise, inputs=inputs), "ok"
        except ValueError as exc:
            if "no conv/linear layer in front" not in str(exc):
                row["convert"] = f"{type(exc).__name__}: {short(exc)}"
                rows[case] = row
                continue
            with warnings.catch_warnings():  # the refusal is recorded; keep those layers
                warnings.simplefilter("ignore")
                model = convert(source, norm, noise, inputs=inputs, strict=False)
            kept = str(exc).split(" batch norm(s)")[0].removeprefix("convert: ")
            row["convert"] = (
                f"refused: {kept} BNs have no conv/linear in front; strict=False keeps them"
            )
        except Exception as exc:
            row["convert"] = f"{type(exc).__name__}: {short(exc)}"
            rows[case] = row
            continue
        if not args.statistics_only:
            row["steps"] = try_steps(model, x, y)
            try:
                row["fold"] = fold_difference(model, x)
            except Exception as exc:
                row["fold"] = f"{type(exc).__name__}: {short(exc)}"
        if norm == "analytic" and noise is None and row["convert"] == "ok":
            fresh = convert(source, "analytic", inputs=x).eval()
            row["an_stats"] = analytic_statistics(fresh, x, batch_size=64)
            try:  # the conv rule alone, given the true input moments of each layer
                found = independence_error(fresh, x, batch_size=64, max_rows=20_000)
                row["independence"] = [r["independent"] for r in found[1:]]  # 1st: exact
            except ValueError as exc:  # e.g. no normalization bound to a layer
                row["independence"] = short(exc, 40)
            row["rules"] = rule_error_summary(rule_errors(fresh, x, batch_size=64))
        converted[case] = model
        rows[case] = row
    if args.statistics_only:
        return rows
    xb, yb = x[: args.batch], y[: args.batch]
    times = interleaved({c: train_step(m, xb, yb) for c, m in converted.items()}, args.repeats)
    for case, seconds in times.items():
        rows[case]["step_ms"] = 1000 * seconds
        if "batch" in times:
            rows[case]["step_vs_bn"] = seconds / times["batch"]
    return rows


def conv_rule(row: dict) -> str:
    """Median | max over layers 2.. of the conv rule's sigma against the true one given the
    true input moments (`diagnostics.independence_error`), or why it was not measured."""
    found = row.get("independence")
    if not isinstance(found, list) or not found:
        return f"{found or '-'} | -"
    return f"{statistics.median(found):.2f} | {max(found):.2f}"


def fmt_fold(value) -> str:
    return f"{value:.1e}" if isinstance(value, float) else str(value)


def write(results: dict[str, dict], args: argparse.Namespace, out: Path) -> None:
    lines = [
        "# convert() on the model zoo",
        "",
        f"Command: `python benchmarks/zoo.py --size {args.size} --batch {args.batch} "
        f"--repeats {args.repeats}{' --statistics-only' if args.statistics_only else ''}`. "
        f"{hardware()}; torch {torch.__version__}, timm "
        f"{timm.__version__}, Python {platform.python_version()}.",
        "",
        f"Untrained models (10 classes) on {args.images} Fashion-MNIST test images resized to "
        f"{args.size}x{args.size} and repeated to 3 channels. The BN source is warmed by "
        "training-mode forwards so that its running statistics are not the initial ones. "
        "`steps`: a training step at batch 1 and at batch 2 (finite loss); `fold`: max |eval - "
        "folded| / max |eval| on 8 images; `step / BN`: one SGD training step at batch "
        f"{args.batch} relative to the BN model's, median of {args.repeats} interleaved rounds "
        "(a shared machine: ratios within about 10% are not distinguishable). Analytic norm "
        "starts from the moments of these images (`convert(..., inputs=x)`: the first conv "
        "exact); `sigma_est / sigma_true`: per layer the mean over channels of the propagated "
        "over the measured standard deviation of the layer's output on the same images, "
        f"summarized over layers (goal: every layer within [{BAND[0]}, {BAND[1]}]); `conv rule "
        "alone`: per layer (from the second on; the first is exact) the conv rule's sigma over "
        "the true one when it is given the layer's true input moments "
        "(`diagnostics.independence_error`: the independence assumption by itself).",
        "",
    ]
    if not args.statistics_only:
        lines += conversions_section(results)
    lines += ["", "## Analytic norm's statistics at initialization", "",
              "| model | layers | sigma_est / sigma_true: min | median | max | layers in band "
              "| worst layer | mean error / sigma: median | max | conv rule alone: median | max |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, rows in results.items():
        stats = rows.get("analytic", {}).get("an_stats")
        if not stats:
            continue
        ratios = [r["sigma_ratio_mean"] for r in stats]
        errors = [r["mean_error"] for r in stats]
        inside = sum(BAND[0] <= r <= BAND[1] for r in ratios)
        worst = max(range(len(ratios)), key=lambda i: abs(torch.tensor(ratios[i]).log()))
        lines.append(
            f"| {name} | {len(stats)} | {min(ratios):.2f} | {statistics.median(ratios):.2f} | "
            f"{max(ratios):.2f} | {inside}/{len(stats)} | {worst + 1} ({ratios[worst]:.2f}) | "
            f"{statistics.median(errors):.2f} | {max(errors):.2f} | {conv_rule(rows['analytic'])} |"
        )
    for name, rows in results.items():
        stats = rows.get("analytic", {}).get("an_stats")
        if stats and name in ("resnet18", "tv-resnet18"):
            lines += ["", f"Per layer, {name}: " + ", ".join(
                f"{r['sigma_ratio_mean']:.2f}" for r in stats)]  # fmt: skip
    lines += rules_section(results)
    text = "\n".join(lines) + "\n"
    atomic_write(out, lambda f: f.write(text.encode()))


def conversions_section(results: dict[str, dict]) -> list[str]:
    """Lines of the table of conversions, steps, fold and step times per model and norm."""
    lines = ["| model | norm | convert | steps at batch 1, 2 | fold | step / BN | BN step ms |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, rows in results.items():
        bn_ms = rows.get("batch", {}).get("step_ms")
        for case, row in rows.items():
            ratio = row.get("step_vs_bn")
            lines.append(
                f"| {name} | {case} | {row['convert']} | {row.get('steps', '-')} | "
                f"{fmt_fold(row.get('fold', '-'))} | {f'{ratio:.2f}' if ratio else '-'} | "
                f"{f'{bn_ms:.0f}' if bn_ms and case == 'batch' else ''} |"
            )
    return lines


def rules_section(results: dict[str, dict]) -> list[str]:
    """Lines of the table of every rule on its own (`diagnostics.rule_errors`), per model and
    operation: median (min - max) over the steps of that operation of the rule's sigma over
    the true one, given the true input moments, and the median mean error."""
    found = {
        n: r["analytic"]["rules"] for n, r in results.items() if "rules" in r.get("analytic", {})
    }
    if not found:
        return []
    lines = ["", "## Each rule on its own", "",
             "Per operation, the rule given the true moments of its inputs "
             "(`diagnostics.rule_errors`): sigma_rule / sigma_true, median over channels, then "
             "the median (min - max) over the operation's steps; last column the median "
             "abs(mu_rule - mu_true) / sigma_true. Below 1 the rule underestimates the spread; "
             "errors multiply along the network.", "",
             "| model | operation | steps | sigma_rule / sigma_true | mean error |",
             "|---|---|---|---|---|"]  # fmt: skip
    for name, summary in found.items():
        for operation, s in summary.items():
            lines.append(
                f"| {name} | {operation} | {s['steps']} | {s['sigma_ratio_median']:.2f} "
                f"({s['sigma_ratio_min']:.2f} - {s['sigma_ratio_max']:.2f}) | "
                f"{s['mean_error_median']:.2f} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/zoo.md"))
    parser.add_argument(
        "--statistics-only", action="store_true",
        help="only analytic norm's statistics and rules (no other norms, steps or timing)",
    )  # fmt: skip
    args = parser.parse_args()
    x, y = real_images(args.images, args.size)
    results = {}
    for name in args.models:
        results[name] = measure(name, args, x, y)
        write(results, args, args.out)
        print(f"{name}: " + "; ".join(f"{c} {r['convert'][:40]}" for c, r in results[name].items()),
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
