"""What every reproduced experiment shares: the lab that trains (or finds already trained)
the runs an experiment needs, the experiment's interface, and the result file (verdicts
are built with `verdicts`, shared runs are named in `cases`).

An experiment is a small object with the paper's claim, a `run(lab)` that returns its
numbers (plain JSON), a `plot(numbers, out)` and a `verdict(numbers)`. All training goes
through `Lab.train`, i.e. the one training loop, and is cached by configuration: runs
shared by several experiments (e.g. batch norm at the quick profile) are trained once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..checkpoint import load_json, save_json
from ..config import PROFILES, TrainConfig
from ..errors import ConfigError, RunDirError
from ..evaluation import evaluate_run
from ..lr_search import lr_find
from ..provenance import provenance
from ..runs import RunDir
from ..train import resolve_device, train
from .verdicts import Verdict

# Initial learning rates by (norm, projection, noise), found with `stochnorm lr-find
# --profile quick` (5-epoch trials, results/quick/lr-find-*.json). The demo profile uses
# them as they are (a search would cost more than the runs); quick and full search per run.
TABLE_LR: dict[tuple[str, bool, str | None], float] = {
    ("batch", False, None): 0.042,
    ("batch", True, None): 0.032,
    ("none", False, None): 0.010,
    ("weight", True, None): 0.0042,
    ("analytic", True, None): 0.010,
}
ADAM_LR = 1e-3  # torch's default rate of Adam


def per_profile(lab: Lab, table: dict[str, Any]) -> Any:
    """The entry of `table` for the lab's profile (the "quick" one for unlisted profiles)."""
    return table.get(lab.profile, table["quick"])


def table_lr(cfg: TrainConfig) -> float:
    """The tabulated rate for `cfg`'s normalization: the exact case, else the same norm and
    projection without noise, else the same norm, else 0.01; with Adam, Adam's default
    0.001 (the table holds SGD's rates)."""
    if cfg.optimizer == "adam":
        return ADAM_LR
    for key in (
        (cfg.norm, cfg.project, cfg.noise),
        (cfg.norm, cfg.project, None),
        (cfg.norm, not cfg.project, None),
    ):
        if key in TABLE_LR:
            return TABLE_LR[key]
    return 0.01


def config_key(cfg: TrainConfig) -> str:
    """A short name for `cfg`: a hash of the settings that differ from TrainConfig's
    defaults, so that a new setting (at its default) leaves the names of old runs alone."""
    defaults = TrainConfig().to_dict()
    text = json.dumps({k: v for k, v in cfg.to_dict().items() if v != defaults[k]},
                      sort_keys=True)  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest()[:10]


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on file `path` (created if missing) for the block: processes
    that share a run directory train or search each configuration once, one after another.
    The operating system releases the lock of a process that dies."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking, as before
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _partial_trials(path: Path, probe: TrainConfig) -> dict[float, float]:
    """{lr: loss} of the trials an interrupted search of `probe` saved at `path` (none if
    there is no such file or it belongs to another configuration)."""
    if not path.exists():
        return {}
    saved = load_json(path)
    try:
        same = TrainConfig.from_dict(saved.get("config", {})) == probe
    except (ConfigError, TypeError):
        return {}
    return {t["lr"]: t["train_loss"] for t in saved.get("trials", [])} if same else {}


