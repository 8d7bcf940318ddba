"""The helpers of the stochastic-side experiments (experiments/main_noise.py) against
independent computations, `diagnostics.measure_bn_noise` against `bn_noise` itself, and the
bar chart of Table 1."""

import math

import numpy as np
import pytest
import torch

from stochnorm import metrics
from stochnorm.checkpoint import save_checkpoint, save_json
from stochnorm.cli import build_parser
from stochnorm.config import TrainConfig
from stochnorm.diagnostics import bn_noise, summarize_bn_noise
from stochnorm.errors import ConfigError
from stochnorm.evaluation import load_run, measure_bn_noise
from stochnorm.experiments.cases import PROFILE_SETTINGS
from stochnorm.experiments.main_bayes import (
    coverage_differences,
    coverage_verdict,
    error_at,
    strength_area,
)
from stochnorm.experiments.main_noise import fig4_numbers
from stochnorm.experiments.verdicts import FAILS, HOLDS, INCONCLUSIVE, improvement_verdict
from stochnorm.plots import plot_grouped_bars
from stochnorm.train import build_model

# ---------------------------------------------------------------- fits and areas


def test_strength_area_is_the_mean_accuracy_over_the_range():
    rows = [{"std": s, "accuracy": a} for s, a in [(0, 0.9), (0.1, 0.8), (0.4, 0.5), (1.0, 0.1)]]
    expected = np.trapezoid([r["accuracy"] for r in rows], [r["std"] for r in rows]) / 1.0
    assert strength_area(rows, "std") == pytest.approx(expected, abs=1e-12)
    # accuracy linear in the strength: the mean of the end points, whatever the grid
    linear = [{"eps": e, "accuracy": 0.9 - 2 * e} for e in (0.0, 0.01, 0.05, 0.2)]
    assert strength_area(linear, "eps") == pytest.approx((0.9 + 0.5) / 2, abs=1e-12)


# ---------------------------------------------------------------- error-coverage


def _curve(probs, labels, points=100):
    """The 100-point error-coverage curve as evaluation.uncertainty_report keeps it."""
    coverage, error = metrics.error_coverage(probs, labels, "entropy")
    idx = (torch.arange(1, points + 1) * len(coverage) // points - 1).clamp_min(0)
    return {"coverage": coverage[idx].tolist(), "error": error[idx].tolist()}


def test_error_at_reads_the_error_of_the_most_certain_fraction():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(1000, 10, generator=g), 1)
    labels = torch.randint(10, (1000,), generator=g)
    curve = _curve(probs, labels)
    # by hand: keep the 600 lowest-entropy predictions, count their errors
    order = torch.argsort(metrics.entropy(probs), stable=True)[:600]
    wrong = (probs[order].argmax(1) != labels[order]).double().mean().item()
    assert error_at(curve, 0.6) == pytest.approx(wrong, abs=1e-12)
    # between grid points: linear interpolation; outside: the end values
    hand = {"coverage": [0.25, 0.5, 1.0], "error": [0.0, 0.02, 0.1]}
    assert error_at(hand, 0.75) == pytest.approx(0.06)
    assert error_at(hand, 0.1) == 0.0 and error_at(hand, 1.0) == 0.1


def test_coverage_differences_by_hand():
    better = {"coverage": [0.05, 0.5, 1.0], "error": [0.0, 0.02, 0.08]}
    worse = {"coverage": [0.05, 0.5, 1.0], "error": [0.0, 0.04, 0.10]}
    rows = coverage_differences(better, worse, 1000)
    assert [r[0] for r in rows] == [0.5, 1.0]  # coverages below 0.1 left out
    assert rows[0][1] == pytest.approx(0.02)
    assert rows[0][2] == pytest.approx(math.sqrt((0.04 * 0.96 + 0.02 * 0.98) / 500))
    assert rows[1][2] == pytest.approx(math.sqrt((0.10 * 0.90 + 0.08 * 0.92) / 1000))


def test_coverage_verdict_holds_fails_and_is_inconclusive_as_the_curves_say():
    c = [k / 100 for k in range(1, 101)]
    n = 10_000
    base = [0.1 * x**2 for x in c]
    curves = {
        "low": {"coverage": c, "error": [0.5 * e for e in base]},
        "base": {"coverage": c, "error": base},
        "same": {"coverage": c, "error": list(base)},
        # better on average, but far worse at 50% coverage
        "dip": {
            "coverage": c,
            "error": [0.5 * e + (0.02 if x == 0.5 else 0) for x, e in zip(c, base, strict=True)],
        },  # fmt: skip
    }
    assert coverage_verdict("low", "base", curves, n).status == HOLDS
    assert coverage_verdict("base", "low", curves, n).status == FAILS
    assert coverage_verdict("same", "base", curves, n).status == INCONCLUSIVE
    dip = coverage_verdict("dip", "base", curves, n)
    assert dip.status == FAILS and "0.50" in dip.summary


# ---------------------------------------------------------------- verdict on histories


def _history(key, values):
    return [{"epoch": i + 1, key: v} for i, v in enumerate(values)]


