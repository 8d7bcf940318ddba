"""Luo et al.'s experiment: the verdict logic on made-up numbers."""

import math

import pytest

from stochnorm.experiments import luo
from stochnorm.experiments.verdicts import FAILS, HOLDS, INCONCLUSIVE


def _history(acc, wiggle=0.002, epochs=12):
    return [{"epoch": e + 1, "val_acc": acc + (wiggle if e % 2 else -wiggle)}
            for e in range(epochs)]  # fmt: skip


def _luo_run(acc, eff, se=0.01, gamma_decay=0.0):
    rows = [{"layer": i + 1, "effective_lr": eff, "effective_lr_se": se * eff, "scale_rms": 1.0}
            for i in range(3)]  # fmt: skip
    steps = {stage: {"lr": 0.01, "layers": rows} for stage in ("init", "final")}
    return {"history": _history(acc), "lr": 0.01, "diverged": False, "gamma_decay": gamma_decay,
            "scale_steps": steps}  # fmt: skip


def _luo_numbers(bn, pn, gd, eff_bn=2e-3, eff_pn=1e-3):
    return {
        "gamma_decay": 1e-4, "measure_batches": 10,
        "runs": {"batch": _luo_run(bn, eff_bn), "population": _luo_run(pn, eff_pn),
                 "population-gd": _luo_run(gd, eff_pn, gamma_decay=1e-4)},
    }  # fmt: skip


def test_luo_verdict():
    exp = luo.PopulationNormGammaDecay()
    # PN + gamma decay matches BN, PN alone is far off, BN's steps are twice as large
    assert exp.verdict(_luo_numbers(0.90, 0.86, 0.901)).status == HOLDS
    # gamma decay moves PN away from BN
    assert exp.verdict(_luo_numbers(0.90, 0.89, 0.85)).status == FAILS
    # BN's effective learning rate smaller than PN's
    assert exp.verdict(_luo_numbers(0.90, 0.86, 0.901, eff_bn=5e-4)).status == FAILS
    # differences within the iterate spread
    assert exp.verdict(_luo_numbers(0.90, 0.899, 0.9005)).status == INCONCLUSIVE
    mean_log, se, larger = luo.log_ratio(_luo_numbers(0.9, 0.9, 0.9)["runs"], "batch", "population")
    assert mean_log == pytest.approx(math.log(2)) and larger == 3
    assert se == pytest.approx(math.sqrt(3 * 2 * 0.01**2) / 3)


def test_closeness():
    assert luo.closeness(0.001, 0.002, "x").status == HOLDS
    assert luo.closeness(-0.01, 0.002, "x").status == FAILS
    assert luo.closeness(0.004, 0.002, "x").status == INCONCLUSIVE
    assert luo.closeness(0.0, 0.0, "x").status == INCONCLUSIVE
