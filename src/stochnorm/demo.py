"""The main job of a new installation: a short real training on Fashion-MNIST (demo profile)
of batch norm beside analytic normalization with projection and learned Bayesian scale
noise, then the evaluation (single pass and Monte-Carlo) and the report of both."""

from __future__ import annotations

from pathlib import Path

from .config import TrainConfig
from .evaluation import evaluate_run
from .report import write_report
from .runs import RunDir
from .train import train

# Learning rates found with `stochnorm lr-find --profile demo ...` (2-epoch trials) for
# each run's settings (analytic + projection + Bayes: results/demo/lr-find-*.json; from
# 0.018 up its trials diverge).
DEMO_RUNS = {
    "batch": {"norm": "batch", "lr": 0.056},
    "analytic-proj-bayes": {"norm": "analytic", "project": True, "noise": "bayes", "lr": 0.010},
}
DEMO_SAMPLES = (10,)  # MC-30 would add about 3 min on 2 cores


def demo(out: Path, *, device: str = "cpu", progress: bool = True) -> int:
    """Train and evaluate each demo run (resuming one already started in `out`), write the
    report, and print each model's test metrics."""
    runs = []
    for name, overrides in DEMO_RUNS.items():
        cfg = TrainConfig.from_profile("demo", **overrides)
        run = RunDir(out / name)
        done = run.exists() and run.metrics_path.exists() and run.metrics().get("complete")
        if not done:
            resume = run.exists() and run.checkpoint_path.exists()
            train(cfg, run.path, resume=resume, device=device, progress=progress)
        if run.evaluation() is None or not done:
            evaluate_run(run.path, samples=DEMO_SAMPLES, device=device)
        runs.append(run)
    report = write_report(
        runs, out, title="stochnorm demo: batch norm vs analytic norm + projection + Bayes"
    )
    for run in runs:
        for mode, entry in run.evaluation()["test"].items():
            print(
                f"{run.name:>20} {mode:>6}: test accuracy {100 * entry['accuracy']:.2f}%, "
                f"NLL {entry['nll']:.3f}, ECE {entry['ece']:.3f}"
            )
    print(f"report: {report}")
    return 0
