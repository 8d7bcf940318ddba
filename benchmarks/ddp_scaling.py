"""Data-parallel training throughput on this machine: training samples per second of the
engine (`stochnorm.train`, DistributedDataParallel over gloo) with 1 and 2 processes, for
batch norm (each process's statistics), synchronized batch norm, analytic, weight and
population norm (whose estimates come from the global batch: two all-reduces per layer).

    python benchmarks/ddp_scaling.py [--norms batch batch-sync analytic] [--epochs 2]

Each case trains the quick profile's All-CNN (width 1/3) on its 5,400 Fashion-MNIST images
at global batch 32 without evaluation; the last epoch's time is kept (the first one warms
up). Three layouts: 1 process with 1 thread, 1 process with 2 threads, 2 processes with 1
thread each; on 2 cores the last two compete for the same cores, so they show the cost of
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

CASES = {  # name -> TrainConfig overrides
    "batch": {"norm": "batch"},
    "batch-sync": {"norm": "batch", "sync_bn": True},
    "analytic": {"norm": "analytic"},
    "weight": {"norm": "weight"},
    "population": {"norm": "population"},
}
LAYOUTS = ((1, 1), (1, 2), (2, 1))  # (processes, threads per process)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, threads: int, port: int, overrides: dict, out: str) -> None:
    torch.set_num_threads(threads)
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


def samples_per_second(overrides: dict, world: int, threads: int) -> float:
    """Training samples per second of the last epoch of a run with `world` processes."""
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "history.json")
        mp.spawn(_worker, args=(world, threads, _free_port(), overrides, out), nprocs=world)
        images, history = json.loads(Path(out).read_text())
    return images / history[-1]["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--norms", nargs="+", default=["batch", "batch-sync", "analytic"],
                        choices=list(CASES))  # fmt: skip
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    print(f"# {hardware()}; torch {torch.__version__}; Python {platform.python_version()}; "
          f"gloo; quick profile, global batch 32, {args.epochs} epochs, the last one timed")  # fmt: skip
    header = " | ".join(f"{p} proc x {t} thr" for p, t in LAYOUTS)
    print(f"\n| case | {header} | 2 proc / 1 proc x 2 thr |\n|---|" + "---|" * (len(LAYOUTS) + 1))
    for name in args.norms:
        overrides = {**CASES[name], "epochs": args.epochs}
        rates = {layout: samples_per_second(overrides, *layout) for layout in LAYOUTS}
        cells = " | ".join(f"{rates[layout]:.0f}" for layout in LAYOUTS)
        print(f"| {name} | {cells} | {rates[(2, 1)] / rates[(1, 2)]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
