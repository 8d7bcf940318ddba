"""Moment rules against independent computations: Monte-Carlo with 10^6 samples, numerical
integration (scipy's quad) and limits, including extreme means, variances and slopes."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate
from scipy.stats import norm as normal

from stochnorm import moments

MC = 1_000_000


def _mc_check(samples: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, z: float = 5.0):
    """The rule's mean and variance lie within z standard errors of the sample estimates."""
    samples = samples.double()
    n = samples.shape[0]
    est_mean, est_var = samples.mean(0), samples.var(0)
    se_mean = (est_var / n).sqrt()
    # standard error of a sample variance: sqrt((m4 - var^2) / n)
    m4 = ((samples - est_mean) ** 4).mean(0)
    se_var = ((m4 - est_var**2).clamp_min(0) / n).sqrt()
    assert torch.all((mean.double() - est_mean).abs() <= z * se_mean + 1e-9), (mean, est_mean)
    assert torch.all((var.double() - est_var).abs() <= z * se_var + 1e-9), (var, est_var)


@pytest.mark.parametrize("slope", [0.0, 0.01, 0.3])
def test_leaky_relu_against_monte_carlo(slope):
    g = torch.Generator().manual_seed(1)
    mean = torch.tensor([-2.0, -0.5, 0.0, 0.3, 1.5, 4.0], dtype=torch.float64)
    var = torch.tensor([1.0, 0.2, 2.0, 1.0, 0.5, 9.0], dtype=torch.float64)
    x = mean + var.sqrt() * torch.randn(MC, len(mean), generator=g, dtype=torch.float64)
    y = torch.nn.functional.leaky_relu(x, slope)
    _mc_check(y, *moments.leaky_relu(mean, var, slope))


def _quad_moments(m: float, sd: float, a: float) -> tuple[float, float]:
    """E[y], Var[y] for y = leaky_relu(x), x ~ N(m, sd^2), by adaptive quadrature over
    [m - 12 sd, m + 12 sd], split at the kink."""
    lo, hi = m - 12 * sd, m + 12 * sd
    cuts = [lo] + ([0.0] if lo < 0 < hi else []) + [hi]

    def moment(k):
        f = lambda x: (x if x > 0 else a * x) ** k * normal.pdf(x, m, sd)  # noqa: E731
        return sum(integrate.quad(f, u, v, epsabs=0, epsrel=1e-11, limit=200)[0]
                   for u, v in zip(cuts, cuts[1:], strict=False))  # fmt: skip

    first = moment(1)
    return first, moment(2) - first**2


@settings(max_examples=150, deadline=None)
@given(
    m=st.floats(-30, 30),
    log_sd=st.floats(-3, 1.5),
    a=st.sampled_from([0.0, 0.01, 0.1, 0.5, 1.0]) | st.floats(0, 1),
)
def test_leaky_relu_against_quadrature(m, log_sd, a):
    sd = 10.0**log_sd
    got_mean, got_var = moments.leaky_relu(
        torch.tensor([m], dtype=torch.float64), torch.tensor([sd * sd], dtype=torch.float64), a
    )
    ref_mean, ref_var = _quad_moments(m, sd, a)
    scale = abs(m) + sd
    assert got_mean.item() == pytest.approx(ref_mean, abs=1e-8 * scale)
    assert got_var.item() == pytest.approx(max(ref_var, 0.0), abs=1e-7 * scale**2)


@settings(max_examples=100, deadline=None)
@given(
    m=st.floats(-1e4, 1e4), a=st.floats(0, 1), dtype=st.sampled_from([torch.float32, torch.float64])
)
def test_leaky_relu_zero_variance_limit(m, a, dtype):
    mean = torch.tensor([m], dtype=dtype)
    for var in (torch.zeros(1, dtype=dtype), torch.full((1,), 1e-20, dtype=dtype)):
        out_mean, out_var = moments.leaky_relu(mean, var, a)
        expected = m if m > 0 else a * m
        assert out_mean.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
        assert 0 <= out_var.item() <= 1e-6 * max(1.0, m * m)


