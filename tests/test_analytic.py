"""Analytic normalization on real data: the first layer's statistics are exact, deeper
layers within the measured tolerance of the independence assumption."""

import subprocess
import sys

import pytest
import torch

from stochnorm import TrainConfig, convert, fold, models
from stochnorm.analytic import MomentPropagation, patch_moments, propagation_of
from stochnorm.cli import main
from stochnorm.diagnostics import analytic_statistics
from stochnorm.train import build_model, load_model_state, make_model, training_inputs


@pytest.mark.parametrize("exact", [True, False])
def test_estimated_vs_true_statistics_at_init(tiny_fashion, exact):
    cfg = TrainConfig(norm="analytic", width=0.25, exact_first_layer=exact)
    model = build_model(cfg, tiny_fashion)
    x = training_inputs(tiny_fashion, cfg)  # the images the input moments came from
    rows = analytic_statistics(model, x)
    first = rows[0]
    if exact:
        assert first["mean_error"] < 1e-3
        assert first["sigma_ratio_min"] > 0.999 and first["sigma_ratio_max"] < 1.001
    else:  # neighbouring pixels are correlated: the independence rule is off by far
        assert first["sigma_ratio_max"] / first["sigma_ratio_min"] > 1.5
        return
    # deeper: the independence assumption, measured on Fashion-MNIST within [0.5, 2]
    for row in rows[1:]:
        assert 0.5 < row["sigma_ratio_min"] and row["sigma_ratio_max"] < 2.0, row
        assert row["mean_error"] < 0.5, row


def test_patch_moments_match_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 2, 6, 6, generator=g)
    conv = torch.nn.Conv2d(2, 3, 3, padding=1)
    mean, cov = patch_moments(x, conv)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    patches = torch.stack(
        [
            padded[n, :, i : i + 3, j : j + 3].flatten()
            for n in range(20)
            for i in range(6)
            for j in range(6)
        ]
    ).double()
    assert torch.allclose(mean.double(), patches.mean(0), atol=1e-6)
    assert torch.allclose(cov.double(), torch.cov(patches.T, correction=0), atol=1e-5)
    # the exact rule reproduces the conv output's pooled moments
    out = conv(x).transpose(0, 1).flatten(1).double()
    from stochnorm.moments import linear_from_patches

    m, v = linear_from_patches(mean, cov, conv.weight, conv.bias)
    assert torch.allclose(m.double(), out.mean(1), atol=1e-5)
    assert torch.allclose(v.double(), out.var(1, unbiased=False), atol=1e-4)


def test_propagation_is_attached_and_validated(tiny_fashion):
    model = build_model(TrainConfig(norm="analytic", width=0.1), tiny_fashion)
    assert isinstance(propagation_of(model), MomentPropagation)
    with pytest.raises(ValueError, match="correlation"):
        MomentPropagation(model, pool_correlation="partial")


def test_an_stats_command(tmp_path, capsys):
    out = tmp_path / "stats"
    args = ["diagnose", "an-stats", "--profile", "demo", "--width", "0.1", "--subset", "0.01"]
    assert main([*args, "--out", str(out), "--no-progress"]) == 0
    text = (out / "an-stats.md").read_text()
    assert "| 1 | 10 | 0.000 | 1.000 |" in text
    assert "| layer1_conv | Conv2d | 1.000 | 0.000 | 1.000 | 0.000 |" in text  # exact first layer
    assert (out / "an-stats.json").exists()


