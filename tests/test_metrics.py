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
    with pytest.raises(ValueError, match="uncertainty score"):
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


def test_error_coverage_treats_tied_uncertainties_as_one_block():
    # every prediction equally certain: the curve is the overall error rate at every coverage,
    # whatever the order of the samples (before, it followed the order: 0.0625 vs 0.5208)
    probs, labels = torch.eye(4), torch.tensor([0, 1, 2, 0])
    for order in (torch.arange(4), torch.arange(4).flip(0), torch.tensor([3, 0, 2, 1])):
        assert metrics.aurc(probs[order], labels[order]) == pytest.approx(0.25, abs=1e-12)
    _, error = metrics.error_coverage(probs, labels)
    assert torch.allclose(error, torch.full((4,), 0.25, dtype=torch.float64))


def test_error_coverage_of_a_tied_block_is_the_mean_over_its_orders():
    # ties in a block: the curve equals the average over all orders of the block (brute force)
    import itertools

    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.6, 0.4], [0.6, 0.4], [0.45, 0.55]])
    labels = torch.tensor([0, 1, 0, 1, 1])
    curves = []
    for perm in itertools.permutations([1, 2, 3]):
        wrong = (probs.argmax(1) != labels)[[0, *perm, 4]].double()
        curves.append(wrong.cumsum(0) / torch.arange(1, 6))
    _, error = metrics.error_coverage(probs, labels, "max-prob")
    assert torch.allclose(error, torch.stack(curves).mean(0), atol=1e-12)


def test_auroc_and_roc_match_torchmetrics():
    tm = pytest.importorskip("torchmetrics.functional.classification")
    g = torch.Generator().manual_seed(0)
    familiar = torch.randn(300, generator=g)
    unfamiliar = torch.randn(200, generator=g) + 0.8
    unfamiliar[:20] = familiar[:20]  # ties across the two sets
    scores = torch.cat([familiar, unfamiliar])
    target = torch.cat([torch.zeros(300), torch.ones(200)]).long()
    expected = tm.binary_auroc(scores, target).item()
    assert metrics.auroc(familiar, unfamiliar) == pytest.approx(expected, abs=1e-6)
    # FPR at 95% TPR with the familiar inputs as positives (scored by -uncertainty)
    fpr, tpr, _ = tm.binary_roc(-scores, 1 - target)
    expected_fpr = fpr[tpr >= 0.95].min().item()
    assert metrics.fpr_at_tpr(familiar, unfamiliar, 0.95) == pytest.approx(expected_fpr, abs=1e-6)


def test_auroc_extremes_and_bad_input():
    assert metrics.auroc(torch.zeros(5), torch.ones(3)) == 1.0
    assert metrics.auroc(torch.ones(5), torch.zeros(3)) == 0.0
    assert metrics.auroc(torch.ones(5), torch.ones(3)) == 0.5
    with pytest.raises(ValueError, match="familiar and unfamiliar"):
        metrics.auroc(torch.zeros(0), torch.ones(3))
    with pytest.raises(ValueError, match="tpr"):
        metrics.fpr_at_tpr(torch.zeros(3), torch.ones(3), 0.0)


def test_mutual_information_by_hand():
    # two draws that disagree fully: H(mean) = log 2, each draw's entropy 0 -> MI = log 2;
    # identical draws carry no information about the noise
    draws = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    assert metrics.mutual_information(draws).item() == pytest.approx(math.log(2), rel=1e-9)
    same = torch.tensor([[[0.3, 0.7]], [[0.3, 0.7]]])
    assert metrics.mutual_information(same).item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="draws"):
        metrics.mutual_information(torch.ones(2, 3))


def test_ece_matches_torchmetrics():
    tm = pytest.importorskip("torchmetrics.functional.classification")
    g = torch.Generator().manual_seed(1)
    probs = torch.softmax(3 * torch.randn(500, 10, generator=g), 1)
    labels = torch.randint(10, (500,), generator=g)
    expected = tm.multiclass_calibration_error(probs, labels, num_classes=10, n_bins=15).item()
    assert metrics.ece(probs, labels) == pytest.approx(expected, abs=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_ece_and_error_coverage_on_cuda():
    probs, labels = PROBS.cuda(), LABELS.cuda()
    assert metrics.ece(probs, labels) == pytest.approx(metrics.ece(PROBS, LABELS))
    assert metrics.aurc(probs, labels) == pytest.approx(metrics.aurc(PROBS, LABELS))
