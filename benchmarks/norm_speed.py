"""Training-step time of each normalization relative to batch norm, and evaluation time of
a folded model relative to the same network without normalization, measured side by side
in one run (All-CNN-C on 28x28 single-channel inputs).

    python benchmarks/norm_speed.py [--widths 0.333 1] [--batches 32 256] [--repeats 15]
                                    [--compiled [MODE]] [--device cuda]

Goals: analytic <= 1.10x BN, weight <= 1.05x BN, folded = 1.00x +- 0.03 of the plain net;
with --compiled every training step runs through torch.compile (each model compiled against
its own, the first warm-up steps compile) and analytic <= 1.10x compiled BN.
Timings are interleaved (one step of every variant per round) and the median of the rounds
is reported, so a load that comes and goes affects all variants alike.
"""

from __future__ import annotations

import argparse
import platform

import torch
from timing import eval_step, interleaved, train_step

from stochnorm import AllCNN
from stochnorm.convert import fold
from stochnorm.provenance import hardware

NORMS = ("batch", "weight", "analytic", "population", "none")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=float, nargs="+", default=[1 / 3, 1.0])
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--compiled", nargs="?", const="default", metavar="MODE",
        help="training steps through torch.compile, in its MODE (default; reduce-overhead: "
        "CUDA graphs)",
    )  # fmt: skip
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    torch.manual_seed(0)
    mode = f"compiled (torch.compile, mode {args.compiled})" if args.compiled else "eager"
    where = hardware() if args.device == "cpu" else torch.cuda.get_device_name(args.device)
    print(f"# {where}; torch {torch.__version__}; Python {platform.python_version()}; "
          f"training steps {mode}")  # fmt: skip
    print("| width | batch | " + " | ".join(f"{n} / batch" for n in NORMS) + " | BN step ms "
          "| folded BN / plain (eval) | folded analytic / plain (eval) |")  # fmt: skip
    print("|" + "---|" * (len(NORMS) + 5))
    for width in args.widths:
        for batch in args.batches:
            x = torch.randn(batch, 1, 28, 28, device=args.device)
            y = torch.randint(0, 10, (batch,), device=args.device)
            models = {n: AllCNN(1, 10, width=width, norm=n).to(args.device).train() for n in NORMS}
            if args.compiled:
                torch._dynamo.reset()  # dynamo recompiles the shared forward 8 times at most
            steps = {
                n: train_step(torch.compile(m, mode=args.compiled) if args.compiled else m, x, y)
                for n, m in models.items()
            }
            train = interleaved(steps, args.repeats)
            for m in models.values():
                m.eval()
            evals = interleaved(
                {
                    "plain": eval_step(models["none"], x),
                    "bn": eval_step(fold(models["batch"]), x),
                    "analytic": eval_step(fold(models["analytic"]), x),
                },
                args.repeats,
            )
            ratios = " | ".join(f"{train[n] / train['batch']:.3f}" for n in NORMS)
            print(
                f"| {width:.3g} | {batch} | {ratios} | {1000 * train['batch']:.1f} | "
                f"{evals['bn'] / evals['plain']:.3f} | {evals['analytic'] / evals['plain']:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
