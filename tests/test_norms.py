"""Normalization layers: each against an independent computation of eq. (2)."""

import copy
import math
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from stochnorm import add_noise, fold, kl_divergence, project_
from stochnorm.norms import BatchNorm, Norm, make_norm, normalizations


def test_batch_norm_matches_torch_in_train_and_eval():
    torch.manual_seed(0)
    ours, ref = BatchNorm(5), nn.BatchNorm2d(5)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 2)
        ours.bias.normal_()
    ref.load_state_dict(ours.state_dict())
    for _ in range(3):
        u = torch.randn(8, 5, 4, 4) * 3 + 1
        assert torch.allclose(ours(u), ref(u), atol=1e-6)
    for name, buf in ref.named_buffers():
        assert torch.allclose(getattr(ours, name), buf), name
    ours.eval(), ref.eval()
    u = torch.randn(2, 5, 4, 4)
    assert torch.allclose(ours(u), ref(u), atol=1e-6)


def test_batch_norm_statistics_are_the_biased_batch_moments():
    bn = BatchNorm(3)
    u = torch.randn(6, 3, 5, 5) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1)
    mu, sigma = bn.statistics(u)
    flat = u.transpose(0, 1).reshape(3, -1).double()
    assert torch.allclose(mu.double(), flat.mean(1), atol=1e-6)
    assert torch.allclose(sigma.double() ** 2, flat.var(1, unbiased=False) + 1e-5, atol=1e-5)
    # the generic formula gives what the fused forward gives
    bn2 = copy.deepcopy(BatchNorm(3))
    assert torch.allclose(bn2.normalize(u), BatchNorm(3)(u), atol=1e-5)


def test_factory_binds_and_checks_sizes():
    conv = nn.Conv2d(3, 4, 3)
    norm = make_norm("batch", 4, conv)
    assert norm.layer is conv
    assert isinstance(make_norm(Norm.NONE, 4), nn.Identity)
    with pytest.raises(ValueError, match="cannot follow"):
        make_norm("batch", 5, conv)
    model = nn.Sequential(conv, norm)
    assert normalizations(model) == [norm]
    # the bound layer is not a submodule: parameters are listed once
    assert len(list(norm.parameters())) == 2
    copied = copy.deepcopy(model)
    assert copied[1].layer is copied[0]


@pytest.mark.parametrize("gradient", [True, False])
def test_population_norm_uses_running_estimates_not_the_batch(gradient):
    from stochnorm.norms import PopulationNorm, gamma_decay

    torch.manual_seed(0)
    pn = PopulationNorm(3, momentum=0.5, gradient=gradient)
    first = torch.randn(64, 3, 4, 4) * 2 + 1
    pn(first)  # initializes the estimates with the first batch
    flat = first.transpose(0, 1).reshape(3, -1)
    assert torch.allclose(pn.running_mean, flat.mean(1), atol=1e-5)
    assert torch.allclose(pn.running_var, flat.var(1), atol=1e-4)
    # a later batch is normalized with the estimates from before it, then updates them
    mean0, var0 = pn.running_mean.clone(), pn.running_var.clone()
    u = torch.randn(8, 3, 4, 4)
    expected = (u - mean0.view(1, 3, 1, 1)) / (var0.view(1, 3, 1, 1) + pn.eps).sqrt()
    assert torch.allclose(pn(u), expected, atol=1e-5)
    new_flat = u.transpose(0, 1).reshape(3, -1)
    assert torch.allclose(pn.running_mean, 0.5 * mean0 + 0.5 * new_flat.mean(1), atol=1e-5)
    # one sample alone gets what it gets inside a batch (with the same estimates)
    state = {k: v.clone() for k, v in pn.state_dict().items()}
    together = pn(u)
    pn.load_state_dict(state)
    assert torch.allclose(pn(u[:1]), together[:1], atol=1e-6)
    # gamma decay: the sum of the squared scales
    with torch.no_grad():
        pn.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
    assert gamma_decay(nn.Sequential(pn)).item() == pytest.approx(14.0)


