"""Closed-form propagation of per-channel means and variances (SPEC section 2; Shekhovtsov &
Flach, arXiv 1803.10560 and 1803.10590).

Every rule maps the moments of its input to the moments of its output, channel by channel.
A state is a pair `(mean, var)` of tensors [C]. The papers' assumptions: the units entering
a linear map are independent, and a pre-activation is Gaussian. The rules are
differentiable, so statistics computed with them can take part in training.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

_SQRT2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _normal_cdf(t: Tensor) -> Tensor:
    # erfc keeps the lower tail accurate (1 + erf cancels for t << 0)
    return 0.5 * torch.erfc(-t / _SQRT2)


def _normal_pdf(t: Tensor) -> Tensor:
    return _INV_SQRT_2PI * torch.exp(-0.5 * t * t)


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
    """`leaky_relu`'s rule with its gradient in closed form (a few operations instead of
    autograd's chain through erfc, exp and the variance form). With y' = dy/dx and
    Stein's identities for x ~ N(m, v), d/dm E[f] = E[f'] and d/dv E[f] = E[f''] / 2:

        dE[y]/dm = E[y'] = Phi(t) + a Phi(-t),         dE[y]/dv = (1 - a) phi(t) / (2 sd),
        dVar/dm  = 2 (E[y y'] - E[y] E[y']),           dVar/dv  = E[y'^2] - 2 E[y] dE[y]/dv,

    with E[y y'] = m (Phi(t) + a^2 Phi(-t)) + (1 - a^2) sd phi(t) and
    E[y'^2] = Phi(t) + a^2 Phi(-t)."""

    @staticmethod
    def forward(ctx, mean: Tensor, var: Tensor, a: float) -> tuple[Tensor, Tensor]:
        var = var.clamp_min(0.0)
        sd = var.sqrt()
        tiny = torch.finfo(mean.dtype).tiny
        # Phi(40) = 1 and phi(40) = 0 in float64; clamping keeps t^2 finite where sd = 0
        t = (mean / sd.clamp_min(tiny)).clamp(-40.0, 40.0)
        cdf, cdf_neg, pdf = _normal_cdf(t), _normal_cdf(-t), _normal_pdf(t)
        slope = cdf + a * cdf_neg
        mean_out = mean * slope + (1 - a) * sd * pdf
        r = (t * t * cdf * cdf_neg + cdf + t * pdf * (cdf_neg - cdf) - pdf * pdf).clamp_min(0.0)
        var_out = var * (a * a + 2 * a * (1 - a) * cdf + (1 - a) ** 2 * r)
        ctx.save_for_backward(mean, sd, cdf, cdf_neg, pdf, slope, mean_out)
        ctx.a = a
        return mean_out, var_out

    @staticmethod
    def backward(ctx, grad_mean: Tensor, grad_var: Tensor) -> tuple[Tensor, Tensor, None]:
        mean, sd, cdf, cdf_neg, pdf, slope, mean_out = ctx.saved_tensors
        a = ctx.a
        square_slope = cdf + a * a * cdf_neg  # E[y'^2]
        by_var = 0.5 * (1 - a) * pdf / sd.clamp_min(torch.finfo(sd.dtype).tiny)
        y_slope = mean * square_slope + (1 - a * a) * sd * pdf  # E[y y']
        d_mean = grad_mean * slope + grad_var * 2 * (y_slope - mean_out * slope)
        d_var = grad_mean * by_var + grad_var * (square_slope - 2 * mean_out * by_var)
        return d_mean, d_var, None


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
    if weight.ndim > 2:  # conv: sum over kernel positions, block-diagonal over groups
        groups, rem = divmod(channels, weight.shape[1])
        if rem or weight.shape[0] % max(groups, 1) or groups == 0:
            raise ValueError(f"{channels} channels cannot feed a conv weight {tuple(weight.shape)}")
        w, w2 = weight.flatten(2).sum(2), weight.pow(2).flatten(2).sum(2)
        if groups > 1:
            w, w2 = torch.block_diag(*w.chunk(groups)), torch.block_diag(*w2.chunk(groups))
    else:
        w, w2 = weight, weight.pow(2)
        if weight.shape[1] != channels:
            repeat, rem = divmod(weight.shape[1], channels)
            if rem:
                raise ValueError(f"{channels} channels cannot feed {weight.shape[1]} features")
            mean, var = mean.repeat_interleave(repeat), var.repeat_interleave(repeat)
    mean_out = w @ mean
    return (mean_out if bias is None else mean_out + bias), w2 @ var


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