@settings(max_examples=100, deadline=None)
@given(
    m=st.floats(-1e3, 1e3), log_v=st.floats(-12, 8), a=st.floats(0, 1),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)  # fmt: skip
def test_leaky_relu_properties_and_finite_gradients(m, log_v, a, dtype):
    mean = torch.tensor([m], dtype=dtype, requires_grad=True)
    var = torch.tensor([10.0**log_v], dtype=dtype, requires_grad=True)
    out_mean, out_var = moments.leaky_relu(mean, var, a)
    # a 1-Lipschitz map cannot increase the variance, and E[y] lies between a*m and |m|+sd
    assert out_var.item() <= var.item() * (1 + 1e-4) + 1e-6
    assert torch.isfinite(out_mean).all() and torch.isfinite(out_var).all()
    (out_mean + out_var).sum().backward()
    assert torch.isfinite(mean.grad).all() and torch.isfinite(var.grad).all()


def test_slope_one_is_identity_and_relu_is_slope_zero():
    mean, var = torch.tensor([-1.0, 2.0]), torch.tensor([0.5, 3.0])
    m1, v1 = moments.leaky_relu(mean, var, 1.0)
    assert torch.allclose(m1, mean, atol=1e-6) and torch.allclose(v1, var, atol=1e-5)
    assert all(
        torch.equal(p, q)
        for p, q in zip(moments.relu(mean, var), moments.leaky_relu(mean, var, 0.0), strict=False)
    )


def test_relu_of_standard_normal_closed_form():
    m, v = moments.relu(torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64))
    assert m.item() == pytest.approx(1 / math.sqrt(2 * math.pi), rel=1e-12)
    assert v.item() == pytest.approx(0.5 - 1 / (2 * math.pi), rel=1e-12)


