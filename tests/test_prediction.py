"""Predictions on a whole split: the uncertainty report, the robustness curves and the
learned noise per layer, against direct computations on small models."""

import pytest
import torch
from torch import nn

from stochnorm import add_noise, metrics
from stochnorm.data import Split
from stochnorm.norms import make_norm
from stochnorm.prediction import (
    fgsm_robustness,
    learned_noise,
    loss_and_accuracy,
    noise_robustness,
    predict_mc_batchnorm,
    predict_probs,
    uncertainty_report,
)


def _linear_problem(n: int = 600):
    """A logistic-regression model and data it classifies well (but not perfectly)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 8, generator=g)
    x = torch.randn(n, 8, generator=g)
    y = torch.multinomial(torch.softmax(2 * x @ w.T, 1), 1, generator=g).squeeze(1)
    model = nn.Sequential(nn.Linear(8, 3), nn.LogSoftmax(1))
    with torch.no_grad():
        model[0].weight.copy_(2 * w)
        model[0].bias.zero_()
    return model.eval(), Split(x, y)


def test_uncertainty_report_of_a_deterministic_model_is_its_summary_and_curves():
    model, data = _linear_problem()
    report = uncertainty_report(model, data, samples=(10,), batch_size=128)
    # without noise every sampled pass is the single pass
    assert report["mc10"]["nll"] == pytest.approx(report["single"]["nll"], rel=1e-6)
    probs = torch.softmax(2 * data.x @ model[0].weight.T / 2, 1)
    single = report["single"]
    assert single["nll"] == pytest.approx(metrics.nll(probs, data.y), rel=1e-6)
    coverage, error = metrics.error_coverage(probs, data.y, "entropy")
    assert single["aurc_entropy"] == pytest.approx(error.mean().item(), rel=1e-6)
    curve = single["curve_entropy"]
    assert len(curve["coverage"]) == 100 and curve["coverage"][-1] == pytest.approx(1.0)
    assert curve["error"][-1] == pytest.approx(1 - single["accuracy"])
    nll, acc = loss_and_accuracy(model, data, batch_size=64)
    assert (nll, acc) == pytest.approx((single["nll"], single["accuracy"]), rel=1e-6)


def test_robustness_curves_start_at_the_clean_accuracy_and_fgsm_beats_random_signs():
    model, data = _linear_problem()
    clean = metrics.accuracy(predict_probs(model, data), data.y)
    gaussian = noise_robustness(model, data, (0.0, 1.0, 3.0))
    assert gaussian[0]["accuracy"] == clean
    assert gaussian[2]["accuracy"] < gaussian[0]["accuracy"]
    fgsm = fgsm_robustness(model, data, (0.0, 0.3))
    assert fgsm[0]["accuracy"] == clean
    # the attack's sign is the gradient's: worse than random signs of the same size
    g = torch.Generator().manual_seed(1)
    signs = torch.randint(0, 2, data.x.shape, generator=g) * 2.0 - 1
    random = metrics.accuracy(predict_probs(model, Split(data.x + 0.3 * signs, data.y)), data.y)
    assert fgsm[1]["accuracy"] < random - 0.1
    # by hand for the linear model: sign of d NLL / dx = sign((p - onehot) @ W)
    p = torch.softmax(model[0](data.x), 1)
    grad = (p - nn.functional.one_hot(data.y, 3)) @ model[0].weight
    by_hand = predict_probs(model, Split(data.x + 0.3 * grad.sign(), data.y))
    assert fgsm[1]["accuracy"] == metrics.accuracy(by_hand, data.y)


def test_learned_noise_reports_sigma_s_over_s_per_layer():
    conv = nn.Conv2d(1, 4, 3, bias=False)
    net = nn.Sequential(conv, make_norm("weight", 4, conv))
    add_noise(net, "bayes", sigma_s=0.2)
    with torch.no_grad():
        net[1].weight.fill_(2.0)
    assert learned_noise(net) == [{"layer": 1, "sigma_s_over_s": pytest.approx(0.1)}]
    assert learned_noise(nn.Sequential(nn.Linear(2, 2))) == []


def test_mc_batch_norm_normalizes_by_random_training_batches():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(8, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 4),
                          nn.BatchNorm1d(4), nn.LogSoftmax(1))  # fmt: skip
    train = Split(torch.randn(200, 8) * 2 + 1, torch.zeros(200, dtype=torch.long))
    with torch.no_grad():
        for m in (model[1], model[4]):
            m.weight.uniform_(0.5, 2)
            m.bias.normal_()
        model.train()(train.x)  # running estimates that differ from any one batch's
    data = Split(torch.randn(50, 8), torch.zeros(50, dtype=torch.long))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    found = predict_mc_batchnorm(model.eval(), data, train, (2, 3), stats_batch=16,
                                 generator=torch.Generator().manual_seed(7))  # fmt: skip
    # by hand: the same batches, each layer normalized with that batch's (biased) moments
    g = torch.Generator().manual_seed(7)
    expected, draws = 0, {}
    for k in range(1, 4):
        b = train.x[torch.randint(200, (16,), generator=g)]
        h, x = b, data.x
        for lin, bn in ((model[0], model[1]), (model[3], model[4])):
            hb, hx = lin(h), lin(x)
            mean, var = hb.mean(0), hb.var(0, unbiased=False)
            h = (hb - mean) / (var + bn.eps).sqrt() * bn.weight + bn.bias
            x = (hx - mean) / (var + bn.eps).sqrt() * bn.weight + bn.bias
            if lin is model[0]:
                h, x = h.relu(), x.relu()
        expected = expected + torch.softmax(x, 1)
        draws[k] = (expected / k).detach()
    assert set(found) == {2, 3}
    assert all(torch.allclose(found[k], draws[k], atol=1e-5) for k in (2, 3))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not model.training
    with pytest.raises(ValueError, match="batch normalization"):
        predict_mc_batchnorm(nn.Sequential(nn.Linear(8, 4)), data, train, (2,))


def test_mc_batch_norm_of_a_crop_trained_net_normalizes_by_random_training_crops():
    from stochnorm.data import crop_batches

    torch.manual_seed(6)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Conv2d(3, 2, 1),
                          nn.LogSoftmax(1))  # fmt: skip
    # two training images whose halves differ, so that crops' moments differ from the images'
    x = torch.randn(2, 1, 20, 20)
    x[..., 10:] = 3 * x[..., 10:] + 2
    train = Split(x, torch.zeros(2, 20, 20, dtype=torch.long))
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 2)
        model.train()(train.x)
    data = Split(torch.randn(3, 1, 12, 12), torch.zeros(3, 12, 12, dtype=torch.long))
    found = predict_mc_batchnorm(model.eval(), data, train, (2,), stats_batch=2, crop_size=8,
                                 generator=torch.Generator().manual_seed(4))  # fmt: skip
    g, expected = torch.Generator().manual_seed(4), 0
    for _ in range(2):  # by hand: the conv output's biased moments over two random crops
        crops = next(crop_batches(train, 2, 8, g, augment=False))[0]
        assert crops.shape == (2, 1, 8, 8)
        u = model[0](crops)
        var, mean = torch.var_mean(u, (0, 2, 3), correction=0)
        h = (model[0](data.x) - mean[:, None, None]) / (var[:, None, None] + 1e-5).sqrt()
        h = h * model[1].weight[:, None, None] + model[1].bias[:, None, None]
        expected = expected + torch.softmax(model[2](h), 1)
    assert torch.allclose(found[2], (expected / 2).detach(), atol=1e-5)
    whole = predict_mc_batchnorm(model.eval(), data, train, (2,), stats_batch=2,
                                 generator=torch.Generator().manual_seed(4))[2]  # fmt: skip
    assert (whole - found[2]).abs().max() > 1e-3  # whole images normalize otherwise


def test_mc_batch_norm_leaves_population_norm_to_its_estimates():
    from stochnorm.norms import BatchNorm, PopulationNorm

    torch.manual_seed(9)
    lin = nn.Linear(8, 4)
    model = nn.Sequential(lin, make_norm("population", 4, lin), nn.LogSoftmax(1))
    train = Split(torch.randn(100, 8) * 3, torch.zeros(100, dtype=torch.long))
    model.train()(train.x)
    data = Split(torch.randn(20, 8), torch.zeros(20, dtype=torch.long))
    assert isinstance(model[1], PopulationNorm) and isinstance(model[1], BatchNorm)
    with pytest.raises(ValueError, match="batch normalization"):
        predict_mc_batchnorm(model.eval(), data, train, (2,))
