"""The protocol experiments of the main paper (Fig. 2, A.1, A.2): their measurements
against independent computations, their verdicts on constructed histories, and the seed
handling of the lab they rely on. The end-to-end runs are in test_reproduce.py."""

import math
import random
import statistics

import pytest

from stochnorm.experiments.main_protocol import (
    BatchSize,
    NormalizationBatch,
    SeedSpread,
    seed_deviation,
    with_log_loss,
    with_mode_gap,
)
from stochnorm.experiments.verdicts import FAILS, HOLDS, INCONCLUSIVE
from tests.histories import history as made_up_history


def _summary(history, lr=0.04):
    return {"run": "x", "lr": lr, "history": history, "final": {}, "diverged": False}


def test_mode_gap_and_log_loss_are_log_ratios_of_the_recorded_losses():
    history = made_up_history([0.5, 0.6], train_loss=[0.2, 0.1], train_eval_loss=[0.1, 0.1])
    history.append({"epoch": 3, "val_acc": 0.7, "train_loss": 0.1, "val_loss": 0.3})
    gaps = with_mode_gap(history)
    assert [row["epoch"] for row in gaps] == [1, 2]  # the epoch without eval loss is left out
    assert [row["mode_gap"] for row in gaps] == pytest.approx([math.log(2.0), 0.0], abs=1e-15)
    logs = with_log_loss(history, "train_loss")
    assert [row["log_loss"] for row in logs] == pytest.approx(
        [math.log(0.2), math.log(0.1), math.log(0.1)], abs=1e-15
    )


def test_seed_deviation_by_hand():
    first = made_up_history([0.80, 0.82, 0.84, 0.86])  # mean 0.83, sample std sqrt(0.02^2 * 5/3)
    second = made_up_history([0.70, 0.90, 0.90, 0.90])  # mean 0.85
    third = made_up_history([0.78, 0.78, 0.78, 0.78])  # mean 0.78, std 0
    found = seed_deviation([first, second, third], "val_acc", last=4)
    assert found["tail_means"] == pytest.approx([0.83, 0.85, 0.78])
    assert found["deviation"] == pytest.approx(0.05)
    s0 = statistics.stdev([0.80, 0.82, 0.84, 0.86])
    s1 = statistics.stdev([0.70, 0.90, 0.90, 0.90])
    assert found["iterate_std"] == pytest.approx(s0)
    assert found["seed_std"] == pytest.approx(statistics.stdev([0.83, 0.85, 0.78]))
    assert found["standard_error"] == pytest.approx(math.sqrt(s1**2 / 4 + s0**2 / 4))
    with pytest.raises(ValueError):
        seed_deviation([first], "val_acc")


def test_seed_deviation_standard_error_matches_monte_carlo_for_independent_iterates():
    """For two runs of independent N(mu, sigma^2) iterates, the spread of m_1 - m_0 over
    repetitions is sqrt(2 / n) sigma; the estimated standard error agrees within 5% on
    average (sample std bias c4(10) = 0.973 included in the tolerance)."""
    rng = random.Random(0)
    sigma, n, reps = 0.01, 10, 4000
    differences, errors = [], []
    for _ in range(reps):
        runs = [made_up_history([0.9 + rng.gauss(0, sigma) for _ in range(n)]) for _ in range(2)]
        found = seed_deviation(runs, "val_acc", last=n)
        differences.append(found["tail_means"][1] - found["tail_means"][0])
        errors.append(found["standard_error"])
    expected = math.sqrt(2 / n) * sigma
    assert statistics.stdev(differences) == pytest.approx(expected, rel=0.05)
    assert statistics.mean(errors) == pytest.approx(expected, rel=0.05)


def test_seed_spread_verdict_compares_the_deviation_with_the_iterate_std():
    wobbly = [0.85, 0.87] * 5  # iterate std about 0.0105
    close = SeedSpread().verdict(
        {"seeds": [0, 1], "runs": {"batch": {"0": _summary(made_up_history(wobbly)),
                                             "1": _summary(made_up_history([0.861] * 10))}}}
    )  # fmt: skip
    assert close.status == HOLDS and "max deviation" in close.summary
    far = SeedSpread().verdict(
        {"seeds": [0, 1], "runs": {"batch": {"0": _summary(made_up_history(wobbly)),
                                             "1": _summary(made_up_history([0.90] * 10))}}}
    )  # fmt: skip
    assert far.status == FAILS


def _fig2_numbers(large_val_acc, large_train_loss):
    n = 10
    small = made_up_history([0.90, 0.91] * 5, train_loss=[0.2] * n, train_eval_loss=[0.1] * n,
                     val_loss=[0.30, 0.31] * 5)  # fmt: skip
    large = made_up_history([large_val_acc] * n, train_loss=[large_train_loss] * n,
                     train_eval_loss=[0.1] * n, val_loss=[0.40] * n)  # fmt: skip
    return {"batch_size": 32, "norm_batch": 1024,
            "runs": {"BN norm batch 32": _summary(small), "BN norm batch 1024": _summary(large)}}  # fmt: skip


def test_normalization_batch_verdict():
    # smaller train/eval gap, higher val loss, lower accuracy: the paper's Fig. 2
    assert NormalizationBatch().verdict(_fig2_numbers(0.85, 0.12)).status == HOLDS
    # the larger normalization batch generalizes better: the claim fails
    assert NormalizationBatch().verdict(_fig2_numbers(0.95, 0.12)).status == FAILS
    # no eval-mode loss recorded: the stochasticity part cannot be measured
    numbers = _fig2_numbers(0.85, 0.12)
    for entry in numbers["runs"].values():
        for row in entry["history"]:
            del row["train_eval_loss"]
    verdict = NormalizationBatch().verdict(numbers)
    assert verdict.status == INCONCLUSIVE and "eval_train_size" in verdict.summary


def test_batch_size_verdict():
    small_fit = [1.0, 0.6, 0.3, 0.2, 0.15, 0.12, 0.11, 0.1, 0.1, 0.1]

    def numbers(bn_large_acc, bn_large_loss):
        runs = {
            "none": {"32": _summary(made_up_history([0.90] * 10)),
                     "128": _summary(made_up_history([0.85] * 10))},
            "batch": {"32": _summary(made_up_history([0.92, 0.921] * 5, train_eval_loss=small_fit)),
                      "128": _summary(made_up_history([bn_large_acc] * 10,
                                               train_eval_loss=[bn_large_loss] * 10))},
        }  # fmt: skip
        return {"batch_sizes": [32, 128], "skipped": [], "searched_lr": True,
                "train_size": 1280, "runs": runs}  # fmt: skip

    # batch 128 makes 100 steps in 10 epochs, batch 32 as many by its epoch 3 (loss 0.3):
    # at equal steps 0.2 fits as well, although batch 32 ends lower (0.1)
    found = BatchSize().verdict(numbers(0.88, 0.2))
    assert found.status == HOLDS
    assert "after 100 steps: batch 128 0.2000 (10 epochs) vs batch 32 0.3000 (epoch 3" in (
        found.summary
    )
    # the larger batch does not optimize the training loss: the explanation fails
    assert BatchSize().verdict(numbers(0.88, 0.5)).status == FAILS
    unsized = numbers(0.88, 0.2)
    del unsized["train_size"]  # a result saved before the size was kept
    assert BatchSize().verdict(unsized).status == INCONCLUSIVE
    # no dependence on the batch size with BN: the accuracy parts fail
    assert BatchSize().verdict(numbers(0.9205, 0.05)).status != HOLDS