@pytest.mark.parametrize("noise", ["bn-like", "bayes"])
def test_propagation_after_noise_uses_the_layer_output_with_mean_parameters(noise):
    """A model with noise and the noise-free model computing the same eval function get
    the same analytic statistics; the noise module's rule matches its sampled-free output."""
    from stochnorm import AllCNN
    from stochnorm.analytic import attach
    from stochnorm.bayes import add_noise
    from stochnorm.norms import normalizations

    torch.manual_seed(0)
    plain = AllCNN(1, 10, width=0.1, norm="analytic")
    noisy = add_noise(AllCNN(1, 10, width=0.1, norm="analytic"), noise, sigma_s=0.3,
                      sigma_v=0.2, sigma_u=0.2)  # fmt: skip
    noisy.load_state_dict(plain.state_dict(), strict=False)
    for a, b in zip(normalizations(plain), normalizations(noisy), strict=True):
        with torch.no_grad():
            a.weight.uniform_(0.5, 2.0)
            a.bias.uniform_(-1.0, 1.0)
            b.weight.copy_(a.weight)
            # the bayes layer computes (z + b) s: its bias is the plain one divided by s
            b.bias.copy_(a.bias / a.weight if noise == "bayes" else a.bias)
    x = torch.randn(4, 1, 28, 28)
    plain.eval(), noisy.eval()
    for model in (plain, noisy):
        attach(model, 0.2, 1.5, channels=1, size=(28, 28))
    torch.testing.assert_close(noisy(x), plain(x), rtol=1e-5, atol=1e-5)
    for a, b in zip(normalizations(plain), normalizations(noisy), strict=True):
        torch.testing.assert_close(b.mu, a.mu, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b.sigma, a.sigma, rtol=1e-5, atol=1e-6)
    # the rule itself against the layer's eval output for standardized inputs
    layer = normalizations(noisy)[0]
    z = torch.randn(200_000, layer.num_features, 1, 1, dtype=torch.float64)
    y = layer.noise(z, layer.weight.double(), layer.bias.double())
    mean, var = layer.noise.output_moments(layer.weight.double(), layer.bias.double())
    torch.testing.assert_close(y.mean((0, 2, 3)), mean.detach(), atol=0.02, rtol=0)  # ~5 s.e.
    torch.testing.assert_close(y.var((0, 2, 3)), var.detach(), rtol=0.02, atol=0)


def _trained_step(cfg, data):
    """An analytic model of `cfg` after one SGD step on a training batch."""
    model = build_model(cfg, data)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = data.train.x[:32], data.train.y[:32]
    torch.nn.functional.nll_loss(model.train()(x), y).backward()
    opt.step()
    model.train()(x[:2])  # statistics from the stepped weights
    return model.eval()


