"""Models: All-CNN-C as appendix A.1 specifies it, the data-dependent initialization, the
registry (ResNet-20 with every normalization on 1- and 3-channel data, a user's own factory
named package.module:function) and the errors for what does not apply to a model."""

import dataclasses
import math

import pytest
import torch
from torch import nn

from stochnorm import AllCNN, ConfigError, TrainConfig, data, data_dependent_init_, models, train
from stochnorm.norms import BatchNorm, GroupNorm, Norm, normalizations

TINY = dict(width=0.25, epochs=1, lr=0.02, lr_decay_epochs=1, eval_train_size=32)


def _cifar_shaped(n: int = 64) -> data.Splits:
    """Random 3-channel 32x32 images with labels that depend on them (CIFAR-10's shape)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long()
    split = data.Split(x, y)
    return data.Splits(name="cifar-shaped", source="random", train=split, val=split.head(32),
                       test=split.head(32), mean=(0.0,) * 3, std=(1.0,) * 3,
                       classes=tuple("abcdefghij"))  # fmt: skip


@pytest.fixture(scope="module")
def cifar_shaped():
    return _cifar_shaped()


def _fashion(tiny_fashion: data.Splits) -> data.Splits:
    return dataclasses.replace(tiny_fashion, train=tiny_fashion.train.head(64))


@pytest.mark.parametrize("norm", [n.value for n in Norm])
def test_resnet20_trains_with_every_norm_on_three_channel_data(norm, cifar_shaped):
    cfg = TrainConfig(model="resnet20", norm=norm, **TINY)
    result = train(cfg, data=cifar_shaped, progress=False)
    assert not result.metrics["diverged"]
    assert math.isfinite(result.metrics["history"][0]["train_loss"])
    assert math.isfinite(result.metrics["final"]["test"]["nll"])


@pytest.mark.parametrize("norm", ["group", "analytic"])
def test_resnet20_with_learned_noise_on_fashion_mnist(norm, tiny_fashion):
    cfg = TrainConfig(model="resnet20", norm=norm, noise="bayes", project=True, **TINY)
    result = train(cfg, data=_fashion(tiny_fashion), progress=False)
    assert math.isfinite(result.metrics["history"][0]["train_objective"])


def test_resnet20_has_the_papers_size_and_blocks():
    model = models.build("resnet20", 3, 10, norm="batch", width=1.0)
    params = sum(p.numel() for p in model.parameters())
    assert 0.26e6 < params < 0.29e6  # He et al.: 0.27M
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 19 + 2  # 19 3x3 convs + the two 1x1 shortcuts (plus the fc: 20 layers)
    assert len(normalizations(model)) == len(convs)
    out = models.build("resnet20", 1, 7, norm="group", width=0.5)(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 7) and torch.allclose(out.exp().sum(1), torch.ones(2), atol=1e-5)


def test_a_users_factory_is_converted_and_trained(cifar_shaped):
    cfg = TrainConfig(model="tests.resnet:ResNet", norm="analytic", exact_first_layer=True,
                      **TINY)  # fmt: skip
    result = train(cfg, data=cifar_shaped, progress=False)
    assert not result.metrics["diverged"]
    norms = normalizations(result.model)
    assert len(norms) == 10 and all(type(n).__name__ == "AnalyticNorm" for n in norms)
    # its logits were turned into log-probabilities
    probs = result.model.eval()(cifar_shaped.test.x[:4]).exp().sum(1)
    assert torch.allclose(probs, torch.ones(4), atol=1e-5)


def test_a_users_factory_on_the_command_line(tmp_path, monkeypatch, tiny_fashion):
    from stochnorm import cli

    monkeypatch.setattr(
        cli, "train", lambda cfg, out, **kw: train(cfg, out, data=_fashion(tiny_fashion), **kw)
    )
    code = cli.main(["train", "--model", "tests.resnet:ResNet", "--norm", "group", "--epochs", "1",
                     "--eval-train-size", "16", "--lr", "0.01", "--no-progress",
                     "--out", str(tmp_path / "run")])  # fmt: skip
    assert code == 0
    saved = TrainConfig.load(tmp_path / "run" / "config.json")
    assert saved.model == "tests.resnet:ResNet" and saved.norm == "group"


def test_model_names_are_checked_where_they_enter():
    with pytest.raises(ConfigError, match="unknown model 'vgg'.*allcnn, resnet20"):
        TrainConfig(model="vgg")
    with pytest.raises(ConfigError, match="cannot import"):
        models.build("no_such_package.nets:net", 1, 10)
    with pytest.raises(ConfigError, match="has no function"):
        models.build("tests.resnet:nothing", 1, 10)
    with pytest.raises(ConfigError, match="padding"):
        models.build("resnet20", 3, 10, padding=0)


def test_what_a_model_cannot_do_is_named(cifar_shaped):
    pooled = "tests.resnet:pooled_mlp"  # its first operation on the input is a pooling
    with pytest.raises(ConfigError, match="exact first layer needs a Conv2d.*no-exact-first-layer"):
        train(TrainConfig(model=pooled, norm="analytic", **TINY), data=cifar_shaped,
              progress=False)  # fmt: skip
    cfg = TrainConfig(model=pooled, norm="analytic", exact_first_layer=False, **TINY)
    assert not train(cfg, data=cifar_shaped, progress=False).metrics["diverged"]
    with pytest.raises(ValueError, match="no batch normalization"):
        train(TrainConfig(model="torch.nn:Identity", **TINY), data=cifar_shaped, progress=False)


def test_group_norm_groups_follow_the_config(cifar_shaped):
    cfg = TrainConfig(model="resnet20", norm="group", groups=8, **TINY)
    model = train(cfg, data=cifar_shaped, progress=False).model
    groups = {n.num_features: n.groups for n in normalizations(model) if isinstance(n, GroupNorm)}
    assert groups == {4: 4, 8: 8, 16: 8}  # width 0.25: 4, 8, 16 channels; G = gcd(C, 8)


def _convs(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_allcnn_structure_matches_appendix_a1():
    model = AllCNN(3, 10, width=1.0, norm="batch")
    convs = _convs(model)
    assert [c.out_channels for c in convs] == [96, 96, 96, 192, 192, 192, 192, 192, 10]
    assert [c.kernel_size[0] for c in convs] == [3] * 7 + [1, 1]
    assert [c.stride[0] for c in convs] == [1, 1, 2, 1, 1, 2, 1, 1, 1]
    assert all(c.bias is None for c in convs)  # redundant before batch norm
    bns = normalizations(model)
    assert len(bns) == 9 and all(isinstance(b, BatchNorm) for b in bns)
    assert [b.layer for b in bns] == convs
    acts = [m for m in model.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(acts) == 8 and all(a.negative_slope == 0.01 for a in acts)


def test_spatial_sizes_unpadded_and_padded():
    sizes = []
    model = AllCNN(3, 10, width=0.1, norm="none", padding=0)
    for conv in _convs(model):
        conv.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
    model(torch.randn(2, 3, 32, 32))
    assert sizes == [30, 28, 13, 11, 9, 4, 2, 2, 2]  # 2x2 at the 7th conv, as in Fig. 4
    sizes.clear()
    padded = AllCNN(3, 10, width=0.1, norm="none")  # padding=1 by default
    for conv in _convs(padded):
        conv.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
    padded(torch.randn(2, 3, 32, 32))
    assert sizes == [32, 32, 16, 16, 16, 8, 6, 6, 6]  # Springenberg: global pooling over 6x6


def test_width_and_output_are_log_probabilities():
    model = AllCNN(1, 10, width=1 / 3, norm="none")
    assert [c.out_channels for c in _convs(model)] == [32, 32, 32, 64, 64, 64, 64, 64, 10]
    out = model(torch.randn(5, 1, 28, 28))
    assert out.shape == (5, 10)
    assert torch.allclose(out.exp().sum(1), torch.ones(5), atol=1e-5)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="width"):
        AllCNN(width=0)
    with pytest.raises(ConfigError, match="unknown norm"):
        AllCNN(norm="instance")
    with pytest.raises(ValueError, match="images"):
        AllCNN(1, 10, width=0.1)(torch.randn(4, 784))


def test_data_dependent_init_standardizes_every_layer():
    torch.manual_seed(0)
    model = AllCNN(1, 10, width=0.25, norm="none")
    x = torch.randn(128, 1, 28, 28) * 3 + 1
    data_dependent_init_(model, x)
    outputs = []
    for conv in _convs(model):
        conv.register_forward_hook(lambda m, i, o: outputs.append(o))
    model.eval()
    with torch.no_grad():
        model(x)
    for out in outputs:
        dims = (0, 2, 3)
        # mean 0 and std 1 up to eps = 1e-5 in the variance
        assert torch.allclose(out.mean(dims), torch.zeros(out.shape[1]), atol=1e-4)
        assert torch.allclose(out.std(dims, unbiased=False), torch.ones(out.shape[1]), atol=1e-3)


def test_data_dependent_init_needs_biases():
    plain = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.ReLU())
    with pytest.raises(ValueError, match="bias"):
        data_dependent_init_(plain, torch.randn(4, 1, 28, 28))


def test_data_dependent_init_of_weight_norm_sets_the_affine():
    torch.manual_seed(1)
    model = AllCNN(1, 10, width=0.25, norm="weight")
    x = torch.randn(128, 1, 28, 28) * 2 - 1
    convs_before = [c.weight.clone() for c in _convs(model)]
    data_dependent_init_(model, x)
    assert all(torch.equal(a, c.weight) for a, c in zip(convs_before, _convs(model), strict=True))
    outputs = []
    for norm in normalizations(model):
        norm.register_forward_hook(lambda m, i, o: outputs.append(o))
    with torch.no_grad():
        model.eval()(x)
    for out in outputs:
        assert torch.allclose(out.mean((0, 2, 3)), torch.zeros(out.shape[1]), atol=1e-4)
        assert torch.allclose(
            out.std((0, 2, 3), unbiased=False), torch.ones(out.shape[1]), atol=1e-3
        )


def test_train_takes_a_factory_and_records_its_name(tmp_path, cifar_shaped):
    from tests.resnet import ResNet

    result = train(TrainConfig(**TINY), tmp_path / "run", data=cifar_shaped,
                   model_factory=ResNet, progress=False)  # fmt: skip
    saved = TrainConfig.load(tmp_path / "run" / "config.json")
    assert saved.model == "tests.resnet:ResNet" and not result.metrics["diverged"]
    with pytest.raises(ConfigError, match="not importable"):
        train(TrainConfig(**TINY), data=cifar_shaped, model_factory=lambda **k: nn.Identity())
