"""Training the runs that several experiments need in parallel processes before the
experiments start (`stochnorm reproduce --jobs N`): one small network leaves most of a GPU
idle, and runs shared by experiments are trained once (the lab locks each configuration).
The experiments then find every such run finished and only measure, plot and judge."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from .base import Experiment, Lab
from .cases import run_config


def planned_runs(experiments: Sequence[Experiment]) -> list[str]:
    """The run labels the experiments declare, each once; runs with BN-like noise last,
    since they wait for the BN run whose noise they copy."""
    labels = list(dict.fromkeys(label for exp in experiments for label in exp.runs))
    return sorted(labels, key=lambda label: label.endswith("-bnlike"))


def _train_label(lab: Lab, label: str, threads: int) -> str:
    torch.set_num_threads(threads)
    return str(lab.train_seeds(run_config(lab, label), label=label)[0].path)


def train_in_parallel(lab: Lab, labels: Sequence[str], jobs: int) -> list[Path]:
    """Train (or find) the run of every label in `jobs` processes sharing the lab's run
    directory, each with its share of the CPU threads. Returns the run directories."""
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    threads = max(1, (os.cpu_count() or 1) // jobs)
    quiet = dataclasses.replace(lab, progress=False)
    context = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = [pool.submit(_train_label, quiet, label, threads) for label in labels]
        return [Path(f.result()) for f in futures]
