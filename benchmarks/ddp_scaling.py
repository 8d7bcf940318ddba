"""Data-parallel training throughput on this machine: training samples per second of the
engine (`stochnorm.train`, DistributedDataParallel over gloo) with 1 and 2 processes, for
batch norm (each process's statistics), synchronized batch norm, analytic, weight and
population norm (whose estimates come from the global batch: two all-reduces per layer),
and population norm with each process's statistics and rank 0's estimates broadcast
instead (`population-broadcast`, `--population-sync broadcast`), to see which of the two
communications is cheaper.

    python benchmarks/ddp_scaling.py [--norms batch batch-sync analytic ...]

Each case (analytic, weight and population norm with projection) trains the quick
profile's All-CNN (width 1/3) on its 5,400 Fashion-MNIST images at global batch 32 and
lr 0.01 without evaluation, 3 epochs: the first warms up, the other two are timed. Three
layouts: 1 process with 1 thread, 1 process with 2 threads, 2 processes with 1 thread
each; on 2 cores the last two compete for the same cores, so they show the cost of
communication and of splitting the batch, not the gain of more devices.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import tempfile
from pathlib import Path

import torch
import torch.multiprocessing as mp
from torch import distributed as dist

from stochnorm import TrainConfig, train
from stochnorm.provenance import hardware

# name -> TrainConfig overrides; one rate that every case trains at without diverging
# (the quick profile's default 0.05 is too large for analytic norm without its lr search)
CASES = {
    "batch": {"norm": "batch"},
    "batch-sync": {"norm": "batch", "sync_bn": True},
    "analytic": {"norm": "analytic", "project": True},
    "weight": {"norm": "weight", "project": True},
    "population": {"norm": "population", "project": True},
    "population-broadcast": {"norm": "population", "project": True, "population_sync": "broadcast"},
}
LR = 0.01
EPOCHS = 3  # the first warms up, the others are timed
LAYOUTS = ((1, 1), (1, 2), (2, 1))  # (processes, threads per process)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, threads: int, port: int, name: str, out: str) -> None:
    torch.set_num_threads(threads)
    overrides = {**CASES[name], "epochs": EPOCHS, "lr": LR}
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cfg = TrainConfig.from_profile("quick", **overrides)
        result = train(cfg, progress=False, evaluate=False)
        if rank == 0:
            metrics = result.metrics
            Path(out).write_text(json.dumps([metrics["data"]["train"], metrics["history"]]))
    finally:
        if world > 1:
            dist.destroy_process_group()


def samples_per_second(name: str, world: int, threads: int) -> float:
    """Training samples per second of a run of case `name` with `world` processes, over
    its epochs after the first."""
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "history.json")
        mp.spawn(_worker, args=(world, threads, _free_port(), name, out), nprocs=world)
        images, history = json.loads(Path(out).read_text())
    if len(history) < EPOCHS:
        raise RuntimeError(f"{name}: the run diverged before its timed epochs")
    return images * (EPOCHS - 1) / sum(row["seconds"] for row in history[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--norms", nargs="+", default=["batch", "batch-sync", "analytic"],
                        choices=list(CASES))  # fmt: skip
    args = parser.parse_args()
    print(f"# {hardware()}; torch {torch.__version__}; Python {platform.python_version()}; "
          f"gloo; quick profile, global batch 32, lr {LR}, {EPOCHS} epochs, all but the "
          "first timed")  # fmt: skip
    header = " | ".join(f"{p} proc x {t} thr" for p, t in LAYOUTS)
    print(f"\n| case | {header} | 2 proc / 1 proc x 2 thr |\n|---|" + "---|" * (len(LAYOUTS) + 1))
    for name in args.norms:
        rates = {layout: samples_per_second(name, *layout) for layout in LAYOUTS}
        cells = " | ".join(f"{rates[layout]:.0f}" for layout in LAYOUTS)
        print(f"| {name} | {cells} | {rates[(2, 1)] / rates[(1, 2)]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
