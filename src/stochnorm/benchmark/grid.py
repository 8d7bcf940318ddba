"""The benchmark's grid: regimes (how many images a normalization sees per step) by methods
(what a practitioner would use, and stochnorm's batch-independent norms with and without
learned noise) by seeds, each cell one run of the one training loop, cached by its
configuration so that an interrupted benchmark resumes where it stopped.

Learning rates: the paper's search (5-epoch trials, `Lab.lr`) of each method at batch 32
in the search profile (`LR_PROFILE`: the bench profile searches in the quick profile,
which has the same data, model and batch, so its committed searches are reused; its trials
decay the rate as a 60-epoch run does, 0.1x over 30 epochs, where a bench run takes 15),
scaled
linearly with the batch size for smaller batches (Goyal et al.'s rule; `Benchmark.lr_check`
measures it against the search itself at batch 4 for RULE_CHECKED). A data-parallel regime keeps the global batch
of 32 and so its rate.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..errors import ConfigError
from ..experiments.base import Lab
from ..labels import without_search
from ..runs import RunDir

REFERENCE_BATCH = 32  # the batch size at which every method's rate is searched

# Learned scale noise as the quick screen chose it on validation (results/quick/bayes-screen:
# sigma_S starting at 0.1, its parameters stepping at 30 times the learning rate).
NOISE = "-bayes-f30"

# What a user would otherwise pick (batch norm, and the batch-independent GroupNorm and
# LayerNorm), then stochnorm's methods with the projection of the paper.
BASELINES = ("batch", "group", "layer")
METHODS = (
    *BASELINES,
    f"group{NOISE}",
    "weight-proj",
    f"weight-proj{NOISE}",
    "analytic-proj",
    f"analytic-proj{NOISE}",
    "population-proj",
)


@dataclass(frozen=True)
class Regime:
    """How the normalization sees the data: `batch_size` images per step, batch norm's
    statistics over groups of `ghost_batch` of them (data-parallel training on
    batch_size / ghost_batch replicas without synchronized statistics) and the `methods`
    run in it (pruned where they cannot change the answer; `pruned` says why)."""

    name: str
    title: str
    batch_size: int
    ghost_batch: int | None = None
    methods: tuple[str, ...] = METHODS
    pruned: str = ""

    def label(self, method: str) -> str:
        """The run label of `method` in this regime."""
        return f"{method}-ghost{self.ghost_batch}" if self.ghost_batch else method


# Batch-independent methods train identically whatever the number of replicas (the
# statistics of one image do not depend on the others), so the data-parallel regimes
# change batch norm alone: their group, layer, weight and analytic norm cells are those of
# "batch 32". Population norm is not batch-independent in training (its gradient passes
# through the batch's statistics, its estimates follow one replica's batches) and has no
# ghost batches here: it is not measured in these regimes.
_BN_ONLY = ("group, layer, weight and analytic norm are batch-independent: their cells are "
            "those of batch 32; population norm is not measured here")  # fmt: skip
# The method the paper proposes, in its sampling mode: the one comparison named in advance.
PRIMARY = f"analytic-proj{NOISE}"
REGIMES = (
    Regime("b4", "4 images per step", 4),
    Regime("b32", "32 images per step (the paper's batch)", 32),
    Regime("ddp8x4", "global batch 32 on 8 replicas of 4 (no SyncBN)", 32, 4,
           ("batch",), _BN_ONLY),
    Regime("ddp4x8", "global batch 32 on 4 replicas of 8 (no SyncBN)", 32, 8,
           ("batch",), _BN_ONLY),
    Regime("b2", "2 images per step", 2,
           methods=("batch", "group", "layer", f"weight-proj{NOISE}", f"analytic-proj{NOISE}"),
           pruned="to fit the budget, the baselines and the two learned-noise methods of the paper "
           "only (the others are measured at batch 4)"),
)  # fmt: skip
LR_PROFILE = {"bench": "quick"}  # profile whose rate search a profile uses (else its own)
RULE_CHECKED = ("batch", "analytic-proj")  # methods whose rate is also searched at batch 4
CHECK_BATCH = 4


def regime(name: str) -> Regime:
    for found in REGIMES:
        if found.name == name:
            return found
    raise ConfigError(f"unknown regime {name!r}; choose from {', '.join(r.name for r in REGIMES)}")


def narrowed(regimes: Sequence[Regime], methods: Sequence[str]) -> list[Regime]:
    """`regimes` running only those of their methods named in `methods` (a regime that runs
    none of them is left out): part of the grid, e.g. to have every seed of a few methods
    first."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    kept = [replace(r, methods=tuple(m for m in r.methods if m in methods)) for r in regimes]
    return [r for r in kept if r.methods]


