"""convert() and fold() on All-CNN-C and on a torchvision-style ResNet."""

import copy

import pytest
import torch
from torch import nn

from stochnorm import AllCNN
from stochnorm.convert import convert, fold
from stochnorm.norms import (
    AnalyticNorm,
    BatchNorm,
    PopulationNorm,
    WeightNorm,
    normalizations,
    output_rows,
    set_output_rows,
)
from stochnorm.projection import project_, scale_invariant_weights

from .resnet import ResNet

NORMS = {
    "batch": BatchNorm,
    "weight": WeightNorm,
    "analytic": AnalyticNorm,
    "population": PopulationNorm,
}


def _trained_bn_resnet():
    torch.manual_seed(0)
    model = ResNet()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
    model.train()
    for _ in range(3):
        model(torch.randn(16, 3, 16, 16))  # running statistics away from their defaults
    return model


@pytest.mark.parametrize("norm", list(NORMS))
def test_convert_resnet_replaces_every_batch_norm(norm):
    model = _trained_bn_resnet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    new = convert(model, norm)
    # the input model is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in new.modules())
    layers = normalizations(new)
    assert len(layers) == 10 and all(type(n) is NORMS[norm] for n in layers)
    # each is bound to the conv in front of it, and the affine was copied
    assert new.bn1.layer is new.conv1 and new.layer2[0].bn1.layer is new.layer2[0].conv1
    assert new.layer2[0].downsample[1].layer is new.layer2[0].downsample[0]
    assert torch.equal(new.layer1[1].bn2.weight, model.layer1[1].bn2.weight)
    assert torch.equal(new.layer1[1].bn2.bias, model.layer1[1].bn2.bias)
    out = new(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_convert_keeps_requires_grad_and_running_statistics():
    model = _trained_bn_resnet()
    model.bn1.weight.requires_grad_(False)
    new = convert(model, "batch")
    assert not new.bn1.weight.requires_grad
    assert torch.equal(new.bn1.running_mean, model.bn1.running_mean)
    model.eval(), new.eval()
    x = torch.randn(3, 3, 16, 16)
    assert torch.allclose(new(x), model(x), atol=1e-5)  # stochnorm's BN = torch's BN


def test_analytic_resnet_trains_at_batch_size_one():
    new = convert(_trained_bn_resnet(), "analytic").train()
    optimizer = torch.optim.SGD(new.parameters(), lr=0.01)
    x, y = torch.randn(1, 3, 16, 16), torch.tensor([3])
    losses = []
    for _ in range(3):
        loss = nn.functional.cross_entropy(new(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    # gradients flow through the propagated statistics into earlier layers' weights
    assert new.conv1.weight.grad is not None and new.conv1.weight.grad.abs().sum() > 0


def test_population_norm_continues_from_the_converted_batch_norms_estimates():
    """The source's estimates and their age carry over: the first training batch of the
    converted population norm (one image) is normalized with BN's running statistics, as
    torch's BN in eval mode does, instead of restarting the estimates from that image."""
    model = _trained_bn_resnet()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, 16, 16))
    new = convert(model, "population").train()
    assert torch.equal(new.bn1.num_batches_tracked, model.bn1.num_batches_tracked)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        got = new(x)
        expected = model.eval()(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_convert_measures_analytic_input_moments_from_sample_inputs():
    """With sample inputs, the first normalized layer's statistics are exact: they equal the
    mean and std of the conv's outputs measured on those inputs (ResNet: conv1 -> bn1)."""
    torch.manual_seed(2)
    smooth = nn.functional.avg_pool2d(torch.randn(64, 3, 18, 18), 3, stride=1)  # correlated
    x = 3.0 + 2.0 * smooth / smooth.std()
    source = _trained_bn_resnet()
    with torch.no_grad():
        u = source.conv1(x)
    var, mean = torch.var_mean(u, (0, 2, 3), correction=0)
    for inputs, close in ((x, True), (None, False)):
        new = convert(source, "analytic", inputs=inputs).eval()
        if inputs is None:
            new.train()(x[:2])  # statistics from the default moments (standardized inputs)
            new.eval()
        layer = new.bn1
        matches = torch.allclose(layer.mu, mean, rtol=1e-4, atol=1e-4) and torch.allclose(
            layer.sigma, var.sqrt(), rtol=1e-4
        )
        assert matches is close


@pytest.mark.parametrize("noise", ["bayes", "bn-like"])
def test_fold_of_a_model_with_noise_equals_its_eval_mode(noise):
    """The noise belongs to its normalization: folding drops both, leaving the eval model's
    deterministic function (noise off in eval mode)."""
    model = convert(_trained_bn_resnet(), "analytic", noise).train()
    x = torch.randn(4, 3, 16, 16)
    model(x)
    model.eval()
    with torch.no_grad():
        expected = model(x)
        folded = fold(model)
        got = folded(x)
    assert not normalizations(folded)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("norm", list(NORMS))
def test_fold_equals_the_eval_model(norm):
    torch.manual_seed(1)
    model = convert(_trained_bn_resnet(), norm) if norm != "batch" else _trained_bn_resnet()
    model.train()
    model(torch.randn(8, 3, 16, 16))  # analytic: statistics from the current weights
    model.eval()
    folded = fold(model)
    assert not normalizations(folded)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        ref, out = model(x), folded(x)
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("norm", [*NORMS, "none"])
def test_fold_allcnn(norm):
    torch.manual_seed(2)
    model = AllCNN(1, 10, width=0.25, norm=norm)
    model.train()
    model(torch.randn(16, 1, 28, 28))
    model.eval()
    folded = fold(model)
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        ref, out = model(x), folded(x)
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm", ["batch", "weight", "analytic"])
def test_outputs_invariant_to_weight_scale(norm):
    torch.manual_seed(3)
    model = AllCNN(1, 10, width=0.25, norm=norm).train()
    for layer in normalizations(model):
        layer.eps = 1e-12  # the eps added to variances is the only departure from invariance
    x = torch.randn(6, 1, 28, 28)
    ref = model(x)
    with torch.no_grad():
        for i, w in enumerate(scale_invariant_weights(model)):
            w.mul_(0.3 + i)  # a different c > 0 per layer
    out = model(x)
    assert torch.allclose(out, ref, atol=1e-5)


def test_project_gives_unit_norms_and_keeps_the_function():
    torch.manual_seed(4)
    model = AllCNN(1, 10, width=0.25, norm="weight").eval()
    x = torch.randn(3, 1, 28, 28)
    ref = model(x)
    project_(model)
    for w in scale_invariant_weights(model):
        norms = w.flatten(1).norm(dim=1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-6)
    assert len(scale_invariant_weights(model)) == 9
    assert torch.allclose(model(x), ref, atol=1e-5)


@pytest.mark.parametrize("norm", ["weight", "analytic"])
def test_deterministic_norms_do_not_depend_on_the_batch(norm):
    torch.manual_seed(5)
    model = AllCNN(1, 10, width=0.25, norm=norm).train()
    x = torch.randn(8, 1, 28, 28)
    together = model(x)
    alone = torch.cat([model(x[i : i + 1]) for i in range(8)])
    assert torch.allclose(together, alone, atol=1e-5)
    shuffled = model(torch.cat([x[4:], x[:4]]))
    assert torch.allclose(torch.cat([shuffled[4:], shuffled[:4]]), together, atol=1e-5)


@pytest.mark.parametrize("norm", ["batch", "analytic"])
def test_convert_with_bayes_noise(norm):
    from stochnorm.bayes import kl_divergence, predict
    from stochnorm.noise import ScaleNoise

    model = _trained_bn_resnet().eval()
    new = convert(model, norm, noise="bayes", sigma_s=0.2)
    layers = normalizations(new)
    assert all(isinstance(n.noise, ScaleNoise) for n in layers)
    assert kl_divergence(new).item() > 0
    x = torch.randn(3, 3, 16, 16)
    if norm == "batch":  # mean parameters reproduce the BN model's function
        assert torch.allclose(new.eval()(x), model(x), atol=1e-4)
    else:  # analytic norm's statistics from one training forward
        new.train()(x)
    probs = predict(new.eval(), x, samples=5, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(probs.sum(1), torch.ones(3), atol=1e-5)
    new.train()(x).sum().backward()  # trains, gradients reach the noise scale
    assert all(n.noise.u.grad is not None for n in layers)


def test_convert_keeps_eps_and_momentum_and_refuses_what_it_cannot_copy():
    torch.manual_seed(6)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, eps=1e-3, momentum=None))
    x = torch.randn(6, 1, 8, 8)
    ref = copy.deepcopy(net)
    new = convert(net, "batch")
    assert new[1].eps == 1e-3 and new[1].momentum is None
    for k in range(3):  # the cumulative average (momentum None), as torch computes it
        batch = torch.randn(5, 1, 8, 8) * (k + 1) + k
        ref.train()(batch)
        new.train()(batch)
    assert torch.allclose(new[1].running_mean, ref[1].running_mean, atol=1e-6)
    assert torch.allclose(new[1].running_var, ref[1].running_var, atol=1e-6)
    assert torch.allclose(new.eval()(x), ref.eval()(x), atol=1e-5)
    with pytest.raises(ValueError, match="affine=False"):
        convert(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, affine=False)), "analytic")
    with pytest.raises(ValueError, match="track_running_stats=False"):
        convert(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)),
                "weight")  # fmt: skip


