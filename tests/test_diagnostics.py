"""BN noise measurements against the model of section 3.1 where its assumptions hold."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from stochnorm.data import Split, Splits
from stochnorm.diagnostics import (
    batch_dependence,
    bn_noise,
    layer_signal,
    scale_step_sizes,
    sgd_step_,
    summarize_bn_noise,
)
from stochnorm.models import AllCNN
from stochnorm.norms import BatchNorm, PopulationNorm, WeightNorm


def _iid_gaussian_bn(spatial: int = 4):
    """A BN layer whose inputs are i.i.d. N(a, w^2) over samples and positions, with its
    population statistics set to the true ones."""
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 6, 1)
    bn = BatchNorm(6).bind(conv)
    with torch.no_grad():
        bn.running_mean.copy_(conv.bias)
        bn.running_var.copy_(conv.weight.flatten().pow(2))
    x = torch.randn(5000, 1, spatial, spatial)
    data = Splits("gauss", Split(x, torch.zeros(5000, dtype=torch.long)), Split(x[:1], x[:1, 0, 0, 0].long()),
                  Split(x[:1], x[:1, 0, 0, 0].long()), (0.0,), (1.0,), tuple("ab"), "memory")  # fmt: skip
    return nn.Sequential(conv, bn), data


def test_bn_noise_follows_the_model_for_iid_gaussian_inputs():
    model, data = _iid_gaussian_bn(spatial=2)
    result = bn_noise(model, data, (4, 8, 16, 32, 64), batches=60, augment=False)
    summary = summarize_bn_noise(result, batch_size=16)
    row = summary["layers"][0]
    n = 16 * 4
    # V ~ N(0, 1/n); U = sqrt(n / chi2(n-1)) has std ~ 1/sqrt(2n)
    assert row["sigma_v"] == pytest.approx(1 / math.sqrt(n), rel=0.15)
    assert row["sigma_u"] == pytest.approx(1 / math.sqrt(2 * n), rel=0.2)
    # 60 batches x 6 channels = 360 draws of n S^2 / sigma^2: KS within the 1% critical value
    assert row["chi2_ks"] < 1.63 / math.sqrt(360)
    # the variance of a probe's BN output falls as 1/k
    assert row["var_vs_k_slope"] == pytest.approx(-1.0, abs=0.15)
    # running statistics are restored
    assert torch.allclose(model[1].running_var, model[0].weight.flatten().pow(2))


def _conv_with_norm(in_channels: int, weight: float | None = None):
    from torch import nn

    from stochnorm.norms import make_norm

    conv = nn.Conv2d(in_channels, 2, 3, bias=False)
    if weight is not None:
        nn.init.constant_(conv.weight, weight)
    return nn.Sequential(conv, make_norm("weight", 2, conv))


def test_independence_error_closed_form_for_fully_correlated_inputs():
    """Every pixel of every channel equal to one N(0, 1) number per image and all weights 1:
    Sigma is the all-ones matrix times var(z), so with C channels and K kernel offsets the
    output variance is (C K)^2 var(z), the diagonal keeps C K of it, same-channel pairs
    C K^2 and same-offset pairs C^2 K: ratios 1/sqrt(C K), 1/sqrt(C), 1/sqrt(K)."""
    from stochnorm.diagnostics import independence_error

    torch.manual_seed(0)
    x = torch.randn(400, 1, 1, 1).expand(400, 3, 6, 6).contiguous()
    (row,) = independence_error(_conv_with_norm(3, weight=1.0), x)
    assert row["independent"] == pytest.approx(1 / math.sqrt(27), rel=1e-9)
    assert row["spatial"] == pytest.approx(1 / math.sqrt(3), rel=1e-9)
    assert row["channel"] == pytest.approx(1 / math.sqrt(9), rel=1e-9)
    assert row["separable"] == pytest.approx(1.0, rel=1e-9)  # C0 all ones, r = 1
    # all of it is between images; the covariances of 400 image means (n - 1) and of 6,400
    # patches (n - 1) are normalized differently: 0.1% apart in the sd
    assert row["between"] == pytest.approx(1.0, rel=2e-3)


@pytest.mark.parametrize("groups", [2, 4])
def test_independence_error_of_grouped_convs_in_closed_form(groups):
    """As above for a grouped conv (4 channels, all weights 1): each output reads C / g
    channels, so the ratios are those of C / g channels alone; depthwise (g = 4): the
    independence and channel ratios 1/sqrt(K), spatial 1 (every pair in one channel)."""
    from stochnorm.diagnostics import independence_error
    from stochnorm.norms import make_norm

    conv = nn.Conv2d(4, 4, 3, groups=groups, bias=False)
    nn.init.constant_(conv.weight, 1.0)
    torch.manual_seed(0)
    x = torch.randn(400, 1, 1, 1).expand(400, 4, 6, 6).contiguous()
    (row,) = independence_error(nn.Sequential(conv, make_norm("weight", 4, conv)), x)
    c = 4 // groups
    assert row["independent"] == pytest.approx(1 / math.sqrt(c * 9), rel=1e-9)
    assert row["spatial"] == pytest.approx(1 / math.sqrt(c), rel=1e-9)
    assert row["channel"] == pytest.approx(1 / 3, rel=1e-9)
    assert row["separable"] == pytest.approx(1.0, rel=1e-9)
    assert row["between"] == pytest.approx(1.0, rel=2e-3)  # as in the test above


def test_separable_model_is_exact_for_a_separable_field():
    """A field whose channels mix one smoothed i.i.d. field (x = A z, z a 3x3 box average of
    i.i.d. noise) has Cov(x_c(p), x_d(q)) = (A A^T)[c, d] k(p - q): separable, so the
    separable model is within sampling error (2%) of the truth, while the diagonal, and each
    kind of correlation alone, miss much of it."""
    from stochnorm.diagnostics import independence_error

    torch.manual_seed(2)
    z = F.avg_pool2d(torch.randn(3000, 3, 8, 8), 3, stride=1)
    mixing = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.5, 0.5, 0.7]])
    x = torch.einsum("cd,ndhw->nchw", mixing, z)
    conv = _conv_with_norm(3, weight=1.0)
    (row,) = independence_error(conv, x)
    assert row["separable"] == pytest.approx(1.0, abs=0.02)
    for key in ("independent", "spatial", "channel"):
        assert row[key] < 0.8


def test_between_image_model_is_exact_for_image_offsets_plus_noise():
    """x = A o + e: one N(0, 1) offset per image and channel, mixed across channels by A,
    plus i.i.d. pixel noise; Sigma is (A A^T) on every pair of offsets plus the noise on the
    diagonal, the between-image model itself (within 2%), which the separable model, with
    one spatial correlation shared by channels of different noise, need not be."""
    from stochnorm.diagnostics import independence_error

    torch.manual_seed(3)
    mixing = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.5, 0.5, 0.7]])
    offsets = torch.einsum("cd,nd->nc", mixing, torch.randn(3000, 3))
    x = (
        offsets[:, :, None, None]
        + torch.randn(3000, 3, 6, 6) * torch.tensor([0.3, 1.0, 2.0])[:, None, None]
    )
    (row,) = independence_error(_conv_with_norm(3, weight=1.0), x)
    assert row["between"] == pytest.approx(1.0, abs=0.02)
    assert row["independent"] < 0.8


def test_independence_error_is_one_for_independent_inputs():
    """i.i.d. pixels: Sigma is the identity up to sampling error; with 2000 images of 6x6
    (32,000 patches) the ratios are within 2% of 1 (their sampling error is about 0.5%)."""
    from stochnorm.diagnostics import independence_error

    torch.manual_seed(1)
    (row,) = independence_error(_conv_with_norm(3), torch.randn(2000, 3, 6, 6))
    for key in ("independent", "spatial", "channel", "separable", "between"):
        assert row[key] == pytest.approx(1.0, abs=0.02)


def _plain_net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3), nn.LogSoftmax(1))
    model = model.double()
    x = torch.randn(16, 5, dtype=torch.float64)
    y = torch.randint(3, (16,))
    return model, x, y


def _loss(model, x, y):
    return nn.functional.nll_loss(model(x), y)


def test_layer_signal_matches_a_hand_computation():
    model, x, y = _plain_net()
    result = layer_signal(model, x, y)
    first, second = result["layers"]
    hidden = torch.tanh(model[0](x))
    assert [r["name"] for r in result["layers"]] == ["0", "2"]
    assert math.isclose(first["input_rms"], x.pow(2).mean().sqrt().item(), rel_tol=1e-12)
    assert math.isclose(first["input_mean_abs"], x.abs().mean().item(), rel_tol=1e-12)
    assert math.isclose(first["input_std"], x.std(correction=0).item(), rel_tol=1e-12)
    assert math.isclose(first["output_rms"], model[0](x).pow(2).mean().sqrt().item(),
                        rel_tol=1e-12)  # fmt: skip
    assert math.isclose(second["input_rms"], hidden.pow(2).mean().sqrt().item(), rel_tol=1e-12)
    assert math.isclose(result["loss"], _loss(model, x, y).item(), rel_tol=1e-12)
    for row, layer in zip(result["layers"], (model[0], model[2]), strict=True):
        assert math.isclose(row["weight_norm"], layer.weight.norm().item(), rel_tol=1e-12)
        assert math.isclose(row["relative_grad"], row["grad_norm"] / row["weight_norm"])


def test_layer_signal_gradients_match_finite_differences():
    """||dL/dW|| per layer against central differences (h = 1e-6, float64): relative
    error below 1e-6."""
    model, x, y = _plain_net()
    result = layer_signal(model, x, y)
    h = 1e-6
    for row, layer in zip(result["layers"], (model[0], model[2]), strict=True):
        grad = torch.zeros_like(layer.weight)
        with torch.no_grad():
            for idx in torch.cartesian_prod(*(torch.arange(s) for s in layer.weight.shape)):
                idx = tuple(idx.tolist())
                keep = layer.weight[idx].item()
                layer.weight[idx] = keep + h
                up = _loss(model, x, y).item()
                layer.weight[idx] = keep - h
                down = _loss(model, x, y).item()
                layer.weight[idx] = keep
                grad[idx] = (up - down) / (2 * h)
        assert math.isclose(row["grad_norm"], grad.norm().item(), rel_tol=1e-6)


def test_sgd_step_moves_along_the_gradient_and_lowers_the_loss():
    model, x, y = _plain_net()
    before = layer_signal(model, x, y)
    params = [p.detach().clone() for p in model.parameters()]
    grads = [p.grad.clone() for p in model.parameters()]
    lr = 1e-3
    sgd_step_(model, lr)
    for p, p0, g in zip(model.parameters(), params, grads, strict=True):
        torch.testing.assert_close(p.detach(), p0 - lr * g, rtol=0, atol=1e-15)
    # first order: the loss falls by lr * ||g||^2 (up to O(lr^2))
    drop = before["loss"] - _loss(model, x, y).item()
    expected = lr * sum(g.pow(2).sum().item() for g in grads)
    assert drop > 0 and math.isclose(drop, expected, rel_tol=0.05)


def test_layer_signal_sees_every_conv_of_all_cnn(tiny_fashion):
    from stochnorm.config import TrainConfig
    from stochnorm.train import build_model

    cfg = TrainConfig.from_profile("demo", width=0.1, norm="none")
    model = build_model(cfg, tiny_fashion).train()
    x, y = tiny_fashion.train.x[:64], tiny_fashion.train.y[:64]
    result = layer_signal(model, x, y)
    assert len(result["layers"]) == 9
    assert all(r["grad_norm"] > 0 for r in result["layers"])
    # data-dependent init: every conv output is standardized on its 128 images, so the
    # signal keeps its scale with depth at initialization (here on other images: 30%)
    rms = [r["output_rms"] for r in result["layers"]]
    assert all(0.7 < v < 1.3 for v in rms), rms


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


def _normed_net(norm_cls):
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
        model = _normed_net(WeightNorm if kind == "weight" else PopulationNorm)
    if kind == "population":
        model.train()(x[:16])  # population statistics set by one training batch
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = batch_dependence(model, x[:3], x[3:], (1, 8, 64), generator=g)
    assert all(r["max_rel_diff"] < 1e-5 for r in rows), rows
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the same network with batch norm depends on its batch far above round-off
    bn_rows = batch_dependence(_normed_net(BatchNorm), x[:3], x[3:], (1, 8, 64), generator=g)
    assert min(r["max_rel_diff"] for r in bn_rows) > 1e-3


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


def _analytic_pool_net(x):
    """conv -> BN -> ReLU -> max-pool -> conv -> BN -> ReLU -> global pool -> linear, converted
    to analytic norm with its moments from `x` (the first conv exact from patch moments)."""
    from stochnorm import convert

    torch.manual_seed(0)
    source = nn.Sequential(
        nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(4, 2),
    )  # fmt: skip
    return convert(source, "analytic", inputs=x)


def test_rule_errors_are_one_where_the_assumptions_hold_and_measured_where_not():
    """i.i.d. Gaussian pixels and no padding: the first conv's output is exactly Gaussian,
    so its rule (exact from patches) and the ReLU's closed form after it are right up to
    sampling error (2000 images x 100 positions: well under 1%; 2% allowed). The max-pool
    after them has the correlated-max rule, off only by Clark's approximation and the max
    taken as Gaussian before the ReLU (measured: sd 0.96 of the truth, mean 0.01 sd off;
    5% allowed); the papers' rule (the input's moments,
    without the patches' cross-covariances) is wrong by exactly the ratio of the input's to
    the output's sd, measured here independently with hooks."""
    from stochnorm.analytic import propagation_of
    from stochnorm.diagnostics import rule_error_summary, rule_errors

    torch.manual_seed(2)
    x = torch.randn(2000, 3, 12, 12)
    model = _analytic_pool_net(x).train()
    seen = {}
    pool = model[3]
    handle = pool.register_forward_hook(lambda m, i, o: seen.update(i=i[0], o=o))
    rows = rule_errors(model, x, batch_size=2000)
    assert model.training  # the mode is restored
    by_step = {r["operation"]: r for r in rows}  # one step of each kind here, bar the convs
    assert [r["operation"] for r in rows] == [
        "Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "AdaptiveAvgPool2d", "Linear",
    ]  # normalizations and flatten (exact) are left out  # fmt: skip
    first = rows[0]
    assert first["own_sigma_ratio"] == pytest.approx(1.0, abs=0.02)
    assert first["own_mean_error"] < 0.02
    assert by_step["ReLU"]["own_sigma_ratio"] == pytest.approx(1.0, abs=0.02)
    assert by_step["ReLU"]["own_mean_error"] < 0.02
    assert by_step["MaxPool2d"]["own_sigma_ratio"] == pytest.approx(1.0, abs=0.05)
    assert by_step["MaxPool2d"]["own_mean_error"] < 0.05
    propagation_of(model).patch_cross = None  # the papers' max-pool rule
    papers = {r["operation"]: r for r in rule_errors(model, x, batch_size=2000)}
    handle.remove()
    dims = (0, 2, 3)
    expected = (seen["i"].double().std(dims) / seen["o"].double().std(dims)).median().item()
    assert papers["MaxPool2d"]["own_sigma_ratio"] == pytest.approx(expected, rel=1e-4)
    assert expected < 0.95  # the max of 4 neighbours spreads less than one of them
    summary = rule_error_summary(rows)
    assert summary["Conv2d"]["steps"] == 2
    assert summary["Conv2d"]["sigma_ratio_min"] <= first["own_sigma_ratio"]


def test_rule_errors_need_an_analytic_model():
    from stochnorm.diagnostics import rule_errors

    with pytest.raises(ValueError, match="no moment propagation"):
        rule_errors(_conv_with_norm(3), torch.randn(4, 3, 6, 6))
