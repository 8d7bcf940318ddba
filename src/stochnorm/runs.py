"""The layout of a run directory: what a training run leaves behind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .checkpoint import load_checkpoint, load_json
from .config import TrainConfig
from .errors import RunDirError


class RunDir:
    """`config.json` (the TrainConfig), `metrics.json` (per epoch and final, with
    provenance), `checkpoint.pt` (model, optimizer, history; written after every epoch),
    `curves.png`, and after `stochnorm evaluate` `evaluation.json`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    config_path = property(lambda self: self.path / "config.json")
    metrics_path = property(lambda self: self.path / "metrics.json")
    checkpoint_path = property(lambda self: self.path / "checkpoint.pt")
    curves_path = property(lambda self: self.path / "curves.png")
    evaluation_path = property(lambda self: self.path / "evaluation.json")

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    def exists(self) -> bool:
        return self.config_path.is_file()

    def check(self) -> RunDir:
        """Raise a RunDirError unless this is a run directory."""
        if not self.path.is_dir():
            raise RunDirError(f"{self.path} is not a run directory (no such directory)")
        if not self.exists():
            raise RunDirError(f"{self.path} is not a run directory (no config.json)")
        return self

    def config(self) -> TrainConfig:
        return TrainConfig.load(self.check().config_path)

    def metrics(self) -> dict[str, Any]:
        return load_json(self.check().metrics_path)

    def evaluation(self) -> dict[str, Any] | None:
        """The saved `stochnorm evaluate` result, or None if the run was not evaluated."""
        path = self.check().evaluation_path
        return load_json(path) if path.is_file() else None

    def checkpoint(self) -> dict[str, Any]:
        return load_checkpoint(self.check().checkpoint_path)
