"""Variational Bayesian learning of the normalization noise and Monte-Carlo prediction
(main paper sections 3.3-3.5, eq. 9-15; SPEC section 4).

- `add_noise(model, "bn-like" | "bayes", ...)`: put noise after every normalization.
- `kl_divergence(model)`: the sum over layers of KL(q(S) || p(S)).
- `elbo_loss_term(kl_factor, dataset_size)`: the term `kl_factor * KL / |D|` that the
  training loop adds to the mean NLL of the batch (eq. 11 divided by |D|).
- `sampling(model)`: noise on in an eval-mode model (frozen statistics).
- `predict(model, x, samples=K)`: the MC average of the predicted probabilities (eq. 10);
  `predict_running` gives several K from one sequence of sampled passes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from .noise import BNLikeNoise, ScaleNoise, noise_modules
from .norms import normalizations


def add_noise(
    model: nn.Module,
    noise: str,
    *,
    sigma_s: float | Sequence[float] = 0.1,
    per_channel: bool = True,
    prior_sigma: float = 10.0,
    sigma_v: float | Sequence[float] = 0.0,
    sigma_u: float | Sequence[float] = 0.0,
) -> nn.Module:
    """Put a noise module after every normalization of `model`, in place; returns `model`.

    `noise="bn-like"`: fixed BN-like noise with `sigma_v`, `sigma_u` (a scalar for all
    layers or one value per normalization layer, in order). `noise="bayes"`: learned scale
    noise initialized at `sigma_s` (likewise one value or one per layer), with prior
    N(1, prior_sigma^2). The bayes model is
    `(z + b) S`: to keep the function of a trained `z s + b`, b is divided by s.
    """
    layers = normalizations(model)
    if not layers:
        raise ValueError("the model has no stochnorm normalization to add noise to")

    def per_layer(value, name):
        if isinstance(value, float | int):
            return [float(value)] * len(layers)
        if len(value) != len(layers):
            raise ValueError(f"{name}: {len(value)} values for {len(layers)} normalization layers")
        return list(value)

    if noise == "bn-like":
        for layer, v, u in zip(
            layers, per_layer(sigma_v, "sigma_v"), per_layer(sigma_u, "sigma_u"), strict=True
        ):
            layer.noise = BNLikeNoise(layer.num_features, v, u)
    elif noise == "bayes":
        for layer, sigma in zip(layers, per_layer(sigma_s, "sigma_s"), strict=True):
            if not isinstance(layer.noise, ScaleNoise):
                with torch.no_grad():
                    layer.bias.div_(
                        layer.weight.where(
                            layer.weight.abs() > 1e-12, torch.ones_like(layer.weight)
                        )
                    )
            layer.noise = ScaleNoise(
                layer.num_features, sigma, per_channel=per_channel, prior_sigma=prior_sigma
            )
    else:
        raise ValueError(f"unknown noise {noise!r}; choose 'bn-like' or 'bayes'")
    for layer in layers:  # the new modules follow their layer's device and mode
        layer.noise.to(layer.weight.device).train(layer.training)
    return model


def kl_divergence(model: nn.Module) -> Tensor:
    """Sum over the normalization layers of KL(q(S) || p(S)) (0 if none is learned)."""
    layers = normalizations(model)
    if not layers:
        return torch.zeros(())
    return sum(layer.kl() for layer in layers)


def elbo_loss_term(kl_factor: float, dataset_size: int) -> Callable[[nn.Module], Tensor]:
    """The loss term `kl_factor * KL / |D|` of the ELBO per training sample."""
    if dataset_size < 1:
        raise ValueError("dataset_size must be >= 1")
    return lambda model: kl_divergence(model) * (kl_factor / dataset_size)


@contextlib.contextmanager
def sampling(model: nn.Module, generator: torch.Generator | None = None) -> Iterator[nn.Module]:
    """Within the block every noise module of `model` samples even in eval mode, drawing
    from `generator` when given; normalization statistics stay frozen in eval mode."""
    modules = noise_modules(model)
    saved = [(m.sampling, m.generator) for m in modules]
    for m in modules:
        m.sampling, m.generator = True, generator
    try:
        yield model
    finally:
        for m, (flag, gen) in zip(modules, saved, strict=True):
            m.sampling, m.generator = flag, gen


def predict(
    model: nn.Module,
    x: Tensor,
    samples: int = 0,
    *,
    generator: torch.Generator | None = None,
    batch_size: int = 500,
) -> Tensor:
    """Class probabilities [N, C] for inputs x [N, ...] from the eval-mode model.

    `samples` <= 1: one pass with mean parameters. `samples` = K > 1: the average of the
    probabilities of K passes with noise sampled (eq. 10). The model may output logits or
    log-probabilities (softmax maps both to the same probabilities).
    """
    return predict_running(model, x, (samples,), generator=generator, batch_size=batch_size)[
        samples
    ]


@torch.no_grad()
def predict_running(
    model: nn.Module,
    x: Tensor,
    counts: Sequence[int],
    *,
    generator: torch.Generator | None = None,
    batch_size: int = 500,
) -> dict[int, Tensor]:
    """`predict` for several sample counts at once: {K: probabilities [N, C]} for every K in
    `counts`, where MC-K averages the first K of one sequence of max(counts) sampled passes
    per batch (`predict_draws`). Costs the passes of the largest count only; K <= 1 is the
    single pass, and so is every K for a model without noise (nothing is random)."""
    counts = list(dict.fromkeys(counts))
    noisy = bool(noise_modules(model))
    draws_needed = max((k for k in counts if k > 1), default=0) if noisy else 0
    chunks: dict[int, list[Tensor]] = {k: [] for k in counts}
    for xb in x.split(batch_size):  # averaged batch by batch: the same sums as a batch alone
        single = None
        if draws_needed == 0 or any(k <= 1 for k in counts):
            single = predict_draws(model, xb, 0, batch_size=batch_size)[0]
        if draws_needed:
            draws = predict_draws(model, xb, draws_needed, generator=generator,
                                  batch_size=batch_size)  # fmt: skip
        for k in counts:
            chunks[k].append(draws[:k].mean(0) if k > 1 and draws_needed else single)
    return {k: torch.cat(parts) for k, parts in chunks.items()}


@torch.no_grad()
def predict_draws(
    model: nn.Module,
    x: Tensor,
    samples: int,
    *,
    generator: torch.Generator | None = None,
    batch_size: int = 500,
) -> Tensor:
    """The class probabilities of each of `samples` passes with the noise sampled, [K, N, C],
    drawn batch by batch (the K passes of a batch one after another); `samples` = 0 gives
    the single pass with mean parameters, as [1, N, C]."""
    was_training = model.training
    model.eval()
    try:
        chunks = []
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size]
            if samples > 0:
                with sampling(model, generator):
                    passes = [torch.softmax(model(xb).float(), dim=1) for _ in range(samples)]
            else:
                passes = [torch.softmax(model(xb).float(), dim=1)]
            chunks.append(torch.stack(passes))
        return torch.cat(chunks, dim=1)
    finally:
        model.train(was_training)