def test_the_propagation_is_module_state_that_a_state_dict_carries(tiny_fashion, tmp_path):
    cfg = TrainConfig(norm="analytic", width=0.1, noise="bayes")
    model = _trained_step(cfg, tiny_fashion)
    assert "(moment_propagation): MomentPropagation(input channels=1, exact first layer" in str(
        model
    )
    state = model.state_dict()
    assert {"moment_propagation.input_mean", "moment_propagation.patch_cov"} <= set(state)
    x = tiny_fashion.test.x[:8]
    torch.save({"state": state, "x": x, "out": model(x)}, tmp_path / "saved.pt")
    # a fresh interpreter, no data: build the model by name, load the state dict
    script = f"""
import torch
from stochnorm import add_noise, models
saved = torch.load({str(tmp_path / "saved.pt")!r})
model = add_noise(models.build("allcnn", 1, 10, norm="analytic", width=0.1), "bayes")
model.load_state_dict(saved["state"])
model.eval()
assert torch.equal(model(saved["x"]), saved["out"]), "eval outputs differ"
model.train()(saved["x"][:2])  # the loaded input moments propagate as before
model.eval()
assert torch.equal(model(saved["x"]), saved["out"]), "re-propagated outputs differ"
print("same")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.stdout.strip() == "same", done.stderr


def test_an_analytic_model_without_statistics_refuses_to_evaluate_or_fold():
    model = models.build("allcnn", 1, 10, norm="analytic", width=0.1)
    with pytest.raises(RuntimeError, match="no statistics yet"):
        model.eval()(torch.randn(2, 1, 28, 28))
    with pytest.raises(RuntimeError, match="no statistics yet"):
        fold(model)
    model.train()(torch.randn(2, 1, 28, 28))  # one training forward sets them
    assert torch.isfinite(model.eval()(torch.randn(2, 1, 28, 28))).all()


def test_a_checkpoint_from_before_the_moments_were_state_is_loaded_with_them_measured(
    tiny_fashion,
):
    cfg = TrainConfig(norm="analytic", width=0.1)
    model = _trained_step(cfg, tiny_fashion)
    old = {k: v for k, v in model.state_dict().items()
           if not k.startswith("moment_propagation.") and not k.endswith("has_statistics")}  # fmt: skip
    fresh = make_model(cfg, tiny_fashion)
    fresh.load_state_dict(old)  # what torch.load of an old checkpoint gives: no metadata
    x = tiny_fashion.test.x[:8]
    assert torch.equal(fresh.eval()(x), model(x))  # the statistics came with it
    with pytest.raises(RuntimeError, match="does not hold the input moments"):
        fresh.train()(x)
    fresh = make_model(cfg, tiny_fashion)
    load_model_state(fresh, old, cfg, tiny_fashion)  # measured on the data, as train does
    reference = propagation_of(model)
    for name in ("input_mean", "input_var", "patch_mean", "patch_cov"):
        assert torch.equal(getattr(propagation_of(fresh), name), getattr(reference, name))


def test_a_nested_analytic_model_gets_one_propagation_from_the_outer_input():
    from collections import OrderedDict

    from torch import nn

    from stochnorm import convert

    inner = models.build("allcnn", 1, 10, norm="analytic", width=0.1)
    wrapped = nn.Sequential(OrderedDict(net=inner)).train()  # traced in training mode too
    new = convert(wrapped, "analytic", input_mean=0.5, input_var=2.0)
    found = [name for name, m in new.named_modules() if isinstance(m, MomentPropagation)]
    assert found == ["moment_propagation"]
    new.train()(torch.randn(2, 1, 28, 28))
    # the statistics come from the outer input moments (mean 0.5, variance 2), not 0 and 1
    alone = convert(nn.Sequential(OrderedDict(net=inner)), "analytic")
    alone.train()(torch.randn(2, 1, 28, 28))
    assert not torch.allclose(new.net.layer1.norm.mu, alone.net.layer1.norm.mu)


def test_a_new_checkpoint_clears_the_legacy_flag(tiny_fashion):
    cfg = TrainConfig(norm="analytic", width=0.1)
    model = _trained_step(cfg, tiny_fashion)
    state = model.state_dict()
    legacy = {k: v for k, v in state.items() if not k.startswith("moment_propagation.")}
    fresh = make_model(cfg, tiny_fashion)
    fresh.load_state_dict(legacy)
    assert propagation_of(fresh).needs_input_moments
    fresh.load_state_dict(state)
    assert not propagation_of(fresh).needs_input_moments
    fresh.train()(tiny_fashion.train.x[:2])  # propagates again


class _OneChannelPaths(torch.nn.Module):
    """Single-channel paths where the papers' assumptions hold exactly (a 1x1 conv of one
    Gaussian channel stays Gaussian): conv -> SiLU -> nearest upsampling -> conv -> BN, and
    a second branch conv -> sigmoid, concatenated and read by a grouped 1x1 conv -> BN."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(1, 1, 1)
        self.act = torch.nn.SiLU()
        self.up = torch.nn.Upsample(scale_factor=2, mode="nearest")
        self.b = torch.nn.Conv2d(1, 1, 1)
        self.c = torch.nn.Conv2d(1, 1, 1)
        self.mix = torch.nn.Conv2d(2, 2, 1, groups=2)
        self.bn = torch.nn.BatchNorm2d(2)

    def forward(self, x):
        left = self.b(self.up(self.act(self.a(x))))
        right = torch.nn.functional.interpolate(torch.sigmoid(self.c(x)), scale_factor=2)
        return self.bn(self.mix(torch.cat([left, right], dim=1)))


def test_new_moment_rules_give_exact_statistics_where_the_assumptions_hold():
    torch.manual_seed(0)
    model = convert(_OneChannelPaths().double(), "analytic", input_mean=0.3, input_var=2.0)
    from_model = propagation_of(model).propagate(model, 1, (8, 8))
    layer = model.bn
    x = 0.3 + 2.0**0.5 * torch.randn(20_000, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        u = model.mix(torch.cat([model.b(model.up(model.act(model.a(x)))),
                                 torch.nn.functional.interpolate(torch.sigmoid(model.c(x)),
                                                                 scale_factor=2)], 1))  # fmt: skip
    assert from_model[next(n for n in from_model if "bn" in n)][2] == (16, 16)
    torch.testing.assert_close(layer.mu, u.mean((0, 2, 3)), atol=0.01, rtol=0)
    torch.testing.assert_close(layer.sigma, u.std((0, 2, 3)), atol=0.01, rtol=0.01)


def test_gates_transposed_convs_and_activations_train_with_analytic_norm():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(1, 8, 3, padding=1)
            self.bn1 = torch.nn.BatchNorm2d(8)
            self.act = torch.nn.Hardswish()
            self.gate = torch.nn.Conv2d(8, 8, 1)
            self.up = torch.nn.ConvTranspose2d(8, 4, 2, stride=2)
            self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)
            self.bn2 = torch.nn.BatchNorm2d(4)
            self.head = torch.nn.Linear(4, 3)

        def forward(self, x):
            h = self.act(self.bn1(self.stem(x)))
            h = h * torch.sigmoid(self.gate(h.mean((2, 3), keepdim=True)))  # squeeze-excite
            h = torch.nn.functional.gelu(self.bn2(self.conv(self.up(h))))
            return self.head(h.mean((2, 3)))

    torch.manual_seed(1)
    model = convert(Net(), "analytic")
    x = torch.randn(2, 1, 6, 6)
    loss = model.train()(x).logsumexp(1).mean()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    for norm in (model.bn1, model.bn2):
        assert torch.isfinite(norm.mu).all() and (norm.sigma > 0).all()


