"""The measurements behind luo-population-norm, analytic-statistics and
analytic-batch-independence against independent computations (closed forms, finite
differences), and their verdict logic on constructed numbers."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from stochnorm.diagnostics import batch_dependence, scale_step_sizes
from stochnorm.experiments import analytic_paper, luo
from stochnorm.experiments.verdicts import FAILS, HOLDS, INCONCLUSIVE
from stochnorm.models import AllCNN
from stochnorm.norms import BatchNorm, PopulationNorm, WeightNorm

# --- batch_dependence ----------------------------------------------------------------------


def test_batch_dependence_of_batch_norm_matches_the_closed_form():
    """Probe p among k - 1 identical companions c (constant over space): BN's batch mean is
    (p + (k-1) c) / k and its biased variance (k-1) d^2 / k^2, d = p - c, so the probe's
    output is d (k-1)/k / sqrt((k-1) d^2 / k^2 + eps), whatever companions are drawn."""
    torch.manual_seed(0)
    bn = BatchNorm(3).double()
    values = torch.randn(4, 3, dtype=torch.float64)
    probes = values[:, :, None, None].expand(4, 3, 2, 2)
    c = torch.randn(3, dtype=torch.float64)
    pool = c[None, :, None, None].expand(10, 3, 2, 2).clone()

    def output(p, k):
        d = p - c
        return d * (k - 1) / k / torch.sqrt((k - 1) * d**2 / k**2 + bn.eps)

    sizes = (1, 4, 16)
    rows = batch_dependence(bn, probes, pool, sizes, generator=torch.Generator().manual_seed(1))
    scale = max(output(p, 16).abs().max().item() for p in values)
    for row, k in zip(rows, sizes, strict=True):
        expected = max((output(p, k) - output(p, 16)).abs().max().item() for p in values)
        assert row["batch_size"] == k
        assert row["max_abs_diff"] == pytest.approx(expected, rel=1e-9, abs=1e-12)
        assert row["max_rel_diff"] == pytest.approx(expected / scale, rel=1e-9, abs=1e-12)
    assert rows[0]["max_abs_diff"] > 1.0 and rows[-1]["max_abs_diff"] == 0.0
    assert bn.num_batches_tracked.item() == 0  # buffers restored


def _small_net(norm_cls):
    torch.manual_seed(0)
    conv1, conv2 = nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.Conv2d(4, 5, 3, bias=False)
    return nn.Sequential(
        conv1, norm_cls(4).bind(conv1), nn.LeakyReLU(0.01), conv2, norm_cls(5).bind(conv2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LogSoftmax(dim=1),
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["weight", "population", "analytic"])
def test_batch_independent_norms_stay_at_round_off(kind):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 1, 16, 16, generator=g)
    if kind == "analytic":
        torch.manual_seed(0)
        model = AllCNN(1, 10, width=0.1, norm="analytic")
    else:
        model = _small_net(WeightNorm if kind == "weight" else PopulationNorm)
    if kind == "population":
        model.train()(x[:16])  # population statistics set by one training batch
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = batch_dependence(model, x[:3], x[3:], (1, 8, 64), generator=g)
    assert all(r["max_rel_diff"] < 1e-5 for r in rows), rows
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the same network with batch norm depends on its batch far above round-off
    bn_rows = batch_dependence(_small_net(BatchNorm), x[:3], x[3:], (1, 8, 64), generator=g)
    assert min(r["max_rel_diff"] for r in bn_rows) > 1e-3


# --- scale_step_sizes ----------------------------------------------------------------------


def _bn_mlp():
    torch.manual_seed(0)
    lin1, lin2 = nn.Linear(5, 4, bias=False), nn.Linear(4, 3, bias=False)
    model = nn.Sequential(lin1, BatchNorm(4).bind(lin1), nn.Tanh(), lin2, BatchNorm(3).bind(lin2),
                          nn.LogSoftmax(dim=1)).double()  # fmt: skip
    with torch.no_grad():  # scales away from 1, so that the penalty's gradient is not uniform
        model[1].weight.uniform_(0.5, 1.5)
        model[4].weight.uniform_(0.5, 1.5)
    return model


def _finite_difference_gradient(model, scale, x, y, h=1e-6):
    """Central differences of the train-mode NLL with respect to each entry of `scale`."""
    grad = torch.zeros_like(scale)
    with torch.no_grad():
        for i in range(len(scale)):
            values = []
            for step in (h, -h):
                scale[i] += step
                values.append(F.nll_loss(model(x), y).item())
                scale[i] -= step
            grad[i] = (values[0] - values[1]) / (2 * h)
    return grad


@pytest.mark.parametrize("gamma_decay", [0.0, 0.05])
def test_scale_step_sizes_match_finite_differences(gamma_decay):
    model = _bn_mlp()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(16, 5, generator=g, dtype=torch.float64)
    y = torch.randint(3, (16,), generator=g)
    lr = 0.1
    rows = scale_step_sizes(model, [(x, y)], lr, gamma_decay=gamma_decay)
    for row, layer in zip(rows, (model[1], model[4]), strict=True):
        s = layer.weight
        # the penalty gamma_decay * sum s^2 adds 2 gamma_decay s (closed form)
        grad = _finite_difference_gradient(model, s, x, y) + 2 * gamma_decay * s.detach()
        expected = (grad.norm() / s.detach().norm()).item()
        assert row["relative_gradient"] == pytest.approx(expected, rel=1e-6)
        assert row["effective_lr"] == pytest.approx(lr * expected, rel=1e-6)
        assert row["scale_rms"] == pytest.approx(s.detach().pow(2).mean().sqrt().item())
        assert row["relative_gradient_se"] == 0.0  # one batch


def test_scale_step_sizes_average_over_batches_and_restore_buffers():
    model = _bn_mlp()
    g = torch.Generator().manual_seed(4)
    batches = [(torch.randn(8, 5, generator=g, dtype=torch.float64),
                torch.randint(3, (8,), generator=g)) for _ in range(3)]  # fmt: skip
    running = model[1].running_mean.clone()
    singles = [scale_step_sizes(model, [b], 1.0)[0]["relative_gradient"] for b in batches]
    rows = scale_step_sizes(model, batches, 1.0)
    mean = sum(singles) / 3
    se = math.sqrt(sum((v - mean) ** 2 for v in singles) / 2 / 3)
    assert rows[0]["relative_gradient"] == pytest.approx(mean, rel=1e-9)
    assert rows[0]["relative_gradient_se"] == pytest.approx(se, rel=1e-6)
    assert torch.equal(model[1].running_mean, running)
    assert all(p.grad is None for p in model.parameters())  # nothing left behind


# --- verdicts on constructed numbers -------------------------------------------------------


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