def _independent_inputs(mean, var, n, shape, g):
    """Independent inputs per channel and position: a mix of Gaussian and uniform channels."""
    c = len(mean)
    z = torch.randn(n, c, *shape, generator=g, dtype=torch.float64)
    z[:, ::2] = (
        torch.rand(n, (c + 1) // 2, *shape, generator=g, dtype=torch.float64) - 0.5
    ) * math.sqrt(12)
    view = (1, c) + (1,) * len(shape)
    return mean.view(view) + var.sqrt().view(view) * z


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_moments_against_monte_carlo(groups):
    g = torch.Generator().manual_seed(2)
    c, o = 4, 6
    mean = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
    var = torch.tensor([1.0, 0.25, 4.0, 2.0], dtype=torch.float64)
    weight = torch.randn(o, c // groups, 3, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(o, generator=g, dtype=torch.float64)
    x = _independent_inputs(mean, var, MC, (3, 3), g)
    y = torch.nn.functional.conv2d(x, weight, bias, groups=groups).flatten(1)  # 1x1 outputs
    _mc_check(y, *moments.linear(mean, var, weight, bias))


def test_linear_after_flatten_repeats_channel_moments():
    g = torch.Generator().manual_seed(3)
    mean = torch.tensor([1.0, -2.0], dtype=torch.float64)
    var = torch.tensor([0.5, 2.0], dtype=torch.float64)
    weight = torch.randn(3, 2 * 4, generator=g, dtype=torch.float64)  # 2 channels x 2x2
    x = _independent_inputs(mean, var, MC, (2, 2), g)
    y = torch.nn.functional.linear(x.flatten(1), weight)
    _mc_check(y, *moments.linear(mean, var, weight))
    with pytest.raises(ValueError, match="cannot feed"):
        moments.linear(mean, var, torch.randn(3, 5))


def test_average_pool_choices_match_their_assumptions():
    g = torch.Generator().manual_seed(4)
    mean, var = (
        torch.tensor([1.0, -0.5], dtype=torch.float64),
        torch.tensor([2.0, 0.5], dtype=torch.float64),
    )
    iid = _independent_inputs(mean, var, MC, (3, 3), g)
    _mc_check(iid.mean((2, 3)), *moments.average_pool(mean, var, 9, "none"))
    constant = iid[:, :, :1, :1].expand_as(iid)  # perfectly correlated positions
    _mc_check(constant.mean((2, 3)), *moments.average_pool(mean, var, 9, "full"))
    with pytest.raises(ValueError, match="correlation"):
        moments.average_pool(mean, var, 9, "some")


def test_affine_and_add_against_monte_carlo():
    g = torch.Generator().manual_seed(5)
    mean, var = (
        torch.tensor([1.0, -0.5], dtype=torch.float64),
        torch.tensor([2.0, 0.5], dtype=torch.float64),
    )
    x1 = _independent_inputs(mean, var, MC, (), g)
    x2 = _independent_inputs(mean * 2, var * 3, MC, (), g)
    scale, shift = (
        torch.tensor([2.0, -3.0], dtype=torch.float64),
        torch.tensor([0.5, 1.0], dtype=torch.float64),
    )
    _mc_check(x1 * scale + shift, *moments.affine(mean, var, scale, shift))
    _mc_check(x1 + x2, *moments.add((mean, var), (mean * 2, var * 3)))


def test_float32_lower_tail_has_no_cancellation():
    # Phi(t) for t = -30 underflows gracefully with erfc; 1 + erf(t / sqrt 2) would give 0 - 0
    m, v = moments.leaky_relu(torch.tensor([-30.0]), torch.tensor([1.0]), 0.0)
    assert m.item() >= 0 and m.item() < 1e-100 or m.item() == 0.0
    assert np.isfinite(v.item())


SMOOTH = {
    "silu": torch.nn.functional.silu,
    "gelu": torch.nn.functional.gelu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "softplus": torch.nn.functional.softplus,
    "elu": torch.nn.functional.elu,
}
KINKED = {"hardswish": torch.nn.functional.hardswish, "relu6": torch.nn.functional.relu6}


def _quadrature_moments(f, m, sd):
    """E[f(x)], Var[f(x)] for x ~ N(m, sd^2) by adaptive quadrature (scipy), independent of
    the Gauss-Hermite rule."""

    def g(x, k):
        return float(f(torch.tensor(x, dtype=torch.float64))) ** k * normal.pdf(x, m, sd)

    lo, hi = m - 12 * sd, m + 12 * sd
    kinks = [k for k in (-3, 0, 3, 6) if lo < k < hi]
    e1 = integrate.quad(g, lo, hi, args=(1,), limit=200, points=kinks or None)[0]
    e2 = integrate.quad(g, lo, hi, args=(2,), limit=200, points=kinks or None)[0]
    return e1, e2 - e1 * e1


@pytest.mark.parametrize("name", [*SMOOTH, *KINKED])
def test_elementwise_activations_against_quadrature(name):
    f = {**SMOOTH, **KINKED}[name]
    # errors relative to the input's sd (mean) and variance: smooth functions converge fast
    # in Gauss-Hermite while the input's sd is below their scale of curvature (~1), slower
    # when it is wider (tanh at sd 2.5: 1e-4 of the sd); kinks (hardswish, ReLU6) to a few
    # 1e-3 at 48 nodes
    tol = 1e-3 if name in SMOOTH else 5e-3
    for m, sd in ((0.0, 1.0), (-1.5, 0.3), (2.0, 2.5), (0.4, 0.05), (-3.0, 1.0)):
        mean, var = moments.elementwise(
            torch.tensor([m], dtype=torch.float64), torch.tensor([sd * sd], dtype=torch.float64), f
        )
        e, v = _quadrature_moments(f, m, sd)
        assert mean.item() == pytest.approx(e, abs=tol * sd), (name, m, sd)
        assert var.item() == pytest.approx(v, abs=tol * sd * sd), (name, m, sd)


def test_elementwise_quadrature_of_relu_approaches_its_closed_form():
    m = torch.tensor([-1.0, 0.0, 0.7], dtype=torch.float64)
    v = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    closed = moments.relu(m, v)
    found = moments.elementwise(m, v, torch.relu)
    torch.testing.assert_close(found[0], closed[0], atol=5e-3 * v.sqrt().max().item(), rtol=0)
    torch.testing.assert_close(found[1], closed[1], atol=5e-3 * v.max().item(), rtol=0)


def test_elementwise_has_gradients_and_zero_variance_limit():
    m = torch.tensor([0.3, -2.0], dtype=torch.float64, requires_grad=True)
    v = torch.tensor([0.4, 0.0], dtype=torch.float64, requires_grad=True)
    mean, var = moments.elementwise(m, v, torch.nn.functional.silu)
    assert mean[1].item() == pytest.approx(torch.nn.functional.silu(torch.tensor(-2.0)).item())
    assert var[1].item() == pytest.approx(0.0, abs=1e-12)
    (mean.sum() + var.sum()).backward()
    assert torch.isfinite(m.grad).all() and torch.isfinite(v.grad).all()


def test_product_of_independent_values_against_monte_carlo():
    g = torch.Generator().manual_seed(0)
    n = 400_000
    x = 0.5 + 1.2 * torch.randn(n, generator=g, dtype=torch.float64)
    y = -0.8 + 0.4 * torch.randn(n, generator=g, dtype=torch.float64)
    mean, var = moments.multiply(
        (torch.tensor(0.5, dtype=torch.float64), torch.tensor(1.44, dtype=torch.float64)),
        (torch.tensor(-0.8, dtype=torch.float64), torch.tensor(0.16, dtype=torch.float64)),
    )
    se = (x * y).std().item() / n**0.5
    assert mean.item() == pytest.approx((x * y).mean().item(), abs=5 * se)
    assert var.item() == pytest.approx((x * y).var().item(), rel=0.02)


@pytest.mark.parametrize("a", [0.0, 0.01, 0.3])
def test_leaky_relu_rule_gradient_against_finite_differences(a):
    g = torch.Generator().manual_seed(0)
    mean = (torch.randn(12, generator=g, dtype=torch.float64) * 3).requires_grad_()
    var = (torch.rand(12, generator=g, dtype=torch.float64) * 4 + 0.05).requires_grad_()
    assert torch.autograd.gradcheck(lambda m, v: moments.leaky_relu(m, v, a), (mean, var),
                                    eps=1e-6, atol=1e-7, rtol=1e-5)  # fmt: skip


@pytest.mark.parametrize(
    "weight_shape, channels",
    [((6, 4, 3, 3), 4), ((6, 2, 3, 3), 4), ((6, 1, 3), 6), ((5, 4), 4), ((5, 8), 4)],
    ids=["conv", "grouped-conv", "depthwise-conv1d", "linear", "linear-after-flatten"],
)
def test_linear_rule_gradient_against_finite_differences(weight_shape, channels):
    # the closed-form backward of the conv/linear rule, against autograd's finite differences
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(channels, generator=g, dtype=torch.float64).requires_grad_()
    var = (torch.rand(channels, generator=g, dtype=torch.float64) + 0.1).requires_grad_()
    weight = torch.randn(weight_shape, generator=g, dtype=torch.float64).requires_grad_()
    bias = torch.randn(weight_shape[0], generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(moments.linear, (mean, var, weight, bias), eps=1e-6,
                                    atol=1e-8, rtol=1e-6)  # fmt: skip


def test_grouped_linear_rule_matches_its_block_diagonal_form():
    # each group's outputs read only its own channels: the rule equals the dense rule with
    # the block-diagonal matrix of the groups' kernel sums
    g = torch.Generator().manual_seed(1)
    mean, var = torch.randn(6, generator=g), torch.rand(6, generator=g)
    weight = torch.randn(9, 2, 3, 3, generator=g)  # 3 groups of 2 inputs, 3 outputs each
    w1 = torch.block_diag(*weight.sum((2, 3)).chunk(3))
    w2 = torch.block_diag(*weight.pow(2).sum((2, 3)).chunk(3))
    got_mean, got_var = moments.linear(mean, var, weight)
    torch.testing.assert_close(got_mean, w1 @ mean)
    torch.testing.assert_close(got_var, w2 @ var)


_SOURCE_MEAN = [-6.0, -1.0, 0.0, 0.5, 2.0, 15.0]
_SOURCE_VAR = [1.0, 1.0, 0.5, 2.0, 1.0, 4.0]


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-7), (torch.float32, 5e-3)])
def test_rectified_source_inverts_the_relu_rule(dtype, tol):
    """relu's rule maps (m, v) to the moments of relu(N(m, v)); rectified_source maps them
    back (float32: t = -6 loses digits in the rule itself, hence the looser tolerance)."""
    m, v = torch.tensor(_SOURCE_MEAN, dtype=dtype), torch.tensor(_SOURCE_VAR, dtype=dtype)
    found_mean, found_var = moments.rectified_source(*moments.relu(m, v))
    assert torch.allclose(found_mean, m, rtol=tol, atol=tol)
    assert torch.allclose(found_var, v, rtol=tol, atol=tol)


