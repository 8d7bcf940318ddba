"""The lab: configurations, caching of searches and runs, seeds, locks, parallel training
and the names of runs."""

import json

import pytest

from stochnorm.cli import main
from stochnorm.errors import ConfigError
from stochnorm.experiments import Lab
from stochnorm.experiments.main_protocol import (
    SeedSpread,
)
from stochnorm.experiments.verdicts import TAIL_SEED_RULE
from tests.conftest import REPRODUCE_TINY


def test_lab_config_seed_and_overrides(tmp_path):
    lab = Lab("demo", tmp_path, seed=3)
    assert lab.config().seed == 3 and lab.config(seed=lab.seed + 1).seed == 4
    assert lab.config(seed=4).split_seed == lab.config().split_seed  # the split stays fixed
    # overrides come last: a seed fixed there would make every "seed" the same run
    fixed = Lab("demo", tmp_path, seed=3, overrides={"seed": 7})
    assert fixed.config(seed=4).seed == 7
    with pytest.raises(ConfigError, match="fix the seed"):
        SeedSpread().run(fixed)


def test_lab_trains_a_configuration_once_and_finds_it_in_reuse_dirs(tmp_path):
    tiny = {"width": 0.1, "subset": 0.005, "epochs": 1, "eval_train_size": 50, "eval_size": 200}
    lab = Lab("demo", tmp_path / "a", overrides=tiny)
    first = lab.train(lab.config(norm="batch"), label="bn")
    stamp = first.checkpoint_path.stat().st_mtime_ns
    again = lab.train(lab.config(norm="batch"), label="other-label")
    assert again.path == first.path and first.checkpoint_path.stat().st_mtime_ns == stamp
    # another lab finds it through `reuse`; a different seed is a different run
    other = Lab("demo", tmp_path / "b", overrides=tiny, reuse=[tmp_path / "a"])
    assert other.train(other.config(norm="batch")).path == first.path
    seeded = Lab("demo", tmp_path / "b", seed=1, overrides=tiny, reuse=[tmp_path / "a"])
    assert seeded.train(seeded.config(norm="batch")).path != first.path


def test_jobs_train_the_shared_runs_once_before_the_experiments(tmp_path, capsys):
    # fig1 and fig3 share the BN run: 7 distinct runs, each trained once by 2 processes,
    # which the experiments then find instead of training again.
    out = tmp_path / "out"
    argv = ["reproduce", "fig1-bn-generalization", "fig3-projection", "--profile", "demo",
            "--out", str(out), "--jobs", "2", *REPRODUCE_TINY]  # fmt: skip
    assert main(argv) == 0
    assert "training 7 runs in 2 processes" in capsys.readouterr().out
    runs = sorted(p.parent for p in (out / "runs").glob("*/metrics.json"))
    assert len(runs) == 7
    stamps = {run: (run / "checkpoint.pt").stat().st_mtime_ns for run in runs}
    for name in ("fig1-bn-generalization", "fig3-projection"):
        record = json.loads((out / name / "result.json").read_text())
        assert {r["run"] for r in record["numbers"].values()} <= set(map(str, runs))
        # the workers' hardware line: the same CPU, with their share of the threads
        assert len(record["runs_trained_on"]) == 1
        assert record["runs_trained_on"][0].startswith("CPU")
    assert main(argv) == 0  # all found: nothing is trained again
    assert {run: (run / "checkpoint.pt").stat().st_mtime_ns for run in runs} == stamps


def test_a_locked_file_waits_for_its_holder(tmp_path):
    import threading

    from stochnorm.experiments.base import exclusive

    lock, entered = tmp_path / "x.lock", threading.Event()

    def second():
        with exclusive(lock):
            entered.set()

    with exclusive(lock):
        thread = threading.Thread(target=second)
        thread.start()
        assert not entered.wait(0.5), "a second holder got the lock while it was held"
    assert entered.wait(10), "the lock was not passed on after release"
    thread.join()


def test_lab_finds_a_run_that_diverged_in_its_first_epoch_again(tmp_path):
    from stochnorm.experiments.bjorck import rate_summary

    tiny = {"width": 0.1, "subset": 0.005, "epochs": 1, "eval_train_size": 50, "eval_size": 200}
    lab = Lab("demo", tmp_path, overrides=tiny)
    cfg = lab.config(norm="none").replace(lr=1e4)
    first = lab.train(cfg, label="diverging", search_lr=False)
    summary = rate_summary(first)
    assert summary["diverged"] and not summary["stable"] and summary["epochs_done"] == 0
    assert lab.train(cfg, label="diverging", search_lr=False).path == first.path


def test_config_key_depends_only_on_the_settings_that_differ_from_the_defaults():
    from stochnorm.config import TrainConfig
    from stochnorm.experiments.base import config_key

    cfg = TrainConfig(norm="analytic", project=True)
    assert config_key(cfg) == config_key(TrainConfig(project=True, norm="analytic"))
    assert config_key(cfg) != config_key(cfg.replace(seed=1))
    assert config_key(cfg) != config_key(cfg.replace(noise_lr_factor=10.0, noise="bayes"))


def test_seeds_share_the_first_seeds_rate_and_are_trained_once(tmp_path):
    tiny = {"width": 0.1, "subset": 0.005, "epochs": 1, "eval_train_size": 50, "eval_size": 200}
    lab = Lab("demo", tmp_path, seed=3, seeds=3, overrides=tiny, lr_search=True)
    runs = lab.train_seeds(lab.config(norm="batch"), label="bn")
    configs = [run.config() for run in runs]
    assert [c.seed for c in configs] == [3, 4, 5]
    assert len({c.lr for c in configs}) == 1  # the rate searched for seed 3
    assert configs[1] == configs[0].replace(seed=4)
    stamps = [run.checkpoint_path.stat().st_mtime_ns for run in runs]
    again = lab.train_seeds(lab.config(norm="batch"), label="bn")
    assert [run.checkpoint_path.stat().st_mtime_ns for run in again] == stamps


def test_reproduce_with_seeds_decides_on_paired_seed_differences(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["reproduce", "fig1-bn-generalization", "--profile", "demo", "--out", str(out),
            "--seeds", "2", *REPRODUCE_TINY]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((out / "fig1-bn-generalization" / "result.json").read_text())
    assert record["seeds"] == 2
    for label in ("batch", "none"):
        assert [s["seed"] for s in record["numbers"][label]["seeds"]] == [0, 1]
    accuracy = record["verdict"]["parts"][1]
    assert accuracy["rule"] == TAIL_SEED_RULE and "over 2 seeds" in accuracy["summary"]
    report = tmp_path / "REPRODUCTION.md"
    assert main(["report", "--reproduction", str(out), "--out", str(report)]) == 0
    text = report.read_text()
    assert "## fig1-bn-generalization (demo, 2 seeds, width=0.1" in text
    assert f"- rule: {TAIL_SEED_RULE}" in text
    assert "--profile demo --seeds 2 --width 0.1" in text
    assert main([*argv[: -len(REPRODUCE_TINY)], "--seeds", "0", *REPRODUCE_TINY]) == 2
