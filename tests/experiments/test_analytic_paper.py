"""The analytic normalization paper's experiments: the verdicts on made-up numbers and the statistics with noise."""

import math

import torch

from stochnorm.experiments import analytic_paper
from stochnorm.experiments.verdicts import FAILS, HOLDS, INCONCLUSIVE
from stochnorm.models import AllCNN


def _stat_rows(ratios, noise=0.01):
    return [{"layer": i + 1, "channels": 4, "mean_error": 0.1, "sigma_ratio_mean": r,
             "sigma_ratio_min": r, "sigma_ratio_max": r, "split_half_noise": noise}
            for i, r in enumerate(ratios)]  # fmt: skip


def test_analytic_statistics_verdict():
    exp = analytic_paper.AnalyticStatistics()
    at_init = _stat_rows([1.0, 1.18, 1.1, 0.95])
    assert analytic_paper.band_verdict(at_init, "init").status == HOLDS
    collapsed = _stat_rows([1.0, 0.68, 0.3, 0.09])
    assert exp.verdict({"init": at_init, "trained": collapsed}).status == FAILS
    assert exp.verdict({"init": at_init, "trained": at_init}).status == HOLDS
    edge = _stat_rows([1.0, 1.245], noise=0.05)  # inside the band by less than the noise
    assert analytic_paper.band_verdict(edge, "edge").status == INCONCLUSIVE


def test_statistics_with_noise_on_a_small_analytic_network():
    torch.manual_seed(0)
    model = AllCNN(1, 10, width=0.1, norm="analytic")
    x = torch.randn(64, 1, 12, 12)
    rows = analytic_paper.statistics_with_noise(model, x)
    assert len(rows) == 9
    assert all(r["split_half_noise"] >= 0 and math.isfinite(r["split_half_noise"]) for r in rows)


def test_batch_independence_verdict():
    exp = analytic_paper.BatchIndependence()

    def rows(value):
        return [{"batch_size": k, "max_abs_diff": value, "max_rel_diff": value} for k in (1, 8)]

    def numbers(an, bn, loss=0.5):
        return {
            "batch_sizes": [1, 8], "tolerance": 1e-5,
            "models": {"analytic-init": rows(an), "batch-init": rows(bn)},
            "batch1_training": {"train_loss": loss, "diverged": False, "steps": 10, "lr": 1e-3,
                                "val_acc": 0.5},
        }  # fmt: skip

    assert exp.verdict(numbers(0.0, 0.1)).status == HOLDS
    assert exp.verdict(numbers(1e-3, 0.1)).status == FAILS
    assert exp.verdict(numbers(1e-7, 0.1, loss=math.nan)).status == FAILS
