"""`stochnorm runs`: labelled runs in one directory, searched, trained, resumed and checked
against their labels."""

import json

import pytest

from stochnorm.cli import main
from stochnorm.config import TrainConfig

TINY = ["--profile", "demo", "--width", "0.1", "--subset", "0.005", "--epochs", "1",
        "--eval-train-size", "20", "--eval-size", "100", "--no-progress"]  # fmt: skip


def test_runs_search_train_evaluate_and_find_finished_runs(tmp_path, capsys):
    out = tmp_path / "quick"
    argv = ["runs", "batch-proj", "weight-proj-bayes-f3", "--out", str(out), *TINY, "--evaluate",
            "--samples", "2", "--robustness-size", "0"]  # fmt: skip
    assert main(argv) == 0
    cfg = TrainConfig.load(out / "weight-proj-bayes-f3" / "config.json")
    assert (cfg.norm, cfg.project, cfg.noise, cfg.noise_lr_factor) == ("weight", True, "bayes", 3)
    assert cfg.lr == json.loads((out / "lr-find-weight-proj-bayes-f3.json").read_text())["lr"]
    assert json.loads((out / "weight-proj-bayes-f3" / "evaluation.json").read_text())[
        "samples"
    ] == [2]
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert main(argv) == 0  # all found: nothing searched, trained or evaluated again
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps
    assert "done: " in capsys.readouterr().out


def test_a_directory_that_does_not_match_its_label_is_refused(tmp_path, capsys):
    out = tmp_path / "quick"
    assert main(["runs", "batch", "--out", str(out), *TINY]) == 0
    (out / "weight").mkdir()
    (out / "batch" / "config.json").replace(out / "weight" / "config.json")
    (out / "lr-find-batch.json").replace(out / "lr-find-weight.json")
    (out / "batch" / "checkpoint.pt").replace(out / "weight" / "checkpoint.pt")
    assert main(["runs", "weight", "--out", str(out), *TINY]) == 2
    assert "search of another configuration" in capsys.readouterr().err


@pytest.mark.parametrize("flag", [["--norm", "weight"], ["--lr", "0.1"], ["--project"]])
def test_settings_that_labels_make_are_not_flags(tmp_path, capsys, flag):
    assert main(["runs", "batch", "--out", str(tmp_path), *TINY, *flag]) == 2
    assert "the labels set" in capsys.readouterr().err