def test_a_batch_norm_without_a_layer_in_front_is_an_error_or_a_warning():
    net = nn.Sequential(nn.BatchNorm2d(1), nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match=r"no conv/linear layer in front .*: 0; pass strict"):
        convert(net, "analytic")
    with pytest.warns(UserWarning, match="stay as they are"):
        kept = convert(net, "weight", strict=False)
    assert isinstance(kept[0], nn.BatchNorm2d) and type(kept[2]).__name__ == "WeightNorm"


class _BatchNormAct2d(nn.BatchNorm2d):
    """A batch norm fused with dropout and its activation, as timm writes them."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.drop = nn.Identity()
        self.act = nn.LeakyReLU(0.1)

    def forward(self, x):
        return self.act(self.drop(super().forward(x)))


@pytest.mark.parametrize("norm", ["batch", "analytic"])
def test_fused_batch_norm_activation_modules_are_converted_with_their_activation(norm):
    torch.manual_seed(7)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), _BatchNormAct2d(4),
                        nn.Conv2d(4, 3, 3, bias=False), _BatchNormAct2d(3))  # fmt: skip
    x = torch.randn(5, 1, 9, 9)
    net.train()(x)
    new = convert(net, norm)
    assert len(normalizations(new)) == 2
    assert isinstance(new[1], nn.Sequential) and isinstance(new[1][1], nn.LeakyReLU)
    out = new.train()(x)
    if norm == "batch":  # the same function: batch norm, then the activation
        assert torch.allclose(out, net.train()(x), atol=1e-5)
    else:  # the propagation passes the activation's rule
        assert torch.isfinite(out).all() and (out < 0).any()


def test_fold_keeps_the_activation_of_a_fused_batch_norm():
    torch.manual_seed(8)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), _BatchNormAct2d(4))
    net.train()(torch.randn(6, 1, 7, 7))
    x = torch.randn(3, 1, 7, 7)
    folded = fold(net)
    assert torch.allclose(folded(x), net.eval()(x), atol=1e-5)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())


class _EncoderDecoder(nn.Module):
    """A small segmentation net: a strided conv down, a (grouped) transposed conv back up."""

    def __init__(self, groups=1):
        super().__init__()
        self.down = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.up = nn.ConvTranspose2d(4, 6, 4, stride=2, padding=1, groups=groups)
        self.bn2 = nn.BatchNorm2d(6)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.head(torch.relu(self.bn2(self.up(torch.relu(self.bn1(self.down(x)))))))


@pytest.mark.parametrize("groups", [1, 2])
def test_output_rows_of_a_transposed_conv_are_the_weights_of_each_output_channel(groups):
    torch.manual_seed(7)
    layer = nn.ConvTranspose2d(4, 6, 3, stride=2, groups=groups)
    rows = output_rows(layer)
    assert rows.shape == (6, 4 // groups * 9)
    for o in range(6):  # the weights with a gradient from output channel o alone
        layer.zero_grad()
        layer(torch.rand(2, 4, 5, 5) + 0.1)[:, o].sum().backward()
        feeding = layer.weight.grad != 0
        saved = layer.weight.detach().clone()
        one = torch.zeros_like(rows)
        one[o] = 1.0
        set_output_rows(layer, one)
        assert torch.equal(layer.weight.detach() != 0, feeding)
        set_output_rows(layer, rows.detach())  # and back: a round trip
        assert torch.equal(layer.weight.detach(), saved)


@pytest.mark.parametrize("norm", ["batch", "weight", "analytic", "population"])
def test_a_norm_after_a_transposed_conv_is_converted_projected_and_folded(norm):
    torch.manual_seed(8)
    model = convert(_EncoderDecoder(), norm)
    assert isinstance(model.get_submodule("bn2"), NORMS[norm])
    assert model.get_submodule("bn2").layer is model.get_submodule("up")
    x = torch.randn(5, 1, 12, 12)
    model.train()
    out = model(x)
    assert out.shape == (5, 2, 12, 12)
    project_(model)
    up = output_rows(model.get_submodule("up")).norm(dim=1)
    assert torch.allclose(up, torch.ones_like(up), atol=1e-6)
    if norm in ("weight", "analytic"):  # invariant to the scale of the transposed weight
        for layer in normalizations(model):
            layer.eps = 1e-12
        ref = model(x)
        with torch.no_grad():
            model.get_submodule("up").weight.mul_(3.0)
        assert torch.allclose(model(x), ref, atol=1e-5)
    model.train()(x)
    model.eval()
    with torch.no_grad():
        ref, folded = model(x), fold(model)(x)
    assert torch.allclose(folded, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_weight_norm_after_a_grouped_transposed_conv_normalizes_each_output_channel():
    torch.manual_seed(9)
    model = convert(_EncoderDecoder(groups=2), "weight")
    up, norm = model.get_submodule("up"), model.get_submodule("bn2")
    u = up(
        torch.relu(model.get_submodule("bn1")(model.get_submodule("down")(torch.randn(2, 1, 8, 8))))
    )
    mu, sigma = norm.statistics(u)
    expected = torch.stack(
        [up.weight[(o // 3) * 2 : (o // 3) * 2 + 2, o % 3].norm() for o in range(6)]
    )
    assert torch.allclose(sigma, expected)
