import json
import math

import pytest

from stochnorm import metrics
from stochnorm.benchmark import Benchmark, Regime, Sizes, run_benchmark
from stochnorm.benchmark.grid import REFERENCE_BATCH, REGIMES, narrowed, regime
from stochnorm.benchmark.results import (
    collect,
    comparisons,
    entries,
    paired,
    regime_cells,
    seed_mean,
    values,
)
from stochnorm.cli import main
from stochnorm.errors import ConfigError
from stochnorm.evaluation import load_run
from stochnorm.experiments.base import table_lr
from stochnorm.prediction import predict_probs

TINY = {"width": 0.1, "subset": 0.005, "epochs": 1, "eval_train_size": 20, "eval_size": 100}
SIZES = Sizes(val=50, test=100, shift=4, unfamiliar=40)
B32 = Regime("b32", "32 per step", 32, methods=("batch", "group", "weight-proj-bayes-f30"))
DDP = Regime("ddp8x4", "8 replicas of 4", 32, 4, ("batch",))


def tiny_bench(out, **kwargs):
    return Benchmark("demo", out, seeds=2, regimes=(B32, DDP), overrides=TINY, **kwargs)


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    bench = tiny_bench(out)
    numbers = run_benchmark(bench, "test", samples=2, sizes=SIZES)
    return bench, numbers


def test_the_grid_is_trained_measured_and_written(done):
    bench, numbers = done
    assert numbers["missing"] == []
    cells = numbers["cells"]
    assert set(cells) == {"b32", "ddp8x4"} and set(cells["ddp8x4"]) == {"batch"}
    for method in B32.methods:
        assert len(cells["b32"][method]["runs"]) == 2
    found = entries(numbers, "b32")
    assert {"batch", "batch MC-BN-2", "group", "weight-proj-bayes-f30",
            "weight-proj-bayes-f30 MC-2"} == set(found)  # fmt: skip
    assert found["batch"][1]["seeds"] == [0, 1]
    # the data-parallel regime has batch norm's own runs and the batch-independent ones of b32
    ddp = entries(numbers, "ddp8x4")
    assert ddp["group"] == found["group"] and ddp["batch"] != found["batch"]
    text = (bench.out / "BENCHMARK.md").read_text()
    assert "## The answer" in text and "| batch MC-BN-2 | 2 |" in text
    assert "The rule against the search itself at batch 4: batch: rule" in text
    for name in ("benchmark_methods.png", "benchmark_shift.png", "benchmark_reliability.png"):
        assert (bench.out / name).stat().st_size > 0
    assert json.loads((bench.out / "benchmark.json").read_text())["cells"] == numbers["cells"]


def test_the_single_pass_measurement_matches_a_fresh_prediction(done):
    bench, numbers = done
    path = numbers["cells"]["b32"]["group"]["runs"][1]
    cfg, data, model = load_run(path)
    test = data.test.head(SIZES.test)
    probs = predict_probs(model, test)
    entry = entries(numbers, "b32")["group"][1]
    assert entry["accuracy"][1] == pytest.approx(metrics.accuracy(probs, test.y), abs=1e-12)
    assert entry["nll"][1] == pytest.approx(metrics.nll(probs, test.y), rel=1e-6)
    val = data.val.head(SIZES.val)
    t = metrics.fit_temperature(predict_probs(model, val), val.y)
    scaled = metrics.nll(metrics.temperature_scale(probs, t), test.y)
    assert entry["nll_ts"][1] == pytest.approx(scaled, rel=1e-6)


def test_a_second_benchmark_trains_and_measures_nothing(done):
    bench, numbers = done
    saved = {p: p.stat().st_mtime_ns for p in bench.out.rglob("*") if p.name in
             ("checkpoint.pt", "benchmark.json") and p.parent != bench.out}  # fmt: skip
    again = run_benchmark(tiny_bench(bench.out), "test", samples=2, sizes=SIZES, train=False)
    assert again["cells"] == numbers["cells"]
    assert saved == {p: p.stat().st_mtime_ns for p in saved}