def test_a_mean_over_everything_has_no_rule_and_says_so():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 1)
            self.bn = torch.nn.BatchNorm2d(2)
            self.head = torch.nn.Linear(1, 2)
            self.bn_head = torch.nn.BatchNorm1d(2)

        def forward(self, x):
            return self.bn_head(self.head(self.bn(self.conv(x)).mean()[None, None]))

    model = convert(Net(), "analytic")
    with pytest.raises(RuntimeError, match="analytic normalization at bn_head: no moment rule"):
        model.train()(torch.randn(2, 1, 4, 4))


class _ResidualOfNeighbours(torch.nn.Module):
    """relu(relu(a(x)) + b(x)) with a reading each pixel and b the one below it (2x1
    kernels, one weight each): for i.i.d. Gaussian pixels the two terms are independent and
    Gaussian, the assumptions of the residual ReLU rule."""

    def __init__(self, branch_weight: float, branch_bias: float):
        super().__init__()
        self.a = torch.nn.Conv2d(1, 1, (2, 1))
        self.b = torch.nn.Conv2d(1, 1, (2, 1))
        with torch.no_grad():
            self.a.weight.copy_(torch.tensor([1.0, 0.0]).view(1, 1, 2, 1))
            self.a.bias.fill_(0.2)
            self.b.weight.copy_(torch.tensor([0.0, branch_weight]).view(1, 1, 2, 1))
            self.b.bias.fill_(branch_bias)

    def forward(self, x):
        return torch.relu(torch.relu(self.a(x)) + self.b(x))


def _propagated_output(model, rectified_residuals: bool):
    propagation = MomentPropagation(model.double(), 0.3, 2.0,
                                    rectified_residuals=rectified_residuals)  # fmt: skip
    states = propagation.propagate(model, 1, (8, 8))
    return states[list(states)[-1]]


@pytest.mark.parametrize("branch", [(0.7, -0.1), (0.2, 0.1)])
def test_the_relu_after_a_residual_addition_against_monte_carlo(branch):
    """Propagated moments of the last ReLU against 20,000 sampled 8x8 images (140,000
    values; sampling error of the sd about 0.3%): within 1.5% with the residual rule, while
    taking the sum as Gaussian is off by more than 4%."""
    model = _ResidualOfNeighbours(*branch)
    torch.manual_seed(0)
    x = 0.3 + 2.0**0.5 * torch.randn(20_000, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        y = model.double()(x)
    mean, var, size = _propagated_output(model, True)
    assert size == (7, 8)
    assert mean.item() == pytest.approx(y.mean().item(), rel=0.015)
    assert var.sqrt().item() == pytest.approx(y.std().item(), rel=0.015)
    _, gaussian_var, _ = _propagated_output(model, False)
    assert abs(gaussian_var.sqrt().item() / y.std().item() - 1) > 0.04


def test_a_vanishing_residual_branch_leaves_the_rectified_value_alone():
    """A branch of scale 0 (timm's zero-initialized last BN of a block): the ReLU after
    the addition is the identity on relu(a(x)), and the propagated moments are relu(a)'s."""
    from stochnorm import moments

    model = _ResidualOfNeighbours(0.0, 0.0)
    mean, var, _ = _propagated_output(model, True)
    skip = moments.relu(torch.tensor([0.5], dtype=torch.float64),
                        torch.tensor([2.0], dtype=torch.float64))  # fmt: skip
    torch.testing.assert_close(mean, skip[0], rtol=5e-4, atol=0)
    torch.testing.assert_close(var, skip[1], rtol=5e-4, atol=0)


def test_the_residual_relus_of_a_torchvision_style_resnet_are_found():
    """Every block's last ReLU (after `out += identity`) reads the previous block's ReLU
    output (or the stem's max-pooled one) plus the branch, except where the identity is a
    downsampling conv + BN (Gaussian): those keep the Gaussian rule."""
    from .resnet import ResNet

    model = convert(ResNet(width=4), "analytic", rectified_residuals=True)
    propagation = propagation_of(model)
    assert propagation.rectified_residuals
    assert not propagation_of(convert(ResNet(width=4), "analytic")).rectified_residuals
    residual = propagation._residual_relus
    plan = propagation.plan
    skips = sorted({plan[skip].target for skip, _ in residual.values()})
    assert len(residual) == sum(b.downsample is None for b in model.modules()
                                if type(b).__name__ == "BasicBlock")  # fmt: skip
    assert "maxpool" in skips
    assert all(plan[branch].target.endswith("bn2") for _, branch in residual.values())


class _PooledStem(torch.nn.Module):
    """A resnet's stem in small: a strided conv reading the input, a BN, a ReLU (or none),
    a 3x3 max-pool of stride 2 and a normalized layer after it."""

    def __init__(self, relu: bool = True):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 5, stride=2, padding=2, bias=False)
        self.bn = torch.nn.BatchNorm2d(4)
        self.act = torch.nn.ReLU() if relu else torch.nn.Identity()
        self.pool = torch.nn.MaxPool2d(3, stride=2, padding=1)
        self.head = torch.nn.Sequential(torch.nn.Conv2d(4, 2, 1), torch.nn.BatchNorm2d(2))
        with torch.no_grad():
            self.bn.bias.copy_(torch.tensor([0.5, 0.0, -0.5, 1.0]))

    def forward(self, x):
        return self.head(self.pool(self.act(self.bn(self.conv(x)))))


