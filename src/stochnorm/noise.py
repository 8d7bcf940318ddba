"""Noise after a normalization (main paper section 3; SPEC sections 3 and 4).

A noise module takes the normalized output z = (u - mu) / sigma [B, C, *spatial] and the
affine parameters (s, b) of its normalization and returns the layer output. Noise is drawn
per sample and channel, constant over the spatial positions, in training mode or inside
`stochnorm.sampling(model)`; otherwise the module returns the mean-parameter output.

- `BNLikeNoise` (section 3.2): `((z + V) U) s + b`, V ~ N(0, sigma_V^2), U ~ N(1, sigma_U^2).
- `ScaleNoise` (sections 3.3-3.5, eq. 21): `(z + b) S`, S ~ q(S) = N(s, sigma_S^2), a
  variational posterior with prior N(1, sigma_0^2); `kl()` gives KL(q || p) in closed form.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _per_sample_shape(z: Tensor) -> tuple[int, ...]:
    """[B, C, 1, ...]: one value per sample and channel, broadcast over space."""
    return (z.shape[0], z.shape[1]) + (1,) * (z.ndim - 2)


class _Noise(nn.Module):
    """Common switch: noise is on in training mode and while `sampling` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.sampling = False
        self.generator: torch.Generator | None = None

    @property
    def active(self) -> bool:
        return self.training or self.sampling

    def _randn(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        return torch.randn(shape, generator=self.generator, device=like.device, dtype=like.dtype)

    def output_moments(self, s: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """Per-channel mean and variance of the layer output with mean parameters (noise
        off, as evaluation sees it) for a standardized input z (mean 0, variance 1): the
        rule moment propagation applies after a normalization with this noise."""
        return b, s * s


def noise_modules(model: nn.Module) -> list[_Noise]:
    """Every noise module of `model`."""
    return [m for m in model.modules() if isinstance(m, _Noise)]


def bn_noise_model(
    n: int, shape: tuple[int, ...], generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Samples of the model of batch normalization's randomness (eq. 5-7) for n = k z
    i.i.d. Gaussian values per channel: V = (mu - M) / sigma ~ N(0, 1/n) and
    U = sigma / S = sqrt(n / X) with X ~ chi^2(n - 1) (S the biased sample std, eq. 4).
    Returns (V, U), each of `shape`."""
    if n < 2:
        raise ValueError(f"the batch statistics need n >= 2 values, got {n}")
    v = torch.randn(shape, generator=generator, dtype=torch.float64) / math.sqrt(n)
    # chi^2(n - 1) = 2 Gamma((n - 1) / 2); torch's Gamma sampler takes no generator, so draw
    # it as a sum of squared normals for small n and by Wilson-Hilferty's cube otherwise.
    k = n - 1
    if k <= 64:
        x = torch.randn((*shape, k), generator=generator, dtype=torch.float64).pow(2).sum(-1)
    else:
        g = torch.randn(shape, generator=generator, dtype=torch.float64)
        x = k * (1 - 2 / (9 * k) + g * math.sqrt(2 / (9 * k))).pow(3)
    return v, (n / x).sqrt()


class BNLikeNoise(_Noise):
    """Noise that imitates batch normalization's (eq. 7 with Gaussian U): the output is
    `((z + V) U) s + b` with V ~ N(0, sigma_v^2) and U ~ N(1, sigma_u^2) drawn per sample
    and channel. `sigma_v`, `sigma_u`: scalars or per-channel tensors (fixed, not learned)."""

    def __init__(self, num_features: int, sigma_v: float | Tensor, sigma_u: float | Tensor) -> None:
        super().__init__()
        self.num_features = num_features
        self.register_buffer(
            "sigma_v", torch.as_tensor(sigma_v, dtype=torch.float32).expand(num_features).clone()
        )
        self.register_buffer(
            "sigma_u", torch.as_tensor(sigma_u, dtype=torch.float32).expand(num_features).clone()
        )
        if (self.sigma_v < 0).any() or (self.sigma_u < 0).any():
            raise ValueError("sigma_v and sigma_u must be >= 0")

    def forward(self, z: Tensor, s: Tensor, b: Tensor) -> Tensor:
        view = (1, -1) + (1,) * (z.ndim - 2)
        if self.active:
            shape = _per_sample_shape(z)
            v = self._randn(shape, z) * self.sigma_v.view(view)
            u = 1.0 + self._randn(shape, z) * self.sigma_u.view(view)
            z = (z + v) * u
        return z * s.view(view) + b.view(view)

    def extra_repr(self) -> str:
        return f"{self.num_features}, mean sigma_v={self.sigma_v.mean():.3g}, mean sigma_u={self.sigma_u.mean():.3g}"


def sigma_from_u(u: Tensor) -> Tensor:
    """The piecewise parametrization of section 3.5: sigma = exp(u) for u < 0, u + 1 for
    u >= 0. Continuous with a continuous first derivative at 0, and both d sigma / du <= 1
    (for u < 0) and d log(sigma) / du <= 1 are bounded."""
    # exp(min(u, 0)) + max(u, 0): the same two pieces in fewer operations than a `where`
    return torch.exp(u.clamp_max(0.0)) + torch.relu(u)


def u_from_sigma(sigma: Tensor | float) -> Tensor:
    """Inverse of `sigma_from_u`."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    if (sigma <= 0).any():
        raise ValueError("sigma must be > 0")
    return torch.where(sigma < 1, torch.log(sigma), sigma - 1.0)


def kl_normal(mean: Tensor, sigma: Tensor, prior_mean: float, prior_sigma: float) -> Tensor:
    """KL(N(mean, sigma^2) || N(prior_mean, prior_sigma^2)), elementwise:
    log(sigma_0 / sigma) + (sigma^2 + (mean - mu_0)^2) / (2 sigma_0^2) - 1/2."""
    offset = mean - prior_mean
    squares = torch.addcmul(sigma * sigma, offset, offset)
    return (squares / (2 * prior_sigma**2) - torch.log(sigma)).add_(math.log(prior_sigma) - 0.5)


class ScaleNoise(_Noise):
    """Learned variational noise on the scale (eq. 21): the output is `(z + b) S` with
    S ~ q(S) = N(s, sigma_S^2) drawn independently for every sample and channel
    (reparametrized, S = s + sigma_S eps, eq. 14-15). sigma_S is stored through the
    piecewise parametrization `sigma_from_u` of the parameter `u`; one value per channel,
    or one per layer with `per_channel=False`. Prior: p(S) = N(1, prior_sigma^2).

    Mean parameters (S = s) are used outside training and sampling.
    """

    def __init__(
        self, num_features: int, sigma_s: float = 0.1, *, per_channel: bool = True,
        prior_sigma: float = 10.0,
    ) -> None:  # fmt: skip
        super().__init__()
        self.num_features = num_features
        self.per_channel = per_channel
        self.prior_sigma = prior_sigma
        self.u = nn.Parameter(
            u_from_sigma(sigma_s).expand(num_features if per_channel else 1).clone()
        )

    @property
    def sigma_s(self) -> Tensor:
        """Standard deviation of q(S), [C] (or [1] with one per layer)."""
        return sigma_from_u(self.u)

    def kl(self, s: Tensor) -> Tensor:
        """KL(q(S) || p(S)) summed over the channels of the layer, for the scale means `s`
        (the `weight` of the normalization this noise belongs to)."""
        return kl_normal(s, self.sigma_s.expand_as(s), 1.0, self.prior_sigma).sum()

    def output_moments(self, s: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """`(z + b) s`: mean b s, variance s^2 (noise off)."""
        return b * s, s * s

    def forward(self, z: Tensor, s: Tensor, b: Tensor) -> Tensor:
        view = (1, -1) + (1,) * (z.ndim - 2)
        scale = s.view(view)
        if self.active:
            eps = self._randn(_per_sample_shape(z), z)
            scale = torch.addcmul(scale, self.sigma_s.view(view), eps)
        return (z + b.view(view)) * scale

    def extra_repr(self) -> str:
        kind = "per channel" if self.per_channel else "per layer"
        return f"{self.num_features}, sigma_s {kind}, prior N(1, {self.prior_sigma}^2)"