@dataclass(frozen=True)
class Cell:
    regime: Regime
    method: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.regime.name}-{self.method}-seed{self.seed}"


@dataclass
class Benchmark:
    """The grid of `regimes` x their methods x `seeds` seeds (0, 1, ...) in `profile`, run in
    `out`/runs (and found in `reuse` directories). `overrides` go on top of every run's
    configuration (smaller data for a smoke test)."""

    profile: str
    out: Path
    seeds: int = 3
    regimes: Sequence[Regime] = REGIMES
    reuse: Sequence[Path] = ()
    overrides: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    progress: bool = False

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise ConfigError(f"seeds must be >= 1, got {self.seeds}")
        self.out = Path(self.out)
        runs = self.out / "runs"
        kwargs = {"reuse": self.reuse, "overrides": self.overrides, "device": self.device,
                  "progress": self.progress}  # fmt: skip
        self.lab = Lab(self.profile, runs, **kwargs)
        self.lr_lab = Lab(LR_PROFILE.get(self.profile, self.profile), runs, **kwargs)

    def cells(self) -> Iterator[Cell]:
        """Every cell, seed by seed, so that a partial benchmark has whole seeds."""
        for seed in range(self.seeds):
            for r in self.regimes:
                for method in r.methods:
                    yield Cell(r, method, seed)

    def lr(self, method: str, batch_size: int, *, search: bool = True) -> float | None:
        """`method`'s searched rate at batch REFERENCE_BATCH, times batch_size / 32 (None if
        it was not searched yet and `search` is False)."""
        found = self.lr_lab.lr(self._probe(method, REFERENCE_BATCH), search=search)
        return None if found is None else found * batch_size / REFERENCE_BATCH

    def _probe(self, method: str, batch_size: int) -> TrainConfig:
        """The configuration whose rate search gives `method`'s rate at `batch_size`."""
        return self.lr_lab.config(**without_search(method), batch_size=batch_size)

    def lr_check(self, *, search: bool = True) -> dict[str, dict[str, float | None]]:
        """For each of RULE_CHECKED: the rate the linear rule gives at batch CHECK_BATCH and
        the rate the search finds there (None if not searched yet and `search` is False)."""
        out = {}
        for method in RULE_CHECKED:
            searched = self.lr_lab.lr(self._probe(method, CHECK_BATCH), search=search)
            out[method] = {"rule": self.lr(method, CHECK_BATCH, search=search),
                           "searched": searched}  # fmt: skip
        return out

    def config(self, cell: Cell, *, search: bool = True) -> TrainConfig | None:
        """The configuration of `cell` (None if its rate is unknown and `search` is False)."""
        r = cell.regime
        lr = self.lr(cell.method, r.batch_size, search=search)
        if lr is None:
            return None
        cfg = self.lab.config(**without_search(r.label(cell.method)), batch_size=r.batch_size)
        return cfg.replace(seed=cell.seed, lr=lr)

    def run(self, cell: Cell) -> RunDir:
        """The finished run of `cell`, trained (or resumed) if need be."""
        return self.lab.train(self.config(cell), label=cell.name, search_lr=False)

    def finished(self, cell: Cell) -> RunDir | None:
        """The finished run of `cell` if there is one (nothing is searched or trained)."""
        cfg = self.config(cell, search=False)
        return None if cfg is None else self.lab.finished(cfg)