@dataclass
class Lab:
    """Trains what an experiment asks for, under one profile and seed.

    `overrides` are TrainConfig settings applied on top of every run the experiment asks
    for (e.g. a smaller width or another dataset). Runs live in `runs_dir` keyed by their
    configuration; completed runs with the same configuration found in `reuse` directories
    (one run directory per subdirectory, as `make results-quick` leaves them) are used as
    they are. `lr_search`: None = search per run except in the demo profile (TABLE_LR).
    `seeds`: how many seeds of each compared run `train_seeds` gives (seed, seed + 1, ...).
    Several processes may share `runs_dir`: each search and run is locked while it runs."""

    profile: str
    runs_dir: Path
    seed: int = 0
    seeds: int = 1
    overrides: dict[str, Any] = field(default_factory=dict)
    reuse: Sequence[Path] = ()
    device: str = "cpu"
    progress: bool = False
    lr_search: bool | None = None
    # Every run `train` returned, in order (reproduce() reads where they were trained).
    used: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ConfigError(
                f"unknown profile {self.profile!r}; choose one of: {', '.join(PROFILES)}"
            )
        self.runs_dir = Path(self.runs_dir)

    def config(self, **settings: Any) -> TrainConfig:
        """The profile's configuration with the experiment's `settings`, the lab's seed and
        then its overrides; the learning rate is left at the profile's default."""
        return TrainConfig.from_profile(
            self.profile, **{"seed": self.seed, **settings, **self.overrides}
        )

    @property
    def searches_lr(self) -> bool:
        return self.profile != "demo" if self.lr_search is None else self.lr_search

    def lr(self, cfg: TrainConfig, *, search: bool = True) -> float | None:
        """The initial learning rate for `cfg` (its own lr ignored): the 5-epoch search of the
        paper, cached per configuration, or the tabulated rate. With `search` False a
        missing search is not run: None."""
        if not self.searches_lr:
            return table_lr(cfg)
        probe = cfg.replace(lr=TrainConfig.from_profile(cfg.profile).lr)
        found = self._find_lr(probe)
        if found is not None or not search:
            return found
        with exclusive(self.runs_dir / f".lr-find-{config_key(probe)}.lock"):
            found = self._find_lr(probe)  # another process may have searched meanwhile
            if found is not None:
                return found
            partial = self.runs_dir / f"lr-trials-{config_key(probe)}.json"
            known = _partial_trials(partial, probe)

            def keep(lr: float, loss: float) -> None:  # an interrupted search resumes
                known[lr] = loss
                trials = [{"lr": k, "train_loss": v} for k, v in sorted(known.items())]
                save_json({"config": probe.to_dict(), "trials": trials}, partial)

            result = lr_find(probe, device=self.device, progress=self.progress, known=dict(known),
                             on_trial=keep)  # fmt: skip
            result["config"] = probe.to_dict()
            save_json(result, self.runs_dir / f"lr-find-{config_key(probe)}.json")
            partial.unlink(missing_ok=True)
        return result["lr"]

    def _find_lr(self, probe: TrainConfig) -> float | None:
        for path in self._lr_files():
            found = load_json(path)
            try:
                same = TrainConfig.from_dict(found.get("config", {})) == probe
            except (ConfigError, TypeError):
                continue
            if same:
                return found["lr"]
        return None

    def _lr_files(self) -> list[Path]:
        roots = [self.runs_dir, *map(Path, self.reuse)]
        return [p for root in roots if root.is_dir() for p in sorted(root.glob("lr-find-*.json"))]

    def train(
        self,
        cfg: TrainConfig,
        *,
        label: str = "run",
        search_lr: bool = True,
        after_step: Sequence[Callable] = (),
        loss_terms: Sequence[Callable] = (),
    ) -> RunDir:
        """The finished run of `cfg` (with the learning rate from `lr` unless `search_lr`
        is False): found in `reuse` or `runs_dir` (complete, or stopped by divergence:
        metrics.json says which), resumed if interrupted, else trained."""
        if search_lr:
            cfg = cfg.replace(lr=self.lr(cfg))
        run = self.finished(cfg)
        if run is None:
            with exclusive(self.runs_dir / f".run-{config_key(cfg)}.lock"):
                run = self.finished(cfg)  # another process may have trained it meanwhile
                if run is None:
                    run = RunDir(self.runs_dir / f"{label}-{config_key(cfg)}")
                    resume = run.exists() and run.checkpoint_path.exists()
                    train(cfg, run.path, resume=resume, after_step=after_step,
                          loss_terms=loss_terms, device=self.device,
                          progress=self.progress)  # fmt: skip
        self.used.append(run.path)
        return run

    def train_seeds(self, cfg: TrainConfig, *, label: str = "run") -> list[RunDir]:
        """The finished runs of `cfg` with the lab's `seeds` seeds cfg.seed, cfg.seed + 1, ...
        (initialization, batch order, augmentation, noise): the first at the searched rate,
        the others at that same rate, the split unchanged (as the paper's Fig. A.2 fixes
        them), each trained once (`train`)."""
        first = self.train(cfg, label=label)
        lr = first.config().lr
        runs = [first]
        for k in range(1, self.seeds):
            seeded = cfg.replace(seed=cfg.seed + k, lr=lr)
            runs.append(self.train(seeded, label=f"{label}-seed{seeded.seed}", search_lr=False))
        return runs

    def finished(self, cfg: TrainConfig) -> RunDir | None:
        """The run of `cfg` in `reuse` or `runs_dir` that completed or diverged, else None."""
        for root in (*map(Path, self.reuse), self.runs_dir):
            if not root.is_dir():
                continue
            for config_path in sorted(root.glob("*/config.json")):
                run = RunDir(config_path.parent)
                try:
                    same = run.config() == cfg
                except ConfigError:
                    continue
                if same and run.metrics_path.exists():
                    metrics = run.metrics()
                    if metrics.get("complete") or metrics.get("diverged"):
                        return run
        return None

    def evaluate(self, run: RunDir, samples: tuple[int, ...] = (10, 30), **kwargs) -> dict:
        """The run's `stochnorm evaluate` result, computed once."""
        existing = run.evaluation()
        wanted = {"requested_samples": list(samples),
                  "robustness_size": kwargs.get("robustness_size", 0)}  # fmt: skip
        if existing is not None and "mc_batchnorm" in existing:  # its statistics' crops
            wanted["mc_batchnorm_crop_size"] = run.config().crop_size  # (older: images)
        if existing is not None and all(existing.get(k) == v for k, v in wanted.items()):
            return existing
        return evaluate_run(run.path, samples=samples, device=self.device, **kwargs)


