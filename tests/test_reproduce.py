"""Every experiment of `stochnorm reproduce` end to end in its demo profile on tiny settings,
plus the lab's caching and the verdict logic."""

import contextlib
import io
import json
import re

import pytest

from stochnorm.cli import main
from stochnorm.experiments import Lab, registry
from stochnorm.experiments.verdicts import FAILS, HOLDS, INCONCLUSIVE, combine, compare

TINY = ["--width", "0.1", "--subset", "0.005", "--epochs", "2", "--eval-train-size", "50",
        "--eval-size", "500", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    """Every experiment reproduced once into one output directory (runs they share are
    trained once), and what the command printed; each test that reads them can run alone."""
    out = tmp_path_factory.mktemp("reproduce")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["reproduce", "all", "--profile", "demo", "--out", str(out), *TINY]) == 0
    return out, printed.getvalue()


@pytest.fixture
def shared_out(reproduced):
    return reproduced[0]


@pytest.mark.parametrize("name", list(registry()))
def test_experiment_runs_in_demo_profile(name, reproduced):
    shared_out, printed = reproduced
    printed = printed.split(f"{name} (")[1].split("\n  ")[0]
    record = json.loads((shared_out / name / "result.json").read_text())
    assert record["verdict"]["status"] in (HOLDS, FAILS, INCONCLUSIVE)
    assert record["verdict"]["status"] in printed and record["verdict"]["summary"]
    assert record["profile"] == "demo" and record["overrides"]["width"] == 0.1
    assert record["figures"], "every experiment draws at least one figure"
    for figure in record["figures"]:
        assert (shared_out / name / figure).stat().st_size > 5_000


def test_list_names_every_experiment(capsys):
    assert main(["reproduce", "--list"]) == 0
    printed = capsys.readouterr().out
    for name in registry():
        assert name in printed


def test_unknown_experiment_is_a_one_line_error(capsys):
    assert main(["reproduce", "fig99"]) == 2
    assert "unknown experiment 'fig99'" in capsys.readouterr().err


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
            "--out", str(out), "--jobs", "2", *TINY]  # fmt: skip
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


def test_verdicts_compare_the_margin_with_the_noise():
    assert compare(0.02, 0.01, "x").status == HOLDS
    assert compare(-0.02, 0.01, "x").status == FAILS
    assert compare(0.005, 0.01, "x").status == INCONCLUSIVE
    assert compare(0.5, 0.1, "x", threshold=0.3).status == HOLDS
    hold, fail, unsure = compare(1, 0, "a"), compare(-1, 0, "b"), compare(0, 1, "c")
    assert combine([hold, hold]).status == HOLDS
    assert combine([hold, unsure]).status == INCONCLUSIVE
    assert combine([unsure, fail]).status == FAILS
    # a combined verdict keeps its parts, flattened, for the report to list one by one
    nested = combine([hold, combine([fail, unsure])])
    assert [v.summary for v in nested.leaves()] == ["a", "b", "c"]
    assert nested.to_dict()["parts"] == [
        {"status": HOLDS, "summary": "a"}, {"status": FAILS, "summary": "b"},
        {"status": INCONCLUSIVE, "summary": "c"},
    ]  # fmt: skip
    assert "parts" not in hold.to_dict()


def test_reproduction_report_lists_every_result(shared_out, tmp_path):
    results = sorted(shared_out.glob("*/result.json"))
    assert len(results) == len(registry())
    out = tmp_path / "REPRODUCTION.md"
    assert main(["report", "--reproduction", str(shared_out), "--out", str(out)]) == 0
    text = out.read_text()
    for path in results:
        record = json.loads(path.read_text())
        assert f"## {record['experiment']} (demo, width=0.1, subset=0.005," in text
        for part in record["verdict"].get("parts", [record["verdict"]]):
            assert f"- {part['status']}: {part['summary']}" in text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) == sum(len(json.loads(p.read_text())["figures"]) for p in results)
    assert all((out.parent / link).is_file() for link in links)
    assert "## Where our measurement disagrees with the paper" in text
    anchors = re.findall(r'<a id="([^"]+)"></a>', text)
    assert len(set(anchors)) == len(anchors) == len(results)
    # an experiment without a result is listed as such
    (shared_out / "fig1-bn-generalization" / "result.json").rename(tmp_path / "kept.json")
    try:
        assert main(["report", "--reproduction", str(shared_out), "--out", str(out)]) == 0
    finally:
        (tmp_path / "kept.json").rename(shared_out / "fig1-bn-generalization" / "result.json")
    assert "| fig1-bn-generalization | main | Fig. 1 | - | not run yet |" in out.read_text()


def test_reproduction_report_names_only_the_failing_parts_of_a_claim(shared_out, tmp_path):
    record = json.loads((shared_out / "fig1-bn-generalization" / "result.json").read_text())
    record["verdict"] = combine(
        [compare(1, 0, "gap as claimed"), compare(-1, 0, "acc lower")]
    ).to_dict()
    (tmp_path / "fig1").mkdir()
    (tmp_path / "fig1" / "result.json").write_text(json.dumps(record))
    out = tmp_path / "REPRODUCTION.md"
    assert main(["report", "--reproduction", str(tmp_path / "fig1"), "--out", str(out)]) == 0
    text = out.read_text()
    disagreements = text.split("## Where our measurement disagrees with the paper")[1]
    disagreements = disagreements.split("## fig1")[0]
    assert "acc lower" in disagreements and "gap as claimed" not in disagreements
    assert f"- {HOLDS}: gap as claimed" in text and f"- {FAILS}: acc lower" in text
    # the same experiment under other settings, its runs trained elsewhere: both listed
    record.update(overrides={"width": 1.0}, runs_trained_on=["Some GPU"])
    (tmp_path / "fig1-wide").mkdir()
    (tmp_path / "fig1-wide" / "result.json").write_text(json.dumps(record))
    dirs = [str(tmp_path / "fig1"), str(tmp_path / "fig1-wide")]
    assert main(["report", "--reproduction", *dirs, "--out", str(out)]) == 0
    text = out.read_text()
    assert "## fig1-bn-generalization (demo, width=1.0)" in text
    assert "| demo, width=1.0 |" in text and len(re.findall(r'<a id="fig1', text)) == 2
    hardware = record["provenance"]["hardware"]
    assert f"Runs trained on Some GPU; verdict computed on {hardware}" in text


def test_config_key_depends_only_on_the_settings_that_differ_from_the_defaults():
    from stochnorm.config import TrainConfig
    from stochnorm.experiments.base import config_key

    cfg = TrainConfig(norm="analytic", project=True)
    assert config_key(cfg) == config_key(TrainConfig(project=True, norm="analytic"))
    assert config_key(cfg) != config_key(cfg.replace(seed=1))
    assert config_key(cfg) != config_key(cfg.replace(noise_lr_factor=10.0, noise="bayes"))
