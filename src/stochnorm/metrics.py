"""Quality of a predictive distribution: each metric takes `probs` [N, C] (rows sum to one)
and integer `labels` [N] and returns a Python float (or arrays, for curves)."""

from __future__ import annotations

import torch
from torch import Tensor

_TINY = 1e-12  # keeps log(0) finite for a class given probability zero


def _check(probs: Tensor, labels: Tensor) -> None:
    if probs.ndim != 2 or labels.ndim != 1 or len(probs) != len(labels):
        raise ValueError(
            f"expected probs [N, C] and labels [N], got {tuple(probs.shape)} and "
            f"{tuple(labels.shape)}"
        )


def accuracy(probs: Tensor, labels: Tensor) -> float:
    """Fraction of samples whose most probable class is the label."""
    _check(probs, labels)
    return (probs.argmax(1) == labels).double().mean().item()


def nll(probs: Tensor, labels: Tensor) -> float:
    """Mean negative log-likelihood of the labels, -mean log p(y|x)."""
    _check(probs, labels)
    p = probs.double().gather(1, labels[:, None]).squeeze(1)
    return -p.clamp_min(_TINY).log().mean().item()


def brier(probs: Tensor, labels: Tensor) -> float:
    """Mean over samples of sum_c (p_c - 1[y = c])^2."""
    _check(probs, labels)
    onehot = torch.nn.functional.one_hot(labels, probs.shape[1]).double()
    return (probs.double() - onehot).pow(2).sum(1).mean().item()


def ece(probs: Tensor, labels: Tensor, bins: int = 15) -> float:
    """Expected calibration error: sum_b |B_b|/N * |acc_b - conf_b| over `bins` equal-width
    bins of the confidence max_c p_c (bin b holds confidences in ((b-1)/bins, b/bins])."""
    _check(probs, labels)
    conf, pred = probs.double().max(1)
    correct = (pred == labels).double()
    index = (conf * bins).ceil().long().clamp(1, bins) - 1
    conf_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, conf)
    correct_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, correct)
    return ((conf_sum - correct_sum).abs().sum() / len(labels)).item()


def entropy(probs: Tensor) -> Tensor:
    """Entropy of each predictive distribution, [N]."""
    p = probs.double()
    return -(p * p.clamp_min(_TINY).log()).sum(1)


def error_coverage(probs: Tensor, labels: Tensor, score: str = "entropy") -> tuple[Tensor, Tensor]:
    """Error rate of the kept samples against the kept fraction, rejecting the most uncertain
    first. `score` is "entropy" (predictive entropy) or "max-prob" (1 - max_c p_c).

    Returns (coverage, error), both [N]: coverage[i] = (i+1)/N is the fraction kept when the
    i+1 most certain samples are kept, error[i] the error rate among them.
    """
    _check(probs, labels)
    if score == "entropy":
        uncertainty = entropy(probs)
    elif score == "max-prob":
        uncertainty = 1.0 - probs.double().max(1).values
    else:
        raise ValueError(f"unknown rejection score {score!r}; use 'entropy' or 'max-prob'")
    order = torch.argsort(uncertainty, stable=True)
    wrong = (probs.argmax(1) != labels)[order].double()
    kept = torch.arange(1, len(labels) + 1, dtype=torch.float64)
    return kept / len(labels), wrong.cumsum(0) / kept


def aurc(probs: Tensor, labels: Tensor, score: str = "entropy") -> float:
    """Area under the error-coverage curve: the mean of the error rates over all N
    coverages k/N (a right Riemann sum over [0, 1])."""
    _, error = error_coverage(probs, labels, score)
    return error.mean().item()


def summary(probs: Tensor, labels: Tensor) -> dict[str, float]:
    """Accuracy, NLL, ECE (15 bins) and Brier score in one dictionary."""
    return {
        "accuracy": accuracy(probs, labels),
        "nll": nll(probs, labels),
        "ece": ece(probs, labels),
        "brier": brier(probs, labels),
    }


def temperature_scale(probs: Tensor, temperature: float) -> Tensor:
    """The probabilities softmax(log p / T) [N, C]: post-hoc temperature scaling (Guo et
    al., 2017). Dividing the log-probabilities equals dividing the logits, since the two
    differ by a constant per sample that the softmax removes."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return torch.softmax(probs.double().clamp_min(_TINY).log() / temperature, dim=1)


def fit_temperature(
    probs: Tensor, labels: Tensor, *, low: float = 0.05, high: float = 20.0, steps: int = 100
) -> float:
    """The one temperature T in [low, high] that minimizes the NLL of `temperature_scale(
    probs, T)` on (probs, labels), e.g. a validation set: golden-section search on log T
    (the NLL is convex in 1 / T), to a relative precision of about 1e-9."""
    _check(probs, labels)
    if not 0 < low < high:
        raise ValueError(f"need 0 < low < high, got {low} and {high}")
    logp = probs.double().clamp_min(_TINY).log()

    def loss(log_t: float) -> float:
        scaled = torch.log_softmax(logp / torch.tensor(log_t).exp(), dim=1)
        return -scaled.gather(1, labels[:, None]).mean().item()

    a, b = torch.tensor(low).log().item(), torch.tensor(high).log().item()
    ratio = (5**0.5 - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = loss(c), loss(d)
    for _ in range(steps):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = loss(d)
    return float(torch.tensor((a + b) / 2).exp())