class Experiment:
    """One claim of one paper, reproduced. Subclasses set the class attributes and
    implement `run`, `plot` and `verdict`."""

    name: ClassVar[str]
    paper: ClassVar[str]  # key of PAPERS
    figure: ClassVar[str]  # e.g. "Fig. 1", "Table 1", "Sec. 4.2"
    claim: ClassVar[str]  # the paper's statement, in our words
    # Labels of the runs it trains (`cases.run_config` knows them) that
    # `reproduce --jobs` may train in parallel before the experiment starts.
    runs: ClassVar[tuple[str, ...]] = ()

    def run(self, lab: Lab) -> dict[str, Any]:
        raise NotImplementedError

    def plot(self, numbers: dict[str, Any], out: Path) -> list[Path]:
        raise NotImplementedError

    def verdict(self, numbers: dict[str, Any]) -> Verdict:
        raise NotImplementedError


PAPERS = {
    "main": "Shekhovtsov & Flach, Stochastic Normalizations as Bayesian Learning (2018)",
    "bjorck": "Bjorck et al., Understanding Batch Normalization (2018)",
    "luo": "Luo et al., Towards Understanding Regularization in Batch Normalization (2018)",
    "analytic": "Shekhovtsov & Flach, Normalization of Neural Networks using Analytic "
    "Variance Propagation (2018)",
}

RESULT_FILE = "result.json"


def reproduce(experiment: Experiment, lab: Lab, out: Path) -> dict[str, Any]:
    """Run `experiment` in `lab`, save its figures and `out`/result.json (numbers, verdict,
    profile, seed, overrides, provenance) and return that record."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lab.used.clear()
    numbers = experiment.run(lab)
    figures = [Path(p).name for p in experiment.plot(numbers, out)]
    record = {
        "experiment": experiment.name,
        "paper": experiment.paper,
        "figure": experiment.figure,
        "claim": experiment.claim,
        "profile": lab.profile,
        "seed": lab.seed,
        "seeds": lab.seeds,
        "overrides": lab.overrides,
        "numbers": numbers,
        "verdict": experiment.verdict(numbers).to_dict(),
        "figures": figures,
        "provenance": provenance(lab.device),
        "runs_trained_on": runs_hardware(lab.used),
    }
    save_json(record, out / RESULT_FILE)
    return record


def runs_hardware(paths: Sequence[Path]) -> list[str]:
    """The hardware each of the runs at `paths` was trained on (from its metrics.json),
    each once: runs found in a reuse directory may come from another machine."""
    found = []
    for path in dict.fromkeys(paths):
        run = RunDir(path)
        if run.metrics_path.exists():
            found.append(run.metrics().get("provenance", {}).get("hardware", "unknown"))
    return sorted(set(found))


def load_result(path: Path) -> dict[str, Any]:
    path = Path(path)
    file = path / RESULT_FILE if path.is_dir() else path
    if not file.is_file():
        raise RunDirError(f"{path}: no {RESULT_FILE} (run `stochnorm reproduce` first)")
    return load_json(file)


def device_of(lab: Lab) -> torch.device:
    return resolve_device(lab.device)