def test_measured_cells_stand_without_their_checkpoints(done, tmp_path):
    bench, numbers = done
    checkpoints = sorted(bench.out.glob("runs/*/checkpoint.pt"))
    kept = tmp_path / "kept"
    kept.mkdir()
    for i, path in enumerate(checkpoints):  # as on a machine that did not train them
        path.rename(kept / f"{i}.pt")
    try:
        again = collect(tiny_bench(bench.out), samples=2, sizes=SIZES, train=False)
        assert again["cells"] == numbers["cells"] and not again["unusable"]
        other = collect(tiny_bench(bench.out), samples=3, sizes=SIZES, train=False)
        assert other["unusable"] and "no checkpoint here" in other["unusable"][0]
    finally:
        for i, path in enumerate(checkpoints):
            (kept / f"{i}.pt").rename(path)


def test_unfinished_cells_are_reported_missing_not_trained(tmp_path):
    numbers = run_benchmark(tiny_bench(tmp_path), "test", samples=2, sizes=SIZES, train=False)
    assert len(numbers["missing"]) == 2 * (len(B32.methods) + 1)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert "**Partial**" in (tmp_path / "BENCHMARK.md").read_text()


def test_small_batches_scale_the_rate_and_replicas_name_ghost_batches(tmp_path):
    bench = Benchmark("demo", tmp_path, seeds=1, regimes=REGIMES)
    b4 = next(bench.cells())
    assert b4.regime.name == "b4" and b4.method == "batch"
    cfg = bench.config(b4)
    assert cfg.batch_size == 4
    assert cfg.lr == pytest.approx(table_lr(cfg) * 4 / REFERENCE_BATCH)
    ddp = [c for c in bench.cells() if c.regime.name == "ddp8x4"]
    assert [c.method for c in ddp] == ["batch"]
    assert bench.config(ddp[0]).ghost_batch == 4 and bench.config(ddp[0]).batch_size == 32
    with pytest.raises(ConfigError, match="unknown regime 'b3'"):
        regime("b3")


def _entry(values):
    return {"seeds": list(range(len(values))), "accuracy": values, "nll_ts": values}


def test_paired_verdicts_follow_the_two_standard_error_rule():
    base = _entry([0.80, 0.81, 0.82])
    assert paired(_entry([0.85, 0.86, 0.88]), base, "accuracy")["verdict"] == "better"
    assert paired(_entry([0.85, 0.86, 0.88]), base, "nll_ts")["verdict"] == "worse"  # lower wins
    mixed = paired(_entry([0.83, 0.79, 0.84]), base, "accuracy")
    assert mixed["verdict"] == "inconclusive" and mixed["pairs"] == 3
    d = [0.03, -0.02, 0.02]
    assert mixed["difference"] == pytest.approx(sum(d) / 3)
    sd = math.sqrt(sum((x - sum(d) / 3) ** 2 for x in d) / 2)
    assert mixed["se"] == pytest.approx(sd / math.sqrt(3))
    one = paired(_entry([0.9]), _entry([0.1]), "accuracy")
    assert one["verdict"] == "inconclusive" and one["pairs"] == 1


def _numbers(cells, regimes=None):
    return {
        "baselines": ["batch", "group"], "samples": 10,
        "regimes": regimes or [{"name": "b4", "ghost_batch": None, "batch_size": 4}],
        "cells": cells,
    }  # fmt: skip


def test_comparisons_name_one_entry_in_advance_and_report_the_best_as_exploratory():
    numbers = _numbers({"b4": {
        "batch": {"entries": {"batch": _entry([0.80, 0.80, 0.81]),
                              "batch MC-BN-10": _entry([0.82, 0.83, 0.83])}},
        "group": {"entries": {"group": _entry([0.81, 0.81, 0.82])}},
        "weight-proj": {"entries": {"weight-proj": _entry([0.84, 0.86, 0.85])}},
        "analytic-proj-bayes-f30": {"entries": {
            "analytic-proj-bayes-f30": _entry([0.80, 0.80, 0.80]),
            "analytic-proj-bayes-f30 MC-10": _entry([0.83, 0.82, 0.84])}},
    }})  # fmt: skip
    named, best = comparisons(numbers, "b4")["accuracy"]
    assert named["kind"] == "named in advance" and best["kind"] == "best of 3"
    assert named["stochnorm"] == "analytic-proj-bayes-f30 MC-10"
    assert named["baseline"] == best["baseline"] == "batch MC-BN-10"
    assert named["verdict"] == "inconclusive"  # +0.003 +- 0.007
    assert best["stochnorm"] == "weight-proj" and best["verdict"] == "better"
    lowest = comparisons(numbers, "b4")["nll_ts"]
    assert lowest[0]["baseline"] == "batch"  # the lowest mean of the same numbers


