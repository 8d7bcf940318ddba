"""Closed-form propagation of per-channel means and variances (SPEC section 2; Shekhovtsov &
Flach, arXiv 1803.10560 and 1803.10590).

Every rule maps the moments of its input to the moments of its output, channel by channel.
A state is a pair `(mean, var)` of tensors [C]. The papers' assumptions: the units entering
a linear map are independent, and a pre-activation is Gaussian. The rules are
differentiable, so statistics computed with them can take part in training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

_SQRT2 = math.sqrt(2.0)
_INV_SQRT2 = 1.0 / _SQRT2
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def leaky_relu(mean: Tensor, var: Tensor, negative_slope: float = 0.01) -> tuple[Tensor, Tensor]:
    """Moments of `max(x, a x)` (a = negative_slope; a = 0 is ReLU) for x ~ N(m, v):

        E[y]   = m (Phi(t) + a Phi(-t)) + (1 - a) sd phi(t)
        Var[y] = E[y^2] - E[y]^2,  E[y^2] = (m^2 + v)(Phi(t) + a^2 Phi(-t)) + (1 - a^2) m sd phi(t)

    with sd = sqrt(v), t = m / sd. The variance is evaluated in the equivalent form

        Var[y] = v (a^2 + 2 a (1 - a) Phi(t) + (1 - a)^2 r(t)),
        r(t)   = Var[relu(z)] for z ~ N(t, 1) = t^2 Phi(t) Phi(-t) + Phi(t) + t phi(t) (1 - 2 Phi(t)) - phi(t)^2,

    (from y = a x + (1 - a) relu(x) and Cov(x, relu(x)) = v Phi(t)), which avoids the
    cancellation of E[y^2] - E[y]^2 when |m| >> sd (in float32 it loses all digits at
    m / sd ~ 100). As v -> 0 the rule tends to the leaky ReLU of m with variance 0.
    """
    return _LeakyReluMoments.apply(mean, var, float(negative_slope))


class _LeakyReluMoments(torch.autograd.Function):
    """`leaky_relu`'s rule with its gradient in closed form, written in few tensor
    operations (each one is a kernel launch in every training step): autograd's chain
    through erfc, exp and the variance form takes about twice as many. With y' = dy/dx and
    Stein's identities for x ~ N(m, v), d/dm E[f] = E[f'] and d/dv E[f] = E[f''] / 2:

        dE[y]/dm = E[y'] = Phi(t) + a Phi(-t),         dE[y]/dv = (1 - a) phi(t) / (2 sd),
        dVar/dm  = 2 (E[y y'] - E[y] E[y']),           dVar/dv  = E[y'^2] - 2 E[y] dE[y]/dv,

    with E[y y'] = m (Phi(t) + a^2 Phi(-t)) + (1 - a^2) sd phi(t) and
    E[y'^2] = Phi(t) + a^2 Phi(-t). Below, `e` = exp(-t^2 / 2) = phi(t) sqrt(2 pi): the
    constant is folded into the coefficients of the fused multiply-adds."""

    @staticmethod
    def forward(ctx, mean: Tensor, var: Tensor, a: float) -> tuple[Tensor, Tensor]:
        # a variance clamped to the smallest normal number: the limit v -> 0 stays finite
        # (t is clamped; Phi(40) = 1 and phi(40) = 0 in float64) and the output variance
        # is below 1e-37 there instead of 0
        var = var.clamp_min(torch.finfo(mean.dtype).tiny)
        sd = var.sqrt()
        t = (mean / sd).clamp(-40.0, 40.0)
        s = t * -_INV_SQRT2  # Phi(t) = erfc(s) / 2, Phi(-t) = erfc(-s) / 2
        cdf, cdf_neg = torch.erfc(s) * 0.5, torch.erfc(-s) * 0.5
        tt = t * t
        e = torch.exp(tt * -0.5)
        slope = cdf if a == 0 else torch.add(cdf, cdf_neg, alpha=a)  # E[y']
        mean_out = torch.addcmul(mean * slope, sd, e, value=(1 - a) * _INV_SQRT_2PI)
        # r(t) = t^2 Phi(t) Phi(-t) + Phi(t) + t phi(t) (Phi(-t) - Phi(t)) - phi(t)^2
        r = torch.addcmul(cdf, tt, cdf * cdf_neg)
        r = torch.addcmul(r, t * e, cdf_neg - cdf, value=_INV_SQRT_2PI)
        r = torch.addcmul(r, e, e, value=-(_INV_SQRT_2PI**2)).clamp_min(0.0)
        ctx.save_for_backward(mean, sd, cdf, cdf_neg, e, slope, mean_out)
        ctx.a = a
        return mean_out, _output_variance(var, r, cdf, a)

    @staticmethod
    def backward(ctx, grad_mean: Tensor, grad_var: Tensor) -> tuple[Tensor, Tensor, None]:
        mean, sd, cdf, cdf_neg, e, slope, mean_out = ctx.saved_tensors
        a = ctx.a
        square_slope = cdf if a == 0 else torch.add(cdf, cdf_neg, alpha=a * a)  # E[y'^2]
        e_sd = e / sd  # dE[y]/dv = (1 - a) / (2 sqrt(2 pi)) * e_sd
        by_var = 0.5 * (1 - a) * _INV_SQRT_2PI
        y_slope = torch.addcmul(mean * square_slope, sd, e, value=(1 - a * a) * _INV_SQRT_2PI)
        covariance = torch.addcmul(y_slope, mean_out, slope, value=-1.0)  # E[yy'] - E[y]E[y']
        d_mean = torch.addcmul(grad_mean * slope, grad_var, covariance, value=2.0)
        by_var_of_var = torch.addcmul(square_slope, mean_out, e_sd, value=-2.0 * by_var)
        d_var = torch.addcmul(grad_var * by_var_of_var, grad_mean, e_sd, value=by_var)
        return d_mean, d_var, None


def _output_variance(var: Tensor, r: Tensor, cdf: Tensor, a: float) -> Tensor:
    """v (a^2 + 2 a (1 - a) Phi(t) + (1 - a)^2 r(t)) in at most three operations (the larger
    of the two coefficients factored out, so that no coefficient is huge)."""
    if a == 0:
        return var * r
    if a <= 0.5:
        inner, value = torch.add(r, cdf, alpha=2 * a / (1 - a)), (1 - a) ** 2
    else:
        inner, value = torch.add(cdf, r, alpha=(1 - a) / (2 * a)), 2 * a * (1 - a)
    return torch.addcmul(var * (a * a), var, inner, value=value)


def relu(mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
    """Moments of `max(x, 0)` for x ~ N(mean, var): `leaky_relu` with slope 0."""
    return leaky_relu(mean, var, 0.0)


def linear(
    mean: Tensor, var: Tensor, weight: Tensor, bias: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Moments of the outputs of a conv or linear layer with independent inputs:

        mean_out[o] = sum_{c,k} W[o,c,k] mean[c] + a[o],   var_out[o] = sum_{c,k} W[o,c,k]^2 var[c]

    `weight` is [O, C] (linear) or [O, C/groups, k1, k2, ...] (conv); zero padding at the
    borders and spatial correlation are ignored. A linear layer may take more inputs than
    there are channels (after flattening C x H x W features): each channel's moments are
    then repeated over its H x W positions, in the order `torch.flatten` gives them.
    """
    channels = mean.numel()
    groups = 1
    if weight.ndim > 2:  # conv: sums over kernel positions, channels split into groups
        groups, rem = divmod(channels, weight.shape[1])
        if rem or weight.shape[0] % max(groups, 1) or groups == 0:
            raise ValueError(f"{channels} channels cannot feed a conv weight {tuple(weight.shape)}")
    elif weight.shape[1] != channels:
        repeat, rem = divmod(weight.shape[1], channels)
        if rem:
            raise ValueError(f"{channels} channels cannot feed {weight.shape[1]} features")
        mean, var = mean.repeat_interleave(repeat), var.repeat_interleave(repeat)
    mean_out, var_out = _LinearMoments.apply(mean, var, weight, groups)
    return (mean_out if bias is None else mean_out + bias), var_out


class _LinearMoments(torch.autograd.Function):
    """`linear`'s rule (without the bias) with its gradient in closed form: autograd's
    chain through the kernel sums and their squares takes about twice the operations. With
    W1[o, c] = sum_k W[o,c,k] and W2[o, c] = sum_k W[o,c,k]^2 (c within o's group):

        d/dmean = W1^T g_mean,   d/dvar = W2^T g_var,
        d/dW[o,c,k] = g_mean[o] mean[c] + 2 g_var[o] var[c] W[o,c,k]."""

    @staticmethod
    def forward(ctx, mean: Tensor, var: Tensor, weight: Tensor, groups: int):
        dims = tuple(range(2, weight.ndim))
        w1 = weight.sum(dims) if dims else weight
        w2 = (weight * weight).sum(dims) if dims else weight * weight
        ctx.save_for_backward(mean, var, weight, w1, w2)
        ctx.groups = groups
        return _grouped_product(w1, mean, groups), _grouped_product(w2, var, groups)

    @staticmethod
    def backward(ctx, grad_mean: Tensor, grad_var: Tensor):
        mean, var, weight, w1, w2 = ctx.saved_tensors
        groups = ctx.groups
        need_mean, need_var, need_weight, _ = ctx.needs_input_grad
        d_mean = _grouped_product(w1, grad_mean, groups, transpose=True) if need_mean else None
        d_var = _grouped_product(w2, grad_var, groups, transpose=True) if need_var else None
        d_weight = None
        if need_weight:
            shape = w1.shape + (1,) * (weight.ndim - 2)
            by_mean = _grouped_outer(grad_mean, mean, groups).view(shape)
            by_var = _grouped_outer(grad_var, var, groups).view(shape)
            d_weight = torch.addcmul(by_mean, weight, by_var, value=2.0)
        return d_mean, d_var, d_weight, None


def _grouped_product(w: Tensor, x: Tensor, groups: int, transpose: bool = False) -> Tensor:
    """`w @ x` for the per-group matrices of a grouped layer: w [O, C/g] holds g blocks of
    O/g rows, block j reading channels j C/g ... of x [C] (transposed: w^T @ x, x [O])."""
    if groups == 1:
        return torch.mv(w.t() if transpose else w, x)
    blocks = w.view(groups, w.shape[0] // groups, w.shape[1])
    if transpose:
        blocks = blocks.transpose(1, 2)
    return torch.bmm(blocks, x.view(groups, -1, 1)).flatten()


def _grouped_outer(g: Tensor, x: Tensor, groups: int) -> Tensor:
    """[O, C/g]: g[o] x[c] for the channels c of output o's group (the outer product for
    one group)."""
    if groups == 1:
        return torch.outer(g, x)
    per_group = g.view(groups, -1, 1) * x.view(groups, 1, -1)
    return per_group.view(g.numel(), -1)


def conv_with_padding(
    mean: Tensor,
    var: Tensor,
    weight: Tensor,
    inside: Tensor,
    pairs: Tensor,
    bias: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """`linear`'s conv rule with zero padding counted: the moments of the outputs pooled
    over output positions, where a position near the border sums only the kernel taps that
    fall inside the input. `inside` [K] is the fraction of output positions at which each
    of the K = k1 * k2 ... taps reads the input, `pairs` [K, K] that at which two taps both
    do. With the independence `linear` assumes, and p_o[k] = sum_c W[o,c,k] mean[c]:

        mean_out[o] = p_o . inside + a[o]
        var_out[o]  = sum_{c,k} W[o,c,k]^2 var[c] inside[k]          (within positions)
                      + p_o^T pairs p_o - (p_o . inside)^2            (between positions)

    `linear` is the case of every tap inside (inside = 1, pairs = 1). The gradient is in
    closed form (`_PaddedConvMoments`)."""
    mean_out, var_out = _PaddedConvMoments.apply(mean, var, weight, inside, pairs)
    return (mean_out if bias is None else mean_out + bias), var_out.clamp_min(0.0)


class _PaddedConvMoments(torch.autograd.Function):
    """`conv_with_padding`'s rule (without the bias) with its gradient in closed form. With
    p[o,k] = sum_c W[o,c,k] m[c], q = p pairs, centre = p . inside (c within o's group):

        d/dp[o,k] = (g_mean[o] - 2 g_var[o] centre[o]) inside[k] + 2 g_var[o] q[o,k]
        d/dm[c] = sum_{o,k} d/dp[o,k] W[o,c,k],   d/dv[c] = sum_o g_var[o] (W^2 inside)[o,c]
        d/dW[o,c,k] = d/dp[o,k] m[c] + 2 g_var[o] v[c] inside[k] W[o,c,k]."""

    @staticmethod
    def forward(ctx, mean: Tensor, var: Tensor, weight: Tensor, inside: Tensor, pairs: Tensor):
        groups = mean.numel() // weight.shape[1]
        w = weight.flatten(2)  # [O, C/g, K]
        per_out = mean.view(groups, 1, -1).expand(groups, w.shape[0] // groups, -1)
        per_tap = torch.bmm(per_out.reshape(w.shape[0], 1, -1), w).squeeze(1)  # [O, K]
        squared_inside = (w * w) @ inside  # [O, C/g]
        centre = per_tap @ inside
        across = per_tap @ pairs
        between = (across * per_tap).sum(1) - centre * centre
        var_out = _grouped_product(squared_inside, var, groups) + between
        ctx.save_for_backward(mean, var, weight, inside, per_tap, across, centre, squared_inside)
        ctx.groups = groups
        return centre, var_out

    @staticmethod
    def backward(ctx, grad_mean: Tensor, grad_var: Tensor):
        mean, var, weight, inside, per_tap, across, centre, squared_inside = ctx.saved_tensors
        groups, w = ctx.groups, weight.flatten(2)
        by_tap = torch.addcmul(
            torch.outer(grad_mean - 2 * grad_var * centre, inside), grad_var[:, None], across,
            value=2.0,
        )  # fmt: skip
        need_mean, need_var, need_weight, _, _ = ctx.needs_input_grad
        d_mean = d_var = d_weight = None
        if need_mean:  # the sum over o (within each group) and k
            per_weight = torch.einsum("ok,ock->oc", by_tap, w)
            d_mean = per_weight.view(groups, -1, w.shape[1]).sum(1).flatten()
        if need_var:
            d_var = _grouped_product(squared_inside, grad_var, groups, transpose=True)
        if need_weight:
            rows = w.shape[0] // groups
            mean_per_out = mean.view(groups, 1, -1).expand(groups, rows, -1).reshape(w.shape[:2])
            var_per_out = var.view(groups, 1, -1).expand(groups, rows, -1).reshape(w.shape[:2])
            scale = var_per_out[:, :, None] * (grad_var[:, None] * inside)[:, None, :]
            d_weight = torch.addcmul(by_tap[:, None, :] * mean_per_out[:, :, None], w, scale,
                                     value=2.0).view_as(weight)  # fmt: skip
        return d_mean, d_var, d_weight, None, None


def linear_from_patches(
    patch_mean: Tensor, patch_cov: Tensor, weight: Tensor, bias: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Exact moments of a conv/linear output from the mean [D] and covariance [D, D] of its
    input patches (D = C * k1 * k2 ..., in the order of `weight.flatten(1)`):
    mean_out = W mu + a, var_out[o] = w_o^T Cov w_o. For the first layer these can be
    measured from the data, spatial correlation and zero padding included."""
    w = weight.flatten(1)
    if w.shape[1] != patch_mean.numel():
        raise ValueError(
            f"patches of {patch_mean.numel()} values cannot feed a weight {tuple(weight.shape)}"
        )
    mean_out = w @ patch_mean
    var_out = ((w @ patch_cov) * w).sum(1).clamp_min(0.0)
    return (mean_out if bias is None else mean_out + bias), var_out


def affine(mean: Tensor, var: Tensor, scale: Tensor, shift: Tensor) -> tuple[Tensor, Tensor]:
    """Moments of `x * scale + shift` (per channel)."""
    return mean * scale + shift, var * scale * scale


def add(*states: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Moments of a sum of independent branches: means add, variances add."""
    means, variances = zip(*states, strict=True)
    return sum(means), sum(variances)


def average_pool(
    mean: Tensor, var: Tensor, window: int, correlation: str = "full"
) -> tuple[Tensor, Tensor]:
    """Moments of the average of `window` values of one channel (k x k pooling: window = k^2;
    global pooling: window = H * W). The mean is unchanged. The variance is unchanged if the
    pooled values are perfectly correlated (`correlation="full"`) and divided by `window` if
    they are independent (`"none"`). Neither holds in a real network: our default is "full"
    (neighbouring activations are strongly correlated), an approximation measured against
    true statistics in the lab.
    """
    if correlation == "full":
        return mean, var
    if correlation == "none":
        return mean, var / window
    raise ValueError(f"correlation must be 'full' or 'none', got {correlation!r}")


_HERMITE_CACHE: dict[tuple[int, torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}


def _hermite(nodes: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """Gauss-Hermite nodes z_i and weights w_i / sqrt(pi) for E[g(Z)], Z ~ N(0, 1) =
    sum_i w_i g(sqrt(2) z_i) / sqrt(pi), in `like`'s dtype and device (cached)."""
    key = (nodes, like.dtype, like.device)
    if key not in _HERMITE_CACHE:
        z, w = (torch.from_numpy(t) for t in np.polynomial.hermite.hermgauss(nodes))
        _HERMITE_CACHE[key] = ((_SQRT2 * z).to(like), (w / math.sqrt(math.pi)).to(like))
    return _HERMITE_CACHE[key]


def elementwise(mean: Tensor, var: Tensor, function, nodes: int = 48) -> tuple[Tensor, Tensor]:
    """Moments of `function(x)` applied elementwise, x ~ N(mean, var), for any activation
    without a closed form (SiLU, GELU, sigmoid, tanh, hardswish, ELU, softplus, ...) by
    Gauss-Hermite quadrature with `nodes` points:

        E[f(x)] ~ sum_i w_i f(m + sd z_i),   Var[f(x)] = sum_i w_i (f(m + sd z_i) - E[f(x)])^2

    (the variance about the mean, which keeps it >= 0 and free of cancellation).
    Exact for polynomials of degree < 2 * nodes; measured against adaptive quadrature
    (tests): for smooth activations below 1e-3 of the input's sd (far smaller while the sd
    is below the activation's scale of curvature, ~1), for kinked ones (hardswish, ReLU6) a
    few 1e-3 of it; both far below the error of the Gaussian assumption itself.
    Differentiable in mean and var (at var = 0 the sd is clamped to the dtype's smallest
    normal, so gradients stay finite)."""
    z, w = _hermite(nodes, mean)
    sd = var.clamp_min(torch.finfo(var.dtype).tiny).sqrt()
    values = function(mean[..., None] + sd[..., None] * z)
    mean_out = (values * w).sum(-1)
    var_out = ((values - mean_out[..., None]).pow(2) * w).sum(-1)
    return mean_out, var_out


def multiply(a: tuple[Tensor, Tensor], b: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Moments of the product of independent x and y (e.g. squeeze-excite gating, x *
    sigmoid(g)): E[xy] = m_x m_y, Var[xy] = v_x v_y + v_x m_y^2 + v_y m_x^2."""
    (mx, vx), (my, vy) = a, b
    return mx * my, vx * vy + vx * my * my + vy * mx * mx


_RECTIFIED_RANGE = (-8.0, 20.0)  # t = m / sd of the source; Phi(-8) = 6e-16 (float32-safe)
_RECTIFIED_CACHE: dict[tuple[torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}


def _unit_rectification(t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """For z ~ N(t, 1): k(t) = mean / sd of relu(z), its derivative k'(t), the variance s^2
    of relu(z) and its derivative. With mu = E[relu(z)] and Phi = Phi(t): mu' = Phi and
    (s^2)' = 2 mu (1 - Phi), so k' = Phi / s - mu^2 (1 - Phi) / s^3."""
    mu, s2 = relu(t, torch.ones_like(t))
    s, cdf = s2.sqrt(), 0.5 * torch.erfc(-t * _INV_SQRT2)
    return mu / s, cdf / s - mu * mu * (1 - cdf) / (s * s2), s2, 2 * mu * (1 - cdf)


def _rectified_table(like: Tensor) -> tuple[Tensor, Tensor]:
    """k(t) on a grid of t over `_RECTIFIED_RANGE` (spacing 0.0017; k increases with t) and
    the rows [t, k'(t)] (`_unit_rectification`; computed in float64, cached in `like`'s
    dtype and device)."""
    key = (like.dtype, like.device)
    if key not in _RECTIFIED_CACHE:
        t = torch.linspace(*_RECTIFIED_RANGE, 16385, dtype=torch.float64)
        ratio, slope, _, _ = _unit_rectification(t)
        _RECTIFIED_CACHE[key] = (ratio.to(like), torch.stack([t, slope], dim=1).to(like))
    return _RECTIFIED_CACHE[key]


def rectified_source(mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
    """The moments (m, v) of the Gaussian x whose rectification relu(x) has `mean` and `var`
    (per channel): the inverse of `relu`'s rule. mean / sd of relu(x) is k(t) for t = m /
    sqrt(v), an increasing function: t is two Newton steps from the nearest point of a
    table of k (the first from the table, the second from k evaluated there; error below
    1e-9), and the scale follows from the variance of relu(N(t, 1)). Differentiable: the
    gradient flows through the last Newton step (dt/dk = 1 / k'(t)). Targets beyond the
    table (t < -8: a channel that is almost always 0; t > 20: one that is almost never) are
    clamped to its ends."""
    ratio, rows = _rectified_table(mean)
    sd = var.clamp_min(torch.finfo(var.dtype).tiny).sqrt()
    target = (mean / sd).clamp(ratio[0], ratio[-1])
    with torch.no_grad():
        index = torch.searchsorted(ratio, target.contiguous()).clamp_max(len(ratio) - 1)
        grid_t, grid_slope = rows[index].unbind(-1)
        start = grid_t + (target - ratio[index]) / grid_slope
        k, slope, s2, s2_slope = _unit_rectification(start)
    t = start + (target - k) / slope
    scale = sd * torch.rsqrt(s2 + s2_slope * (t - start))
    return t * scale, scale * scale


_LEGENDRE_CACHE: dict[tuple[int, torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}


def _legendre(nodes: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """Gauss-Legendre nodes on (0, 1) and weights summing to 1 (cached per dtype, device)."""
    key = (nodes, like.dtype, like.device)
    if key not in _LEGENDRE_CACHE:
        x, w = (torch.from_numpy(t) for t in np.polynomial.legendre.leggauss(nodes))
        _LEGENDRE_CACHE[key] = (((x + 1) / 2).to(like), (w / 2).to(like))
    return _LEGENDRE_CACHE[key]


def residual_relu(
    skip: tuple[Tensor, Tensor], branch: tuple[Tensor, Tensor], nodes: int = 96
) -> tuple[Tensor, Tensor]:
    """Moments of relu(r + b), the ReLU after a residual addition (per channel): r =
    relu(a) an earlier ReLU's output with moments `skip`, b ~ N(`branch`) independent of
    it. `relu`'s rule would take r + b as Gaussian, which it is not: at initialization
    the branch of a block whose last normalization starts at scale 0 vanishes, and the
    result is r itself, not r clipped once more.

    The source a ~ N(m, v) of r is `rectified_source(*skip)`. Where a <= 0 (probability
    P = Phi(-m / sqrt(v))) the value is relu(b), in closed form; where a > 0 it is relu(a +
    b), whose moments over b are `relu`'s rule, integrated over a with `nodes`-point
    Gauss-Legendre quadrature in u = Phi((a - m) / sqrt(v)) on (P, 1), where the integrand
    has no kink. Exact under the independence that `add` assumes too, up to the
    quadrature (below 2e-4 relative where the branch vanishes, tested; the integrand grows
    without bound as u -> 1); tested against Monte-Carlo."""
    source_mean, source_var = rectified_source(*skip)
    branch_mean, branch_var = branch
    u, w = _legendre(nodes, source_mean)
    sd = source_var.sqrt()
    below = 0.5 * torch.erfc(source_mean / (sd * _SQRT2))  # P(a <= 0)
    position = below[..., None] + (1 - below[..., None]) * u
    a = source_mean[..., None] + sd[..., None] * _SQRT2 * torch.erfinv(2 * position - 1)
    a = a.clamp_min(0)  # a > 0 in exact arithmetic; round-off at the lowest node
    inner_mean, inner_var = relu(a + branch_mean[..., None], branch_var[..., None].expand_as(a))
    share = (1 - below[..., None]) * w  # the probability of each node's slice
    zero_mean, zero_var = relu(branch_mean, branch_var)
    mean = below * zero_mean + (inner_mean * share).sum(-1)
    # the law of total variance over the mixture of the slices: no cancellation
    spread = inner_var + (inner_mean - mean[..., None]).square()
    return mean, below * (zero_var + (zero_mean - mean).square()) + (spread * share).sum(-1)


_MAX_CACHE: dict[tuple[int, torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}


def _max_of_normals(largest: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance of the max of n independent standard Gaussians, for n = 0 ... `largest`
    (n = 0 is a placeholder: 0 and 1), from its density n phi(x) Phi(x)^(n-1) by the
    trapezoid rule on [-12, 12] (200,000 intervals, float64; cached)."""
    key = (largest, like.dtype, like.device)
    if key not in _MAX_CACHE:
        x = torch.linspace(-12.0, 12.0, 200_001, dtype=torch.float64)
        density = torch.exp(-0.5 * x * x) * _INV_SQRT_2PI
        cdf = 0.5 * torch.erfc(-x * _INV_SQRT2)
        means, variances = [0.0], [1.0]
        for n in range(1, largest + 1):
            law = n * density * cdf ** (n - 1)
            mean = torch.trapezoid(x * law, x)
            means.append(mean.item())
            variances.append((torch.trapezoid(x * x * law, x) - mean * mean).item())
        _MAX_CACHE[key] = (torch.tensor(means).to(like), torch.tensor(variances).to(like))
    return _MAX_CACHE[key]


def exchangeable_max(correlation: Tensor, count: int | Sequence[int]) -> tuple[Tensor, Tensor]:
    """Mean and variance of max(u_1, ..., u_n) for n = `count` standard Gaussians whose
    pairwise correlations average `correlation` [..., T] (`count`: one n, or one per entry of
    the last dim): the max-pool rule, in units of the pooled values' shared sd about their
    shared mean.

    For exchangeable Gaussians (every pair correlated by rho, -1/(n-1) <= rho <= 1), u_i =
    sqrt(1 - rho) z_i + b zbar with independent z, and by Stein's identity Cov(max z, zbar)
    = 1/n, which gives exactly

        E[max u] = sqrt(1 - rho) e_n,   Var[max u] = rho + (1 - rho) v_n,

    with e_n, v_n the mean and variance of the max of n independent standard Gaussians
    (`_max_of_normals`). For unequal correlations, rho is their mean: an approximation,
    against Monte-Carlo on 3x3 windows of smooth fields and of random filters up to 0.02 sd
    high in the mean and within 1.1% in the variance, where Clark's (1961) pairwise
    recursion is as close in the mean but up to 12% low in the variance
    (`benchmarks/max_rules.py`, results/benchmarks/max-rules.md), for a fraction of its
    operations. rho = 1 gives (0, 1), the papers' rule (the max of equal
    values)."""
    counts = [count] if isinstance(count, int) else list(count)
    means, variances = _max_of_normals(max(counts), correlation)
    lowest = torch.tensor([-1.0 / (n - 1) if n > 1 else 0.0 for n in counts]).to(correlation)
    if isinstance(count, int):
        lowest = lowest[0]
    rho = torch.maximum(correlation.clamp_max(1.0), lowest)
    index = counts[0] if isinstance(count, int) else torch.tensor(counts, device=rho.device)
    spread = (1 - rho).clamp_min(torch.finfo(rho.dtype).tiny)
    return spread.sqrt() * means[index], 1 - spread * (1 - variances[index])