def test_rectified_source_gradient_against_finite_differences():
    mean, var = moments.relu(torch.tensor(_SOURCE_MEAN[1:5]).double(),
                             torch.tensor(_SOURCE_VAR[1:5]).double())  # fmt: skip
    inputs = (mean.clone().requires_grad_(), var.clone().requires_grad_())
    assert torch.autograd.gradcheck(moments.rectified_source, inputs, atol=1e-6)


@pytest.mark.parametrize("case", range(5))
def test_residual_relu_against_monte_carlo(case):
    """relu(relu(a) + b) for independent Gaussians a and b, sampled (10^6 draws): the mean
    within 5 standard errors, the variance within 1% (its sampling error ~0.3%). Case 0 has
    a vanishing branch (the result is relu(a)), case 4 a branch that dominates."""
    m_a, v_a, m_b, v_b = [(-1.0, 1.0, 0.0, 0.0), (0.0, 0.5, -0.5, 1.0), (0.5, 2.0, 1.0, 0.3),
                          (2.0, 1.0, 0.0, 4.0), (-0.3, 0.2, 0.4, 9.0)][case]  # fmt: skip
    g = torch.Generator().manual_seed(case)
    a = m_a + math.sqrt(v_a) * torch.randn(1_000_000, generator=g, dtype=torch.float64)
    b = m_b + math.sqrt(v_b) * torch.randn(1_000_000, generator=g, dtype=torch.float64)
    y = (a.relu() + b).relu()
    skip = moments.relu(torch.tensor([m_a]).double(), torch.tensor([v_a]).double())
    mean, var = moments.residual_relu(skip, (torch.tensor([m_b]).double(),
                                             torch.tensor([v_b]).double()))  # fmt: skip
    assert abs(mean.item() - y.mean().item()) < 5 * y.std().item() / 1000
    assert var.item() == pytest.approx(y.var().item(), rel=0.01)


