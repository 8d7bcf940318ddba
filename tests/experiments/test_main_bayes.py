"""The helpers of Table 1 and Figs. A.3-A.4 against independent computations."""

import math

import numpy as np
import pytest
import torch

from stochnorm import metrics
from stochnorm.experiments.main_bayes import (
    coverage_differences,
    coverage_verdict,
    error_at,
    strength_area,
)
from stochnorm.experiments.verdicts import FAILS, HOLDS, INCONCLUSIVE


def test_strength_area_is_the_mean_accuracy_over_the_range():
    rows = [{"std": s, "accuracy": a} for s, a in [(0, 0.9), (0.1, 0.8), (0.4, 0.5), (1.0, 0.1)]]
    expected = np.trapezoid([r["accuracy"] for r in rows], [r["std"] for r in rows]) / 1.0
    assert strength_area(rows, "std") == pytest.approx(expected, abs=1e-12)
    # accuracy linear in the strength: the mean of the end points, whatever the grid
    linear = [{"eps": e, "accuracy": 0.9 - 2 * e} for e in (0.0, 0.01, 0.05, 0.2)]
    assert strength_area(linear, "eps") == pytest.approx((0.9 + 0.5) / 2, abs=1e-12)


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
