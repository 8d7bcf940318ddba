"""Data-parallel training's view of one process (torchrun, DistributedDataParallel): its
rank, the world size, and the few collective operations the training loop needs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import distributed as dist


@dataclass(frozen=True)
class Replicas:
    """This process's place in data-parallel training (torchrun and DistributedDataParallel):
    its `rank` among `world` processes, each training on its shard of every batch. One
    process (the default) is rank 0 of 1, and nothing is communicated."""

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> Replicas:
        """The initialized process group's place, or a single process."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def main(self) -> bool:
        """Rank 0: the process that evaluates and writes the run directory."""
        return self.rank == 0

    def mean(self, value: float) -> float:
        """The mean of `value` over the processes."""
        if self.world == 1:
            return value
        total = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(total)
        return total.item() / self.world

    def any(self, flag: bool) -> bool:
        """Whether `flag` is true in any process (all of them stop together)."""
        if self.world == 1:
            return flag
        found = torch.tensor([float(flag)])
        dist.all_reduce(found, op=dist.ReduceOp.MAX)
        return bool(found.item())

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def noise_seed(self, seed: int) -> int:
        """The seed of this process's draws of noise in an epoch (rank 0: `seed` itself, so
        that one process draws what it always drew): independent across processes."""
        return seed + 1_000_003 * self.rank


SINGLE_PROCESS = Replicas()  # training without a process group
