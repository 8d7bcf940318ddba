"""The main job of a new installation: a short real training of batch norm against the
plain network on Fashion-MNIST (demo profile), then the report of both."""

from __future__ import annotations

from pathlib import Path

from .config import TrainConfig
from .report import write_report
from .runs import RunDir
from .train import train

# Learning rates found with `stochnorm lr-find --profile demo --norm NORM` (2-epoch trials).
DEMO_RUNS = {"batch": 0.056, "none": 0.018}


def demo(out: Path, *, device: str = "cpu", progress: bool = True) -> int:
    """Train each demo run (resuming one already started in `out`), write the report, and
    print the batch-norm model's test accuracy."""
    runs = []
    for norm, lr in DEMO_RUNS.items():
        cfg = TrainConfig.from_profile("demo", norm=norm, lr=lr)
        run = RunDir(out / norm)
        done = run.exists() and run.metrics_path.exists() and run.metrics().get("complete")
        if not done:
            resume = run.exists() and run.checkpoint_path.exists()
            train(cfg, run.path, resume=resume, device=device, progress=progress)
        runs.append(run)
    report = write_report(runs, out, title="stochnorm demo: batch norm vs no normalization")
    for run in runs:
        test = run.metrics().get("final", {}).get("test")
        if test:
            print(
                f"{run.name:>6}: test accuracy {100 * test['accuracy']:.2f}%, "
                f"NLL {test['nll']:.3f}, ECE {test['ece']:.3f}"
            )
    print(f"report: {report}")
    return 0
