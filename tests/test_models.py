import pytest
import torch
from torch import nn

from stochnorm import AllCNN, ConfigError, data_dependent_init_
from stochnorm.norms import BatchNorm, normalizations


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