def _smooth_field(count: int, size: int) -> torch.Tensor:
    """Gaussian images whose neighbouring pixels are correlated (white noise averaged over
    5x5): every conv output on them is exactly Gaussian."""
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(count, 1, size + 4, size + 4, generator=g)
    return torch.nn.functional.avg_pool2d(noise, 5, stride=1) * 5


def _measured_pool(model, x):
    propagation = propagation_of(model)
    with torch.no_grad():
        for step, value in propagation.execute(model.eval(), x):
            if step.name == "pool":
                return value.mean((0, 2, 3)), value.var((0, 2, 3), unbiased=False)


@pytest.mark.parametrize("relu", [True, False])
def test_a_max_pool_after_the_exact_first_layer_against_the_truth(relu):
    """On Gaussian images (3,000 of 15x15: odd, so border windows of 4 and 6 values
    appear) the max-pool's propagated moments, whose correlation comes from the patches'
    cross-covariances, against the max-pool output measured: the mean within 0.1 sd and the
    sd within 12% (measured: 0.04-0.05 sd, up to 9%). What remains: the window's
    correlations replaced by their mean (`moments.exchangeable_max`), the max taken as
    Gaussian before the ReLU (the 9%: a channel whose ReLU cuts near the max's mean), and
    the conv output's variance, lower at the border, pooled over positions;
    the papers' rule (the input's moments) is off by more than
    0.25 sd in the mean and 20% in the sd."""
    torch.manual_seed(0)
    x = _smooth_field(3000, 15)
    model = convert(_PooledStem(relu), "analytic", inputs=x)
    propagation = propagation_of(model)
    assert propagation.patch_cross is not None and len(propagation.patch_cross) == 12
    true_mean, true_var = _measured_pool(model, x)
    with torch.no_grad():
        mean, var, size = propagation.propagate(model, 1, (15, 15))["pool"]
        assert size == (4, 4)
        assert ((mean - true_mean) / true_var.sqrt()).abs().max() < 0.1
        torch.testing.assert_close(var.sqrt(), true_var.sqrt(), rtol=0.12, atol=0)
        propagation.patch_cross = None  # the papers' rule
        papers_mean, papers_var, _ = propagation.propagate(model, 1, (15, 15))["pool"]
    assert ((papers_mean - true_mean) / true_var.sqrt()).abs().max() > 0.25
    assert (papers_var.sqrt() / true_var.sqrt() - 1).abs().max() > 0.2