def test_residual_relu_of_a_vanishing_branch_is_the_skip_itself():
    """relu(relu(a) + 0) = relu(a): the moments come back unchanged, to the quadrature's
    accuracy (5e-4 relative; the integrand grows without bound at the upper end of u),
    where relu's rule applied to the sum would clip it a second time (off by > 1%)."""
    skip = moments.relu(torch.tensor(_SOURCE_MEAN[1:5]).double(),
                        torch.tensor(_SOURCE_VAR[1:5]).double())  # fmt: skip
    zero = torch.zeros(4, dtype=torch.float64)
    mean, var = moments.residual_relu(skip, (zero, zero))
    assert torch.allclose(mean, skip[0], rtol=5e-4)
    assert torch.allclose(var, skip[1], rtol=5e-4)
    assert not torch.allclose(moments.relu(*skip)[1], skip[1], rtol=1e-2)


def test_residual_relu_gradient_against_finite_differences():
    skip = moments.relu(
        torch.tensor([-1.0, 0.5, 2.0]).double(), torch.tensor([1.0, 2.0, 1.0]).double()
    )
    inputs = (*(t.clone().requires_grad_() for t in skip),
              torch.tensor([0.0, 1.0, -0.5]).double().requires_grad_(),
              torch.tensor([0.5, 0.3, 4.0]).double().requires_grad_())  # fmt: skip

    def rule(skip_mean, skip_var, branch_mean, branch_var):
        return moments.residual_relu((skip_mean, skip_var), (branch_mean, branch_var))

    assert torch.autograd.gradcheck(rule, inputs, atol=1e-5)


def _window_correlation(decay: float) -> torch.Tensor:
    """The correlation of a 3x3 window of a field whose correlation decays as decay^distance."""
    position = torch.tensor([(i, j) for i in range(3) for j in range(3)], dtype=torch.float64)
    return decay ** torch.cdist(position, position)


