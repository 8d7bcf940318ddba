"""Quality of a predictive distribution: each metric takes `probs` [N, C] (rows sum to one)
and integer `labels` [N] and returns a Python float (or arrays, for curves). Per-pixel
predictions of a segmentation, `probs` [N, C, H, W] with masks [N, H, W], count every pixel
as one sample; `iou` and `dice` measure the predicted regions."""

from __future__ import annotations

import math

import torch
from torch import Tensor

_TINY = 1e-12  # keeps log(0) finite for a class given probability zero


def _rows(probs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """`probs` [N, C] and `labels` [N] as they are; predictions per position, probs
    [N, C, *S] with labels [N, *S], as one row per position ([N * prod(S), C], [N * prod(S)])."""
    per_position = probs.ndim > 2 and labels.ndim == probs.ndim - 1
    if per_position and probs.shape[:1] + probs.shape[2:] == labels.shape:
        return probs.movedim(1, -1).reshape(-1, probs.shape[1]), labels.reshape(-1)
    if probs.ndim != 2 or labels.ndim != 1 or len(probs) != len(labels):
        raise ValueError(
            f"expected probs [N, C] and labels [N] (or [N, C, H, W] and [N, H, W]), got "
            f"{tuple(probs.shape)} and {tuple(labels.shape)}"
        )
    return probs, labels


def accuracy(probs: Tensor, labels: Tensor) -> float:
    """Fraction of samples whose most probable class is the label."""
    probs, labels = _rows(probs, labels)
    return (probs.argmax(1) == labels).double().mean().item()


def nll(probs: Tensor, labels: Tensor) -> float:
    """Mean negative log-likelihood of the labels, -mean log p(y|x)."""
    probs, labels = _rows(probs, labels)
    p = probs.double().gather(1, labels[:, None]).squeeze(1)
    return -p.clamp_min(_TINY).log().mean().item()


def brier(probs: Tensor, labels: Tensor) -> float:
    """Mean over samples of sum_c (p_c - 1[y = c])^2."""
    probs, labels = _rows(probs, labels)
    onehot = torch.nn.functional.one_hot(labels, probs.shape[1]).double()
    return (probs.double() - onehot).pow(2).sum(1).mean().item()


def reliability(probs: Tensor, labels: Tensor, bins: int = 15) -> dict[str, list[float]]:
    """The reliability diagram of the confidence max_c p_c in `bins` equal-width bins (bin b
    holds confidences in ((b-1)/bins, b/bins]): per bin its sample count, mean confidence and
    accuracy (0 for an empty bin)."""
    probs, labels = _rows(probs, labels)
    conf, pred = probs.double().max(1)
    correct = (pred == labels).double()
    index = (conf * bins).ceil().long().clamp(1, bins) - 1
    zeros = torch.zeros(bins, dtype=torch.float64, device=probs.device)
    count = zeros.index_add(0, index, torch.ones_like(conf))
    conf_sum = zeros.index_add(0, index, conf)
    correct_sum = zeros.index_add(0, index, correct)
    safe = count.clamp_min(1)
    return {
        "count": count.tolist(),
        "confidence": (conf_sum / safe).tolist(),
        "accuracy": (correct_sum / safe).tolist(),
    }


def ece(probs: Tensor, labels: Tensor, bins: int = 15) -> float:
    """Expected calibration error: sum_b |B_b|/N * |acc_b - conf_b| over the bins of
    `reliability`."""
    probs, labels = _rows(probs, labels)
    diagram = reliability(probs, labels, bins)
    gaps = (
        n * abs(a - c)
        for n, a, c in zip(
            diagram["count"], diagram["accuracy"], diagram["confidence"], strict=True
        )
    )
    return sum(gaps) / len(labels)


def entropy(probs: Tensor) -> Tensor:
    """Entropy of each predictive distribution, [N]."""
    p = probs.double()
    return -(p * p.clamp_min(_TINY).log()).sum(1)


def uncertainty(probs: Tensor, score: str = "entropy") -> Tensor:
    """Per sample [N]: the predictive entropy (`score` "entropy") or 1 - max_c p_c
    ("max-prob"), larger for a less certain prediction."""
    if score == "entropy":
        return entropy(probs)
    if score == "max-prob":
        return 1.0 - probs.double().max(1).values
    raise ValueError(f"unknown uncertainty score {score!r}; use 'entropy' or 'max-prob'")


def error_coverage(probs: Tensor, labels: Tensor, score: str = "entropy") -> tuple[Tensor, Tensor]:
    """Error rate of the kept samples against the kept fraction, rejecting the most uncertain
    first (`uncertainty` by `score`).

    Returns (coverage, error), both [N]: coverage[i] = (i+1)/N is the fraction kept when the
    i+1 most certain samples are kept, error[i] the error rate among them. Samples of equal
    uncertainty are one block, kept in no particular order: inside a block the kept errors
    are the block's expected count (its errors times the fraction of it kept), so the curve
    does not depend on the order of the samples.
    """
    probs, labels = _rows(probs, labels)
    u = uncertainty(probs, score)
    order = torch.argsort(u, stable=True)
    wrong = (probs.argmax(1) != labels)[order].double()
    _, counts = torch.unique_consecutive(u[order], return_counts=True)
    block = torch.repeat_interleave(torch.arange(len(counts), device=u.device), counts)
    block_end = counts.cumsum(0)
    block_errors = torch.zeros(len(counts), dtype=torch.float64, device=u.device)
    block_errors = block_errors.index_add(0, block, wrong)
    errors_before = block_errors.cumsum(0) - block_errors
    kept = torch.arange(1, len(labels) + 1, dtype=torch.float64, device=u.device)
    in_block = kept - (block_end - counts)[block]  # 1..size within the block
    kept_errors = errors_before[block] + block_errors[block] * in_block / counts[block]
    return kept / len(labels), kept_errors / kept


def aurc(probs: Tensor, labels: Tensor, score: str = "entropy") -> float:
    """Area under the error-coverage curve: the mean of the error rates over all N
    coverages k/N (a right Riemann sum over [0, 1])."""
    _, error = error_coverage(probs, labels, score)
    return error.mean().item()


def mutual_information(draws: Tensor) -> Tensor:
    """Per sample [N], from sampled predictive distributions `draws` [K, N, C]: the mutual
    information between the label and the model's noise, H[mean_k p_k] - mean_k H[p_k]
    (the part of the predictive entropy that the samples disagree on)."""
    if draws.ndim != 3:
        raise ValueError(f"expected draws [K, N, C], got {tuple(draws.shape)}")
    return entropy(draws.double().mean(0)) - torch.stack([entropy(p) for p in draws]).mean(0)


def auroc(in_scores: Tensor, out_scores: Tensor) -> float:
    """Area under the ROC curve of telling unfamiliar inputs from familiar ones by a score
    that is larger for the unfamiliar (an uncertainty): the probability that an unfamiliar
    input scores above a familiar one, ties counting one half (Mann-Whitney U / (n m))."""
    if in_scores.numel() == 0 or out_scores.numel() == 0:
        raise ValueError("auroc needs familiar and unfamiliar scores")
    a, b = in_scores.double().flatten(), out_scores.double().flatten()
    both = torch.cat([a, b])
    order = torch.argsort(both, stable=True)
    _, inverse, counts = torch.unique(both[order], return_inverse=True, return_counts=True)
    mid_rank = (counts.cumsum(0) - (counts - 1) / 2.0).double()  # average 1-based rank of ties
    ranks = torch.empty_like(both)
    ranks[order] = mid_rank[inverse]
    u = ranks[len(a) :].sum() - len(b) * (len(b) + 1) / 2
    return (u / (len(a) * len(b))).item()


def fpr_at_tpr(in_scores: Tensor, out_scores: Tensor, tpr: float = 0.95) -> float:
    """False-positive rate at `tpr` true-positive rate, with the familiar inputs the
    positives (Liang et al.'s "FPR at 95% TPR"): accept an input when its uncertainty is at
    most the smallest threshold that accepts a fraction `tpr` of the familiar ones; returns
    the fraction of unfamiliar inputs accepted."""
    if not 0 < tpr <= 1:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    a = in_scores.double().flatten().sort().values
    k = max(math.ceil(tpr * len(a) - 1e-9), 1)
    threshold = a[k - 1]
    return (out_scores.double() <= threshold).double().mean().item()


def summary(probs: Tensor, labels: Tensor) -> dict[str, float]:
    """Accuracy, NLL, ECE (15 bins) and Brier score in one dictionary; for per-pixel
    predictions also IoU and Dice."""
    out = {
        "accuracy": accuracy(probs, labels),
        "nll": nll(probs, labels),
        "ece": ece(probs, labels),
        "brier": brier(probs, labels),
    }
    if probs.ndim > 2:
        out.update(iou=iou(probs, labels), dice=dice(probs, labels))
    return out


def _overlaps(probs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per class but the first (background): the pixels predicted and labelled that class,
    predicted only, labelled only (counts over all positions of all samples)."""
    probs, labels = _rows(probs, labels)
    classes = torch.arange(1, probs.shape[1], device=probs.device)
    predicted = probs.argmax(1)[:, None] == classes
    true = labels[:, None] == classes
    both = (predicted & true).sum(0).double()
    return both, (predicted & ~true).sum(0).double(), (~predicted & true).sum(0).double()


def iou(probs: Tensor, labels: Tensor) -> float:
    """Intersection over union |P & T| / |P | T| of the predicted (most probable) and the
    labelled region of each class but the first (background), pooled over all pixels of all
    samples, averaged over those classes: for two classes, the foreground IoU (Jaccard).
    A class neither predicted nor labelled counts as 1."""
    both, only_predicted, only_true = _overlaps(probs, labels)
    union = both + only_predicted + only_true
    return torch.where(union > 0, both / union.clamp_min(1), 1.0).mean().item()


def dice(probs: Tensor, labels: Tensor) -> float:
    """Dice coefficient 2 |P & T| / (|P| + |T|), per class but the first as in `iou`."""
    both, only_predicted, only_true = _overlaps(probs, labels)
    total = 2 * both + only_predicted + only_true
    return torch.where(total > 0, 2 * both / total.clamp_min(1), 1.0).mean().item()


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
    probs, labels = _rows(probs, labels)
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