def test_patch_cross_covariances_give_the_conv_outputs_covariance_between_positions():
    """w C_d w^T is the covariance, about the pooled mean, of a bias-free conv's outputs at
    positions d apart (over all pairs inside the map)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 2, 9, 8, generator=g)
    conv = torch.nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=False)
    offsets = [(0, 1), (1, -1), (2, 0), (1, 2)]
    _, _, cross = patch_moments(x, conv, offsets)
    with torch.no_grad():
        y = conv(x).double()
    y = y - y.mean((0, 2, 3), keepdim=True)
    w = conv.weight.flatten(1).double()
    rows, columns = y.shape[2:]
    for (dy, dx), c in zip(offsets, cross.double(), strict=True):
        pairs = [(y[:, :, i, j] * y[:, :, i + dy, j + dx]) for i in range(rows - dy)
                 for j in range(columns) if 0 <= j + dx < columns]  # fmt: skip
        direct = torch.stack(pairs).mean((0, 1))
        torch.testing.assert_close(((w @ c) * w).sum(1), direct, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size", [(15, 15), (8, 11), (2, 3)])
def test_max_pool_window_types_count_the_values_inside_the_map(size):
    """The shares of the border window types give the mean number of values a window holds,
    as counting with an average pool over a map of ones does."""
    from stochnorm.plan import window_types

    pool = torch.nn.MaxPool2d(3, stride=2, padding=1)
    types, shares = window_types(size, pool)
    assert sum(shares) == pytest.approx(1.0)
    counted = torch.nn.functional.avg_pool2d(torch.ones(1, 1, *size), 3, 2, 1,
                                             count_include_pad=False, divisor_override=1)  # fmt: skip
    assert sum(s * len(t) for s, t in zip(shares, types, strict=True)) == pytest.approx(
        counted.mean().item()
    )


def test_the_max_pool_rule_needs_the_cross_covariances_and_travels_in_the_state_dict():
    """Saved and loaded with the model; a state dict without them (from before the rule)
    loads and the papers' rule applies; cross-covariances of the wrong offsets are refused;
    a max-pool after an activation that does not commute with the max has no such rule."""
    torch.manual_seed(0)
    x = _smooth_field(200, 15)
    model = convert(_PooledStem(), "analytic", inputs=x)
    state = model.state_dict()
    assert state["moment_propagation.patch_cross"].shape == (12, 25, 25)
    other = convert(_PooledStem(), "analytic", inputs=_smooth_field(50, 15) * 2)
    other.load_state_dict(state)
    torch.testing.assert_close(propagation_of(other).patch_cross, propagation_of(model).patch_cross)
    del state["moment_propagation.patch_cross"]
    other.load_state_dict(state)
    propagation = propagation_of(other)
    assert propagation.patch_cross is None
    with torch.no_grad():
        states = propagation.propagate(other, 1, (15, 15))
    torch.testing.assert_close(states["pool"][0], states["act"][0])
    with pytest.raises(ValueError, match="12"):
        propagation.set_input_moments(0.0, 1.0, patch_moments(x, model.conv, [(0, 1)]))
    assert propagation_of(convert(_SiLUStem(), "analytic", inputs=x)).patch_cross is None


class _SiLUStem(_PooledStem):
    def forward(self, x):
        return self.head(self.pool(torch.nn.functional.silu(self.bn(self.conv(x)))))


@pytest.mark.parametrize("padding", [1, "same", "valid"])
def test_border_aware_convs_count_zero_padding_in_the_propagation(padding):
    """With the option the propagation's conv steps are `moments.conv_with_padding` on the
    taps inside the map (padding="same" read as its zero padding), without it `linear`;
    the two agree where nothing is padded."""
    from stochnorm import moments
    from stochnorm.plan import taps_inside

    model = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Conv2d(2, 3, 3, padding=padding))
    conv, found = model[1], {}
    for aware in (True, False):
        propagation = MomentPropagation(model, torch.tensor([0.5, -1.0]), torch.tensor([1.0, 2.0]),
                                        border_aware_convs=aware)  # fmt: skip
        with torch.no_grad():
            found[aware] = propagation.propagate(model, 2, (5, 6))[list(propagation.plan)[-1].name]
    relu = moments.relu(torch.tensor([0.5, -1.0]), torch.tensor([1.0, 2.0]))
    with torch.no_grad():
        inside, pairs = (torch.tensor(t) for t in taps_inside((5, 6), conv))
        expected = moments.conv_with_padding(*relu, conv.weight, inside, pairs, conv.bias)
        plain = moments.linear(*relu, conv.weight, conv.bias)
    torch.testing.assert_close(found[True][:2], plain if padding == "valid" else expected)
    torch.testing.assert_close(found[False][:2], plain)
    assert found[True][2] == ((3, 4) if padding == "valid" else (5, 6))
    if padding != "valid":
        assert not torch.allclose(found[True][1], found[False][1], rtol=0.05)