def _filter_correlation(seed: int) -> torch.Tensor:
    """The correlation of a 3x3 window of neighbouring outputs of a random 5x5 filter on
    independent pixels (weak, partly negative correlations)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(1, 1, 5, 5, generator=g, dtype=torch.float64)
    field = torch.nn.functional.conv2d(torch.nn.functional.pad(w, (4,) * 4), w)[0, 0]  # 9x9 lags
    position = [(i, j) for i in range(3) for j in range(3)]
    cov = torch.stack([torch.stack([field[4 + b[0] - a[0], 4 + b[1] - a[1]] for b in position])
                       for a in position])  # fmt: skip
    return cov / field[4, 4]


def _sampled_max(correlation: torch.Tensor, draws: int = 1_000_000) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    u = torch.randn(draws, len(correlation), generator=g, dtype=torch.float64)
    return (u @ torch.linalg.cholesky(correlation).T).max(1).values


def _mean_correlation(correlation: torch.Tensor) -> torch.Tensor:
    k = len(correlation)
    return (correlation.sum() - k) / (k * k - k)


@pytest.mark.parametrize("rho", [-0.5, 0.0, 0.6, 0.99])
def test_exchangeable_max_of_two_is_the_closed_form(rho):
    """max(u1, u2) of standard Gaussians with correlation rho: mean sqrt((1 - rho) / pi),
    and E[max^2] = 1 (either value's square, by symmetry); to 1e-7, the accuracy of the
    table of maxima of independent Gaussians (trapezoid rule, spacing 1.2e-4)."""
    mean, var = moments.exchangeable_max(torch.tensor(rho, dtype=torch.float64), 2)
    expected = math.sqrt((1 - rho) / math.pi)
    assert mean.item() == pytest.approx(expected, abs=1e-7)
    assert var.item() == pytest.approx(1 - expected**2, abs=1e-7)


def test_the_max_of_three_independent_gaussians_is_the_closed_form():
    """E[max] = 3 / (2 sqrt(pi)), E[max^2] = 1 + sqrt(3) / (2 pi) (David & Nagaraja)."""
    mean, var = moments.exchangeable_max(torch.tensor(0.0, dtype=torch.float64), 3)
    expected = 3 / (2 * math.sqrt(math.pi))
    assert mean.item() == pytest.approx(expected, abs=1e-7)
    assert var.item() == pytest.approx(1 + math.sqrt(3) / (2 * math.pi) - expected**2, abs=1e-7)


@pytest.mark.parametrize("k, rho", [(4, 0.3), (9, -0.1), (9, 0.0), (9, 0.8)])
def test_exchangeable_max_is_exact_for_equal_correlations(k, rho):
    """Every pair correlated by rho (10^6 draws): the mean within 4 standard errors, the
    variance within 1% (its sampling error about 0.2%)."""
    correlation = torch.full((k, k), rho, dtype=torch.float64).fill_diagonal_(1.0)
    peak = _sampled_max(correlation)
    mean, var = moments.exchangeable_max(torch.tensor(rho, dtype=torch.float64), k)
    assert abs(mean.item() - peak.mean().item()) < 4 * peak.std().item() / 1000
    assert var.item() == pytest.approx(peak.var().item(), rel=0.01)


@pytest.mark.parametrize("window", ["decay 0.3", "decay 0.8", "decay 0.95", "filter 0", "filter 1"])
def test_exchangeable_max_of_a_window_against_monte_carlo(window):
    """The max of a 3x3 window whose correlations differ, with their mean (10^6 draws):
    within 0.03 sd in the mean and 3% in the variance (benchmarks/max_rules.py measures
    up to +0.02 sd and within 1.1% on such windows)."""
    kind, value = window.split()
    correlation = (_window_correlation(float(value)) if kind == "decay"
                   else _filter_correlation(int(value)))  # fmt: skip
    peak = _sampled_max(correlation)
    mean, var = moments.exchangeable_max(_mean_correlation(correlation), 9)
    assert abs(mean.item() - peak.mean().item()) < 0.03
    assert var.item() == pytest.approx(peak.var().item(), rel=0.03)


def test_exchangeable_max_limits_counts_and_gradient():
    """Full correlation: the max of equal values, (0, 1) (the papers' rule), also one value
    alone; a count per entry of the last dim; a correlation below -1/(n-1) (impossible)
    is raised to it; finite differences through the correlation."""
    full = moments.exchangeable_max(torch.ones(3, dtype=torch.float64), [1, 4, 9])
    torch.testing.assert_close(full[0], torch.zeros(3, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(full[1], torch.ones(3, dtype=torch.float64))
    rho = torch.tensor([[0.2, 0.5], [0.7, -0.9]], dtype=torch.float64)
    mean, var = moments.exchangeable_max(rho, [4, 9])
    for i in range(2):
        for j, n in enumerate((4, 9)):
            alone = moments.exchangeable_max(rho[i, j], n)
            torch.testing.assert_close(torch.stack([mean[i, j], var[i, j]]), torch.stack(alone))
    lowest = moments.exchangeable_max(torch.tensor(-1 / 8, dtype=torch.float64), 9)
    torch.testing.assert_close(mean[1, 1], lowest[0])
    start = torch.tensor([0.1, 0.6, 0.95], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda r: moments.exchangeable_max(r, [2, 4, 9]), (start,))


def _taps(conv, size):
    from stochnorm.plan import taps_inside

    return (torch.tensor(t, dtype=torch.float64) for t in taps_inside(size, conv))


def test_conv_with_padding_against_monte_carlo():
    """A strided, grouped 3x3 conv with zero padding on 7x7 maps of independent Gaussian
    pixels (100,000 maps, float64), the moments pooled over output positions: the mean within
    0.005 output sd and the variance within 1% (sampling errors about 0.001-0.002 on
    either); `linear`, which takes every tap as inside, is off by more than 10%."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 4, 3, padding=1, stride=2, groups=2).double()
    mean_in = torch.tensor([0.5, -1.0, 0.0, 1.0], dtype=torch.float64)
    var_in = torch.tensor([1.0, 2.0, 0.25, 0.5], dtype=torch.float64)
    noise = torch.randn(100_000, 4, 7, 7, generator=g, dtype=torch.float64)
    with torch.no_grad():
        out = conv(mean_in[:, None, None] + var_in.sqrt()[:, None, None] * noise)
        mean, var = moments.conv_with_padding(mean_in, var_in, conv.weight, *_taps(conv, (7, 7)),
                                              conv.bias)  # fmt: skip
        _, plain_var = moments.linear(mean_in, var_in, conv.weight, conv.bias)
    true_mean, true_var = out.mean((0, 2, 3)), out.var((0, 2, 3))
    assert ((mean - true_mean) / true_var.sqrt()).abs().max() < 0.005
    torch.testing.assert_close(var, true_var, rtol=0.01, atol=0)
    assert (plain_var / true_var - 1).abs().max() > 0.1


def test_conv_with_padding_without_padding_is_the_plain_conv_rule():
    conv = torch.nn.Conv2d(3, 5, (3, 2), dilation=(1, 2)).double()
    mean, var = torch.randn(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64)
    with torch.no_grad():
        found = moments.conv_with_padding(mean, var, conv.weight, *_taps(conv, (6, 6)), conv.bias)
        expected = moments.linear(mean, var, conv.weight, conv.bias)
    torch.testing.assert_close(found, expected)


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_with_padding_gradient_against_finite_differences(groups):
    conv = torch.nn.Conv2d(4, 6, 3, padding=1, stride=2, groups=groups).double()
    inside, pairs = _taps(conv, (5, 6))
    inputs = (torch.tensor([0.5, -1.0, 0.0, 1.0], dtype=torch.float64).requires_grad_(),
              torch.tensor([1.0, 2.0, 0.25, 0.5], dtype=torch.float64).requires_grad_(),
              conv.weight.detach().clone().requires_grad_())  # fmt: skip

    def rule(mean, var, weight):
        return moments.conv_with_padding(mean, var, weight, inside, pairs)

    assert torch.autograd.gradcheck(rule, inputs)
