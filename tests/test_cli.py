"""The command line as a user meets it: every command end to end on a little real data,
and one-line errors (no traceback, non-zero exit) for bad input."""

import argparse
import json
import subprocess
import sys

import pytest

from stochnorm.cli import build_parser, main
from stochnorm.data import fashion_mnist
from stochnorm.data.idx import write_idx

SMALL = ["--profile", "demo", "--width", "0.1", "--subset", "0.005", "--epochs", "1",
         "--eval-train-size", "50", "--eval-size", "600", "--no-progress"]  # fmt: skip


def _one_line_error(capsys, argv, needle):
    with pytest.raises(SystemExit) as exit_info:
        code = main(argv)
        raise SystemExit(code)
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err and needle in err, err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "--dataset", "nope"], "unknown dataset 'nope'"),
        (["train", "--width", "0"], "width must be > 0"),
        (["train", "--epochs", "-1"], "epochs must be >= 1"),
        (["train", "--epochs", "many"], "'many' is not a valid int"),
        (["train", "--norm", "instance"], "unknown norm 'instance'"),
        (["train", "--profile", "huge"], "invalid choice"),
        (["lr-find", "--lr-min", "1", "--lr-max", "0.1"], "lr_min < lr_max"),
        (["evaluate", "/nonexistent/run"], "not a run directory"),
        (["report", "/nonexistent/run"], "not a run directory"),
        (["train", "--resume"], "--resume needs --out"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_gives_one_line_error(capsys, argv, needle):
    _one_line_error(capsys, argv, needle)


def test_not_a_run_directory(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    _one_line_error(capsys, ["evaluate", str(tmp_path)], "no config.json")
    _one_line_error(capsys, ["train", "--out", str(tmp_path), "--resume"], "no config.json")


def test_truncated_idx_file(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("STOCHNORM_DATA", str(tmp_path))
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", str(tmp_path / "none"))
    import numpy as np

    for name in fashion_mnist.FILES:
        n = 20
        write_idx(tmp_path / name, np.zeros((n, 28, 28) if "images" in name else (n,), np.uint8))
    broken = tmp_path / "train-images-idx3-ubyte.gz"
    broken.write_bytes(broken.read_bytes()[:-30])
    _one_line_error(capsys, ["train", *SMALL, "--out", str(tmp_path / "run")], str(broken))
    _one_line_error(
        capsys, ["train", *SMALL, "--out", str(tmp_path / "run2")], "dataset-fashion-mnist"
    )


def test_train_evaluate_report_end_to_end(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *SMALL, "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "test: accuracy" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["data"]["train"] == 270 and metrics["data"]["val"] == 600
    assert main(["evaluate", str(run)]) == 0
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert evaluation["metrics"]["test"] == pytest.approx(metrics["final"]["test"])
    # a BN run also gets MC batch norm at the default sample counts, and temperature scaling
    assert set(evaluation["mc_batchnorm"]) == {"mc10", "mc30"}
    assert evaluation["mc_batchnorm_crop_size"] is None  # statistics of whole images
    assert evaluation["temperature_scaled"]["temperature"] > 0
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| run |" in report and f"{100 * metrics['final']['test']['accuracy']:.2f}" in report
    assert (tmp_path / "report" / "curves.png").stat().st_size > 10_000
    # a finished run can be "resumed": nothing left to train, same metrics
    assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 0
    assert json.loads((run / "metrics.json").read_text())["final"] == metrics["final"]


def test_data_command_finds_fashion_mnist(capsys):
    assert main(["data", "fashion-mnist"]) == 0
    assert "60000 training and 10000 test images" in capsys.readouterr().out


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {n}", p) for n, p in _subparsers(sub))


def test_help_documents_every_flag():
    commands = dict(_subparsers(build_parser()))
    assert {"train", "evaluate", "lr-find", "report", "demo", "data", "diagnose an-stats"} <= set(
        commands
    )
    for name, parser in commands.items():
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)
    # and --help prints them, exiting 0
    text = subprocess.run(
        [sys.executable, "-m", "stochnorm.cli", "train", "--help"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "--norm-batch" in text and "--resume" in text and "--project" in text


def test_evaluate_reports_mc_columns_for_a_bayes_run(tmp_path, capsys):
    run = tmp_path / "bayes"
    flags = [
        "--norm",
        "weight",
        "--project",
        "--noise",
        "bayes",
        "--sigma-s",
        "0.3",
        "--lr",
        "0.01",
    ]
    assert main(["train", *SMALL, *flags, "--out", str(run)]) == 0
    assert main(["evaluate", str(run), "--samples", "3", "--robustness-size", "300"]) == 0
    test = json.loads((run / "evaluation.json").read_text())["test"]
    assert set(test) == {"single", "mc3"}
    assert test["single"]["nll"] != test["mc3"]["nll"]
    for entry in test.values():
        assert 0 <= entry["aurc_entropy"] <= 1 and len(entry["curve_entropy"]["error"]) == 100
    assert (run / "error_coverage.png").stat().st_size > 10_000
    assert "test mc3: accuracy" in capsys.readouterr().out
    evaluation = json.loads((run / "evaluation.json").read_text())
    robustness = evaluation["robustness"]
    assert robustness["images"] == 300 and set(robustness["fgsm"]) == {"single", "mc3"}
    fgsm = robustness["fgsm"]["single"]
    # eps = 0 and std = 0 both give the clean accuracy of the same images
    gaussian = robustness["gaussian"]["single"]
    assert gaussian[0]["std"] == 0.0 and fgsm[0]["eps"] == 0.0
    assert gaussian[0]["accuracy"] == fgsm[0]["accuracy"]
    # the attack hurts the model it was computed for
    assert fgsm[-1]["accuracy"] < fgsm[0]["accuracy"]
    assert len(evaluation["learned_noise"]) == 9
    assert (run / "robustness.png").stat().st_size > 10_000


def test_noise_from_a_bn_noise_file(tmp_path):
    from stochnorm.cli import _config, build_parser

    path = tmp_path / "bn-noise.json"
    path.write_text(json.dumps({"summary": {"sigma_v": [0.01] * 9, "sigma_u": [0.02] * 9}}))
    args = build_parser().parse_args(
        ["train", "--norm", "weight", "--noise", "bn-like", "--noise-from", str(path)]
    )
    cfg = _config(args)
    assert cfg.sigma_v == (0.01,) * 9 and cfg.sigma_u == (0.02,) * 9
    path.write_text(json.dumps({"summary": {}}))
    with pytest.raises(Exception, match="not bn-noise output"):
        _config(build_parser().parse_args(["train", "--noise-from", str(path)]))


def test_demo_trains_evaluates_and_reports_both_runs(tmp_path, capsys, monkeypatch):
    from stochnorm import demo

    tiny = {"width": 0.1, "subset": 0.005, "epochs": 1, "eval_train_size": 50, "eval_size": 300}
    runs = {name: {**o, **tiny} for name, o in demo.DEMO_RUNS.items()}
    monkeypatch.setattr(demo, "DEMO_RUNS", runs)
    monkeypatch.setattr(demo, "DEMO_SAMPLES", (2, 3))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    report = (out / "report.md").read_text()
    assert "NLL MC-2" in report and "NLL single pass" in report
    bayes = json.loads((out / "analytic-proj-bayes" / "evaluation.json").read_text())
    assert set(bayes["test"]) == {"single", "mc2", "mc3"} and len(bayes["learned_noise"]) == 9
    batch = json.loads((out / "batch" / "evaluation.json").read_text())
    assert set(batch["test"]) == {"single"}
    for name in runs:
        assert name in report and name in printed
    assert (out / "error_coverage.png").stat().st_size > 10_000
    # a second call finds both runs done and only rewrites the report
    stamp = (out / "batch" / "checkpoint.pt").stat().st_mtime_ns
    assert main(["demo", "--out", str(out), "--no-progress"]) == 0
    assert (out / "batch" / "checkpoint.pt").stat().st_mtime_ns == stamp


def test_train_with_nproc_runs_data_parallel_under_torchrun(tmp_path, capsys):
    out = tmp_path / "ddp"
    flags = ["--profile", "demo", "--width", "0.1", "--subset", "0.005", "--epochs", "1",
             "--eval-size", "100", "--eval-train-size", "20", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(["train", "--nproc", "2", *flags]) == 0
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["replicas"] == 2 and saved["complete"]
    assert main(["train", "--nproc", "0", *flags]) == 2
    assert "--nproc must be at least 1" in capsys.readouterr().err
    assert main(["train", "--nproc", "2", "--norm", "nonsense", *flags]) == 2  # before launching
