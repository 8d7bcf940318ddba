"""BN noise measurements against the model of section 3.1 where its assumptions hold."""

import math

import pytest
import torch
from torch import nn

from stochnorm.data import Split, Splits
from stochnorm.diagnostics import bn_noise, summarize_bn_noise
from stochnorm.norms import BatchNorm


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


def test_independence_error_is_one_for_independent_inputs():
    """i.i.d. pixels: Sigma is the identity up to sampling error; with 2000 images of 6x6
    (32,000 patches) the ratios are within 2% of 1 (their sampling error is about 0.5%)."""
    from stochnorm.diagnostics import independence_error

    torch.manual_seed(1)
    (row,) = independence_error(_conv_with_norm(3), torch.randn(2000, 3, 6, 6))
    for key in ("independent", "spatial", "channel"):
        assert row[key] == pytest.approx(1.0, abs=0.02)