def test_missing_and_non_finite_values_are_left_out_not_zero():
    entry = {"seeds": [0, 1, 2], "accuracy": [0.8, None, float("nan")]}
    assert seed_mean(entry, "accuracy") == pytest.approx(0.8)
    other = {"seeds": [0, 1, 2], "accuracy": [0.7, 0.9, 0.9]}
    result = paired(entry, other, "accuracy")
    assert result["pairs"] == 1 and result["difference"] == pytest.approx(0.1)


def test_data_parallel_regimes_share_only_batch_independent_cells():
    regimes = [{"name": "b32", "ghost_batch": None, "batch_size": 32},
               {"name": "ddp8x4", "ghost_batch": 4, "batch_size": 32}]  # fmt: skip
    cell = {"entries": {"x": _entry([0.8])}}
    numbers = _numbers({
        "b32": {m: cell for m in ("batch", "group", "population-proj", "analytic-proj")},
        "ddp8x4": {"batch": {"entries": {"batch": _entry([0.7])}}},
    }, regimes)  # fmt: skip
    assert set(regime_cells(numbers, "ddp8x4")) == {"batch", "group", "analytic-proj"}
    assert regime_cells(numbers, "ddp8x4")["batch"]["entries"]["batch"]["accuracy"] == [0.7]
    assert regime_cells(numbers, "nowhere") == {}


def test_cli_names_a_bad_regime_and_seed_count(capsys, tmp_path):
    assert main(["benchmark", "--regimes", "b4,b5", "--out", str(tmp_path)]) == 2
    assert "unknown regime 'b5'" in capsys.readouterr().err
    assert main(["benchmark", "--seeds", "0", "--out", str(tmp_path)]) == 2
    assert "--seeds must be at least 1" in capsys.readouterr().err


def test_mutual_information_is_measured_for_sampled_modes_only(done):
    _, numbers = done
    found = entries(numbers, "b32")
    assert len(found["weight-proj-bayes-f30 MC-2"][1]["ood_auroc_mi"]) == 2
    assert values(found["weight-proj-bayes-f30"][1], "ood_auroc_mi") == {}
    assert values(found["batch MC-BN-2"][1], "ood_auroc_mi") == {}
    clean = found["batch"][1]["shift_clean"]
    assert len(clean) == 2 and all(0 <= run["accuracy"] <= 1 for run in clean)


def test_the_rule_check_compares_the_linear_rule_with_the_rate_at_batch_4(done):
    _, numbers = done
    checked = numbers["lr_check"]
    assert set(checked) == {"batch", "analytic-proj"}
    for entry in checked.values():  # the demo profile tabulates its rates: no search
        assert entry["rule"] == pytest.approx(entry["searched"] * 4 / REFERENCE_BATCH)


def test_a_part_of_the_grid_keeps_the_named_methods_of_each_regime():
    part = narrowed(REGIMES, ["batch", "analytic-proj-bayes-f30"])
    assert [(r.name, r.methods) for r in part] == [
        ("b4", ("batch", "analytic-proj-bayes-f30")),
        ("b32", ("batch", "analytic-proj-bayes-f30")),
        ("ddp8x4", ("batch",)),
        ("ddp4x8", ("batch",)),
        ("b2", ("batch", "analytic-proj-bayes-f30")),
    ]
    assert [r.name for r in narrowed(REGIMES, ["population-proj"])] == ["b4", "b32"]
    with pytest.raises(ConfigError, match="unknown method 'analytic-bayes'"):
        narrowed(REGIMES, ["analytic-bayes"])