def test_improvement_verdict_compares_tail_means_with_the_iterate_spread():
    wobble = [0.01 * (-1) ** i for i in range(10)]  # spread ~0.0105
    runs = {
        "a": {"history": _history("val_acc", [0.90 + w for w in wobble])},
        "b": {"history": _history("val_acc", [0.85 + w for w in wobble])},
        "c": {"history": _history("val_acc", [0.905 + w for w in wobble])},
    }
    assert improvement_verdict(runs, "a", "b", "val_acc").status == HOLDS
    assert improvement_verdict(runs, "b", "a", "val_acc").status == FAILS
    assert improvement_verdict(runs, "c", "a", "val_acc").status == INCONCLUSIVE
    # tolerant: within the spread is enough, a clear loss is not
    assert improvement_verdict(runs, "a", "c", "val_acc", tolerant=True).status == HOLDS
    assert improvement_verdict(runs, "b", "a", "val_acc", tolerant=True).status == FAILS
    losses = {
        "a": {"history": _history("val_loss", [0.3 + w for w in wobble])},
        "b": {"history": _history("val_loss", [0.4 + w for w in wobble])},
    }
    verdict = improvement_verdict(losses, "a", "b", "val_loss")
    assert verdict.status == HOLDS and verdict.margin == pytest.approx(0.1)


# ---------------------------------------------------------------- BN noise of a run


@pytest.fixture(scope="module")
def bn_run(tmp_path_factory):
    """A run directory of a tiny BN network whose running statistics have seen training
    batches (no optimization step), as measure_bn_noise reads it."""
    path = tmp_path_factory.mktemp("bn-run")
    cfg = TrainConfig.from_profile("demo", width=0.1, subset=0.005, eval_train_size=50)
    from stochnorm import data as datasets

    data = datasets.prepare(cfg.dataset, subset=cfg.subset, split_seed=cfg.split_seed)
    model = build_model(cfg, data).train()
    with torch.no_grad():
        for start in range(0, len(data.train), 32):
            model(data.train.x[start : start + 32])
    save_json(cfg.to_dict(), path / "config.json")
    save_checkpoint({"model": model.state_dict()}, path / "checkpoint.pt")
    return path


def test_measure_bn_noise_is_bn_noise_of_the_loaded_run_with_chi2_at_the_batch_size(bn_run):
    found = measure_bn_noise(bn_run, (8, 32, 64), batches=4, seed=3)
    cfg, data, model = load_run(bn_run)
    direct = bn_noise(model, data, (8, 32, 64), batches=4, seed=3)
    assert found["run"] == str(bn_run)
    assert found["summary"] == summarize_bn_noise(direct, cfg.batch_size)
    for mine, ref in zip(found["measurements"]["layers"], direct["layers"], strict=True):
        for e, r in zip(mine["per_batch_size"], ref["per_batch_size"], strict=True):
            assert e["sigma_v"] == r["sigma_v"] and e["output_var"] == r["output_var"]
            assert ("chi2" in e) == (e["k"] == 32)
    numbers = fig4_numbers(found)
    assert "chi2" in next(  # fig4_numbers keeps the samples of the Q-Q layer only
        e for e in numbers["measurements"]["layers"][5]["per_batch_size"] if e["k"] == 32
    )
    assert all("chi2" not in e for e in numbers["measurements"]["layers"][0]["per_batch_size"])
    assert all("chi2" in e for e in found["measurements"]["layers"][0]["per_batch_size"]
               if e["k"] == 32)  # the input is not changed  # fmt: skip
    for row in numbers["summary"]["layers"]:  # the same slope as summarize_bn_noise's
        ref = next(r for r in found["summary"]["layers"] if r["layer"] == row["layer"])
        assert row["var_vs_k_slope"] == pytest.approx(ref["var_vs_k_slope"], abs=1e-12)
        assert row["chi2_samples"] == 4 * model_channels(model, row["layer"])
    assert numbers["var_times_k_vs_z"]["slope"] == pytest.approx(
        found["summary"]["var_times_k_vs_z_slope"], abs=1e-12
    )


def model_channels(model, layer):
    from stochnorm.norms import BatchNorm

    return [m for m in model.modules() if isinstance(m, BatchNorm)][layer - 1].num_features


def test_measure_bn_noise_refuses_other_norms_and_batch_sizes_without_the_runs(bn_run, tmp_path):
    with pytest.raises(ConfigError, match="batch size 32"):
        measure_bn_noise(bn_run, (8, 16), batches=2)
    cfg = TrainConfig.from_profile("demo", norm="weight", width=0.1, subset=0.005)
    _, data, _ = load_run(bn_run)
    save_json(cfg.to_dict(), tmp_path / "config.json")
    save_checkpoint({"model": build_model(cfg, data).state_dict()}, tmp_path / "checkpoint.pt")
    with pytest.raises(ConfigError, match="norm=weight"):
        measure_bn_noise(tmp_path, batches=2)


def test_quick_and_full_measure_bn_noise_as_the_cli_does():
    # so that the BN-like sigmas equal those of `stochnorm diagnose bn-noise RUN`
    args = build_parser().parse_args(["diagnose", "bn-noise", "RUN"])
    for profile in ("quick", "full"):
        s = PROFILE_SETTINGS[profile]
        assert list(s["bn_batch_sizes"]) == args.batch_sizes
        assert s["bn_batches"] == args.batches
    assert 32 in PROFILE_SETTINGS["demo"]["bn_batch_sizes"]  # the training batch size


def test_grouped_bars_draw_groups_with_missing_bars(tmp_path):
    values = {"batch": {"single": 0.3}, "an-bayes": {"single": 0.4, "MC-10": 0.25, "MC-30": 0.2}}
    path = plot_grouped_bars(values, tmp_path / "bars.png", ylabel="NLL", title="t")
    assert path.stat().st_size > 5_000
