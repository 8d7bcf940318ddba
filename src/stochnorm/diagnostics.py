"""Measurements on trained or freshly initialized networks."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from . import data as datasets
from .norms import AnalyticNorm, normalizations


@torch.no_grad()
def analytic_statistics(
    model: nn.Module,
    x: Tensor,
    *,
    batch_size: int = 500,
) -> list[dict[str, Any]]:
    """Compare, for every AnalyticNorm of `model`, its estimated statistics (mu, sigma: the
    propagated mean and std of its layer's output) with the true ones, measured on the
    inputs `x` (e.g. the whole augmented training split) with the same weights.

    The model is used in eval mode, where every AnalyticNorm applies its stored estimates;
    call it once in train mode first to refresh them from the current weights. Per layer:
    the mean over channels of |mu_est - mu_true| / sigma_true, and the mean, min and max over
    channels of sigma_est / sigma_true.
    """
    layers = [n for n in normalizations(model) if isinstance(n, AnalyticNorm)]
    if not layers:
        raise ValueError("the model has no analytic normalization")
    sums = {id(n): [0.0, 0.0, 0] for n in layers}

    def accumulate(module: nn.Module, inputs: tuple) -> None:
        u = inputs[0].double()
        dims = [0] + list(range(2, u.ndim))
        entry = sums[id(module)]
        entry[0] = entry[0] + u.sum(dims)
        entry[1] = entry[1] + u.pow(2).sum(dims)
        entry[2] += u.numel() // u.shape[1]

    handles = [n.register_forward_pre_hook(accumulate) for n in layers]
    was_training = model.training
    model.eval()
    try:
        for batch, _ in datasets.batches(datasets.Split(x, torch.zeros(len(x))), batch_size):
            model(batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    rows = []
    for i, n in enumerate(layers, start=1):
        total, total_sq, count = sums[id(n)]
        mean = total / count
        std = (total_sq / count - mean.pow(2)).clamp_min(0).sqrt()
        ratio = n.sigma.double() / std
        rows.append(
            {
                "layer": i,
                "channels": n.num_features,
                "mean_error": ((n.mu.double() - mean).abs() / std).mean().item(),
                "sigma_ratio_mean": ratio.mean().item(),
                "sigma_ratio_min": ratio.min().item(),
                "sigma_ratio_max": ratio.max().item(),
            }
        )
    return rows


@torch.no_grad()
def bn_noise(
    model: nn.Module,
    data: datasets.Splits,
    batch_sizes: tuple[int, ...] = (4, 8, 16, 32, 64, 128, 256),
    *,
    batches: int = 40,
    augment: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Measure the randomness of batch normalization in a trained network (main paper
    section 3.1, Fig. 4).

    For each batch size k, `batches` random training batches (augmented as in training) are
    drawn; the first image of every batch is the same probe. Per BN layer and channel, with
    mu, sigma the layer's population statistics (its running estimates) and M, S the batch
    mean and biased std over the n = k z values of the batch:

    - V = (mu - M) / sigma and U = sigma / S (eq. 5-6); `sigma_v`, `sigma_u`: their std
      over batches, averaged over channels;
    - chi2: n S^2 / sigma^2, which the model says is chi^2(n - 1) distributed;
    - output_var: the variance over batches of the BN output of the probe, averaged over
      channels and positions (the model predicts ~ 1/n).

    The model is not changed (running statistics are restored).
    """
    from .norms import BatchNorm

    layers = [m for m in model.modules() if isinstance(m, BatchNorm)]
    if not layers:
        raise ValueError("the model has no batch normalization")
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    records: dict[int, dict[int, dict[str, list]]] = {}

    def hook(index: int):
        def record(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            u = inputs[0].double()
            dims = [0] + list(range(2, u.ndim))
            m, s = u.mean(dims), u.std(dims, unbiased=False)
            mu, sigma = module.running_mean.double(), module.running_var.double().sqrt()
            entry = current[index]
            entry["v"].append(((mu - m) / sigma).float())
            entry["u"].append((sigma / s).float())
            entry["chi2"].append((u.numel() // u.shape[1] * s.pow(2) / sigma.pow(2)).float())
            entry["probe"].append(output[0].float())
            entry["spatial"] = u[0, 0].numel()

        return record

    saved_running = [(layer.running_mean.clone(), layer.running_var.clone()) for layer in layers]
    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    g = torch.Generator().manual_seed(seed)
    train = data.train
    probe = train.x[:1]
    was_training = model.training
    try:
        model.train()
        for k in batch_sizes:
            current = {i: {"v": [], "u": [], "chi2": [], "probe": []} for i in range(len(layers))}
            for _ in range(batches):
                idx = torch.randint(len(train), (k - 1,), generator=g)
                x = torch.cat([probe, train.x[idx]])
                if augment:
                    x = torch.cat([probe, datasets.augment(x[1:], data.fill, g)])
                model(x)
                for layer, (mean, var) in zip(layers, saved_running, strict=True):
                    layer.running_mean.copy_(mean)  # the population statistics stay fixed
                    layer.running_var.copy_(var)
            records[k] = current
    finally:
        for h in handles:
            h.remove()
        model.load_state_dict(saved)
        model.train(was_training)
    result: dict[str, Any] = {"batch_sizes": list(batch_sizes), "batches": batches, "layers": []}
    for i in range(len(layers)):
        per_k = []
        for k in batch_sizes:
            entry = records[k][i]
            v, u = torch.stack(entry["v"]), torch.stack(entry["u"])
            per_k.append({
                "k": k,
                "n": k * entry["spatial"],
                "sigma_v": v.std(0).mean().item(),
                "sigma_u": u.std(0).mean().item(),
                "output_var": torch.stack(entry["probe"]).var(0).mean().item(),
                "chi2": torch.stack(entry["chi2"]).flatten().tolist(),
            })  # fmt: skip
        result["layers"].append(
            {
                "layer": i + 1,
                "spatial": records[batch_sizes[0]][i]["spatial"],
                "per_batch_size": per_k,
            }
        )
    return result


def chi2_cdf(x: Tensor, dof: float) -> Tensor:
    """CDF of the chi-square distribution with `dof` degrees of freedom."""
    return torch.special.gammainc(torch.as_tensor(dof / 2, dtype=x.dtype), x / 2)


def ks_statistic(samples: Tensor, cdf) -> float:
    """Kolmogorov-Smirnov distance between the empirical CDF of `samples` and `cdf`."""
    x, _ = samples.double().sort()
    f = cdf(x)
    n = len(x)
    upper = torch.arange(1, n + 1, dtype=torch.float64) / n - f
    lower = f - torch.arange(0, n, dtype=torch.float64) / n
    return torch.maximum(upper, lower).max().item()


def _slope(x: list[float], y: list[float]) -> float:
    """Least-squares slope of log y against log x."""
    lx, ly = torch.tensor(x, dtype=torch.float64).log(), torch.tensor(y, dtype=torch.float64).log()
    lx = lx - lx.mean()
    return ((lx * (ly - ly.mean())).sum() / (lx * lx).sum()).item()


def summarize_bn_noise(result: dict[str, Any], batch_size: int = 32) -> dict[str, Any]:
    """Per layer at the training batch size: sigma_V, sigma_U, the KS distance of
    n S^2 / sigma^2 to chi^2(n - 1), and the log-log slope of the BN output variance
    against the batch size (model: -1); across layers, the slope of k * variance against
    the spatial size z (model: -1)."""

    def at(layer: dict, k: int) -> dict:
        return next(e for e in layer["per_batch_size"] if e["k"] == k)

    rows = []
    for layer in result["layers"]:
        at_k = at(layer, batch_size)
        ks = [e["k"] for e in layer["per_batch_size"]]
        rows.append({
            "layer": layer["layer"],
            "spatial": layer["spatial"],
            "sigma_v": at_k["sigma_v"],
            "sigma_u": at_k["sigma_u"],
            "chi2_ks": ks_statistic(torch.tensor(at_k["chi2"]), lambda x, n=at_k["n"]: chi2_cdf(x, n - 1)),
            "var_vs_k_slope": _slope(ks, [e["output_var"] for e in layer["per_batch_size"]]),
        })  # fmt: skip
    z = [r["spatial"] for r in rows]
    var_k = [batch_size * at(layer, batch_size)["output_var"] for layer in result["layers"]]
    distinct = len(set(z)) > 1
    return {
        "batch_size": batch_size,
        "layers": rows,
        "var_times_k_vs_z_slope": _slope(z, var_k) if distinct else None,
        "sigma_v": [r["sigma_v"] for r in rows],
        "sigma_u": [r["sigma_u"] for r in rows],
    }


def chi2_quantile(p: Tensor, dof: float, iterations: int = 80) -> Tensor:
    """Quantiles of chi^2(dof) at probabilities `p`, by bisection on `chi2_cdf`."""
    p = p.double()
    lo = torch.zeros_like(p)
    hi = torch.full_like(p, dof + 40 * (2 * dof) ** 0.5 + 40)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        below = chi2_cdf(mid, dof) < p
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return (lo + hi) / 2
