import math

import pytest
import torch

from stochnorm import metrics

PROBS = torch.tensor(
    [
        [0.7, 0.2, 0.1],  # correct, conf 0.7
        [0.1, 0.8, 0.1],  # correct, conf 0.8
        [0.5, 0.4, 0.1],  # wrong (label 1), conf 0.5
        [0.2, 0.2, 0.6],  # wrong (label 0), conf 0.6
    ],
    dtype=torch.float64,
)
LABELS = torch.tensor([0, 1, 1, 0])


def test_accuracy_and_nll_by_hand():
    assert metrics.accuracy(PROBS, LABELS) == pytest.approx(0.5)
    expected = -(math.log(0.7) + math.log(0.8) + math.log(0.4) + math.log(0.2)) / 4
    assert metrics.nll(PROBS, LABELS) == pytest.approx(expected, rel=1e-12)


def test_brier_by_hand():
    rows = [
        0.3**2 + 0.2**2 + 0.1**2,
        0.1**2 + 0.2**2 + 0.1**2,
        0.5**2 + 0.6**2 + 0.1**2,
        0.8**2 + 0.2**2 + 0.6**2,
    ]
    assert metrics.brier(PROBS, LABELS) == pytest.approx(sum(rows) / 4, rel=1e-12)


def test_ece_by_hand():
    # 15 bins of width 1/15: conf 0.5 -> bin 8 (7/15, 8/15], 0.6 -> bin 9, 0.7 -> bin 11,
    # 0.8 -> bin 12; each bin holds one sample: |acc - conf| = 0.3, 0.2, 0.5, 0.6.
    expected = (0.3 + 0.2 + 0.5 + 0.6) / 4
    assert metrics.ece(PROBS, LABELS) == pytest.approx(expected, rel=1e-12)
    # Two bins: (0, 0.5] holds conf 0.5 (wrong); (0.5, 1] holds 0.7, 0.8 (right), 0.6 (wrong)
    assert metrics.ece(PROBS, LABELS, bins=2) == pytest.approx(
        (1 * 0.5 + 3 * abs(2 / 3 - 0.7)) / 4, rel=1e-12
    )


def test_ece_zero_for_calibrated_predictions():
    probs = torch.tensor([[0.75, 0.25]] * 4)
    labels = torch.tensor([0, 0, 0, 1])
    assert metrics.ece(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_error_coverage_and_aurc_by_hand():
    # Entropy order (most certain first): row 1, row 0, row 2, row 3.
    coverage, error = metrics.error_coverage(PROBS, LABELS)
    assert coverage.tolist() == pytest.approx([0.25, 0.5, 0.75, 1.0])
    h = metrics.entropy(PROBS)
    assert h[1] < h[0] < h[2] < h[3]
    assert error.tolist() == pytest.approx([0.0, 0.0, 1 / 3, 0.5])
    assert metrics.aurc(PROBS, LABELS) == pytest.approx((0 + 0 + 1 / 3 + 0.5) / 4)
    # By max probability: 0.8, 0.7, 0.6 (wrong), 0.5 (wrong): the same order here.
    _, error_mp = metrics.error_coverage(PROBS, LABELS, score="max-prob")
    assert error_mp.tolist() == pytest.approx([0.0, 0.0, 1 / 3, 0.5])


def test_entropy_of_uniform_and_onehot():
    assert metrics.entropy(torch.full((1, 4), 0.25)).item() == pytest.approx(math.log(4))
    assert metrics.entropy(torch.tensor([[1.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-9)


def test_nll_finite_for_zero_probability():
    assert math.isfinite(metrics.nll(torch.tensor([[1.0, 0.0]]), torch.tensor([1])))


def test_bad_shapes_and_score_are_rejected():
    with pytest.raises(ValueError, match="probs"):
        metrics.accuracy(PROBS, LABELS[:2])
    with pytest.raises(ValueError, match="rejection score"):
        metrics.error_coverage(PROBS, LABELS, score="margin")


def test_temperature_scaling_fits_the_temperature_that_made_the_data():
    # labels drawn from softmax(z), predictions softmax(2 z): overconfident by T = 2
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20_000, 5, generator=g) * 1.5
    labels = torch.multinomial(torch.softmax(z, 1), 1, generator=g).squeeze(1)
    over = torch.softmax(2 * z, 1)
    t = metrics.fit_temperature(over, labels)
    assert t == pytest.approx(2.0, rel=0.03)
    scaled = metrics.temperature_scale(over, t)
    assert torch.allclose(scaled, torch.softmax(z, 1).double(), atol=0.02)
    assert metrics.nll(scaled, labels) < metrics.nll(over, labels)
    # the minimum of a brute-force grid over T, to the grid's spacing
    grid = torch.linspace(1.5, 2.5, 201)
    losses = [metrics.nll(metrics.temperature_scale(over, float(s)), labels) for s in grid]
    assert t == pytest.approx(float(grid[int(torch.tensor(losses).argmin())]), abs=0.006)
    # calibrated predictions keep T = 1, and the accuracy never changes
    assert metrics.fit_temperature(torch.softmax(z, 1), labels) == pytest.approx(1.0, rel=0.03)
    assert metrics.accuracy(scaled, labels) == metrics.accuracy(over, labels)
    with pytest.raises(ValueError, match="temperature"):
        metrics.temperature_scale(over, 0.0)