def test_population_norm_gradient_is_batch_norms_where_the_statistics_agree():
    """With population estimates equal to the batch's statistics, `gradient=True` gives
    batch norm's forward and backward; constant statistics give the same forward but a
    gradient without BN's projection."""
    from stochnorm.norms import PopulationNorm

    torch.manual_seed(0)
    u = (torch.randn(16, 3, 4, 4) * 2 + 1).double()
    g = torch.randn_like(u)
    var, mean = torch.var_mean(u, (0, 2, 3), correction=0)
    outputs, grads = {}, {}
    for name, layer in {"batch": BatchNorm(3), "pn": PopulationNorm(3),
                        "pn-const": PopulationNorm(3, gradient=False)}.items():  # fmt: skip
        layer = layer.double()
        if name != "batch":  # estimates already made, equal to this batch's statistics
            layer.running_mean.copy_(mean)
            layer.running_var.copy_(var)
            layer.num_batches_tracked.fill_(1)
        x = u.clone().requires_grad_()
        outputs[name] = layer(x)
        (outputs[name] * g).sum().backward()
        grads[name] = x.grad
    for name in ("pn", "pn-const"):
        torch.testing.assert_close(outputs[name], outputs["batch"], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(grads["pn"], grads["batch"], rtol=1e-9, atol=1e-9)
    assert (grads["pn-const"] - grads["batch"]).abs().max() > 0.1


@pytest.mark.parametrize("channels,groups", [(12, 4), (12, 32), (10, 32), (8, 1)])
def test_group_norm_matches_torch_in_train_and_eval(channels, groups):
    torch.manual_seed(0)
    ours = make_norm("group", channels, groups=groups)
    ref = nn.GroupNorm(math.gcd(channels, groups), channels)
    with torch.no_grad():
        for p in (ours.weight, ours.bias):
            p.normal_()
        ref.weight.copy_(ours.weight)
        ref.bias.copy_(ours.bias)
    u = torch.randn(3, channels, 5, 4) * 3 + 1
    for mode in (True, False):
        ours.train(mode), ref.train(mode)
        assert torch.allclose(ours(u), ref(u), atol=1e-5)
    assert ours.groups == math.gcd(channels, groups)
    # [B, C] after a linear layer as well
    v = torch.randn(4, channels)
    assert torch.allclose(ours(v), ref(v), atol=1e-5)


def test_layer_norm_is_group_norm_with_one_group_and_independent_of_the_batch():
    torch.manual_seed(1)
    layer, group = make_norm("layer", 6), make_norm("group", 6, groups=1)
    assert layer.groups == 1
    u = torch.randn(5, 6, 3, 3)
    assert torch.equal(layer(u), group(u))
    # one sample's output does not depend on the others
    assert torch.allclose(layer(u)[:1], layer(u[:1]), atol=1e-6)
    # over C, H, W of each sample: zero mean, unit variance before the affine
    z = layer.normalize(u).flatten(1)
    assert torch.allclose(z.mean(1), torch.zeros(5), atol=1e-5)
    assert torch.allclose(z.var(1, unbiased=False), torch.ones(5), atol=1e-3)


def test_group_norm_projection_scales_whole_groups_and_keeps_the_function():
    torch.manual_seed(2)
    conv = nn.Conv2d(3, 8, 3, bias=False)
    net = nn.Sequential(conv, make_norm("group", 8, conv, groups=2))
    x = torch.randn(4, 3, 6, 6)
    with torch.no_grad():
        conv.weight.mul_(torch.linspace(0.2, 3, 8).view(8, 1, 1, 1))  # rows of unequal norm
        before = net(x)
        project_(net)
        rows = conv.weight.flatten(1).norm(dim=1) ** 2
        assert torch.allclose(rows.view(2, 4).sum(1), torch.full((2,), 4.0), atol=1e-5)
        assert torch.allclose(net(x), before, atol=1e-4)  # scale-invariant per group (up to eps)
        # rescaling one channel alone (the per-channel projection) would change the output
        conv.weight[0].mul_(3)
        assert not torch.allclose(net(x), before, atol=1e-3)


def test_group_norm_cannot_be_folded_and_carries_noise():
    conv = nn.Conv2d(1, 4, 3, bias=False)
    net = nn.Sequential(conv, make_norm("group", 4, conv, groups=2))
    with pytest.raises(ValueError, match="cannot be folded"):
        fold(net)
    add_noise(net, "bayes", sigma_s=0.2)
    x = torch.randn(2, 1, 5, 5)
    torch.manual_seed(0)
    assert not torch.allclose(net.train()(x), net.train()(x))  # sampled scales
    assert torch.equal(net.eval()(x), net.eval()(x))
    assert kl_divergence(net) > 0


@pytest.mark.parametrize("noise", [False, True])
def test_ghost_batches_normalize_each_group_by_its_own_statistics(noise):
    torch.manual_seed(4)
    ours = BatchNorm(5)
    ours.ghost_batch = 4
    with torch.no_grad():
        ours.weight.normal_()
        ours.bias.normal_()
    if noise:
        add_noise(nn.Sequential(ours), "bayes", sigma_s=1e-6)  # nearly no noise: compare
    u = torch.randn(12, 5, 3, 3) * 2 + 1
    out = ours.train()(u)
    # each group of 4 through torch's batch norm in train mode, the affine after it
    s, b = ours.weight.view(1, -1, 1, 1), ours.bias.view(1, -1, 1, 1)
    if noise:  # the bayes model is (z + b) S, its b already divided by s by add_noise
        expected = torch.cat([(F.batch_norm(g, None, None, training=True) + b) * s
                              for g in u.split(4)])  # fmt: skip
    else:
        expected = torch.cat([F.batch_norm(g, None, None, training=True) * s + b
                              for g in u.split(4)])  # fmt: skip
    assert torch.allclose(out, expected, atol=1e-4)
    # the running estimates follow the first group only (the replica DDP broadcasts)
    first = u[:4].transpose(0, 1).flatten(1)
    assert torch.allclose(ours.running_mean, 0.1 * first.mean(1), atol=1e-6)
    assert torch.allclose(ours.running_var, 0.9 + 0.1 * first.var(1), atol=1e-5)
    # evaluation uses the running estimates, whatever the ghost batch
    ref = nn.BatchNorm2d(5).eval()
    ref.load_state_dict({k: v for k, v in ours.state_dict().items() if not k.startswith("noise")})
    if not noise:
        assert torch.allclose(ours.eval()(u), ref(u), atol=1e-5)
    with pytest.raises(ValueError, match="does not split into ghost batches of 4"):
        ours.train()(u[:10])


def test_batch_norm_loads_old_state_dicts_and_skips_empty_batches():
    old = nn.BatchNorm2d(3).state_dict()
    del old["num_batches_tracked"]  # as torch saved batch norm before its version 2
    ours = BatchNorm(3)
    ours.load_state_dict(old)
    assert int(ours.num_batches_tracked) == 0
    for noise in (False, True):
        layer = BatchNorm(3)
        if noise:
            add_noise(nn.Sequential(layer), "bayes")
        before = layer.running_var.clone()
        out = layer.train()(torch.randn(0, 3, 4, 4))
        assert out.shape == (0, 3, 4, 4) and torch.equal(layer.running_var, before)


def test_population_norm_survives_a_first_batch_of_one_value_per_channel():
    layer = make_norm("population", 4)
    layer.train()(torch.randn(1, 4, 1, 1))  # one image at 1x1: no variance to estimate
    assert torch.all(layer.running_var > 0.5)
    out = layer(torch.randn(8, 4, 3, 3))
    assert out.abs().max() < 20  # was ~1e3 with the zero variance of that first batch


def test_group_norm_says_when_its_groups_collapse_to_layer_norm():
    with pytest.warns(UserWarning, match="normalizes as layer norm"):
        assert make_norm("group", 5, groups=32).groups == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert make_norm("group", 10, groups=32).groups == 2
        assert make_norm("layer", 5).groups == 1


@pytest.mark.parametrize("layer_bias", [False, True])
def test_weight_norm_is_w_x_over_the_row_norm_with_its_gradients(layer_bias):
    # against the formula written out with autograd: the layer's own bias a is the mean
    # that weight norm subtracts, so the output is (w * x) / ||w|| * s + b either way
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, bias=layer_bias).double()
    norm = make_norm("weight", 4, conv).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2)
        norm.bias.normal_()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    out = norm(conv(x))
    rows = conv.weight.flatten(1).norm(dim=1).view(1, -1, 1, 1)
    s, b = norm.weight.view(1, -1, 1, 1), norm.bias.view(1, -1, 1, 1)
    expected = F.conv2d(x, conv.weight) / rows * s + b
    torch.testing.assert_close(out, expected)
    g = torch.randn_like(out)
    params = [conv.weight, norm.weight, norm.bias]
    got = torch.autograd.grad(out, params + ([conv.bias] if layer_bias else []), g)
    for p, q in zip(got, torch.autograd.grad(expected, params, g), strict=False):
        torch.testing.assert_close(p, q)
    if layer_bias:  # the layer's bias cancels: no gradient reaches it
        torch.testing.assert_close(got[3], torch.zeros_like(conv.bias))
