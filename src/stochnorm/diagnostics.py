"""Measurements on a network in hand (trained or freshly initialized): batch norm's
randomness, analytic norm's estimated statistics, the signal by depth, the step sizes of
the scales, batch dependence and the independence error of the moment rules. The run-level
tasks that load a run directory first live in `stochnorm.evaluation`."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from . import data as datasets
from .analytic import State, propagation_of
from .norms import AnalyticNorm, BatchNorm, normalizations
from .norms import gamma_decay as scale_penalty
from .stats import chi2_cdf, ks_statistic, loglog_fit


@torch.no_grad()
def _eval_with_input_hooks(
    model: nn.Module, x: Tensor, hooks: dict[nn.Module, Any], batch_size: int
) -> None:
    """Run the eval-mode `model` over `x` in batches without gradients, calling
    `hooks[module](module, inputs)` before every forward of each module; the hooks and the
    model's mode are restored afterwards."""
    handles = [module.register_forward_pre_hook(hook) for module, hook in hooks.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch, _ in datasets.batches(datasets.Split(x, torch.zeros(len(x))), batch_size):
                model(batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


class _ChannelMoments:
    """Per-channel sums of tensors [N, C, ...] over samples and positions, in float64, for
    their mean and (biased) variance."""

    def __init__(self) -> None:
        self.total: Tensor | float = 0.0
        self.total_sq: Tensor | float = 0.0
        self.count = 0

    def add(self, u: Tensor) -> None:
        u = u.double()
        dims = [0, *range(2, u.ndim)]
        self.total = self.total + u.sum(dims)
        self.total_sq = self.total_sq + u.pow(2).sum(dims)
        self.count += u.numel() // u.shape[1]

    def mean_var(self) -> tuple[Tensor, Tensor]:
        mean = self.total / self.count
        return mean, (self.total_sq / self.count - mean.pow(2)).clamp_min(0)


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
    sums = {id(n): _ChannelMoments() for n in layers}

    def accumulate(module: nn.Module, inputs: tuple) -> None:
        sums[id(module)].add(inputs[0])

    _eval_with_input_hooks(model, x, {n: accumulate for n in layers}, batch_size)
    rows = []
    for i, n in enumerate(layers, start=1):
        mean, var = sums[id(n)].mean_var()
        std = var.sqrt()
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
            "var_vs_k_slope": loglog_fit(ks, [e["output_var"] for e in layer["per_batch_size"]])[0],
        })  # fmt: skip
    z = [r["spatial"] for r in rows]
    var_k = [batch_size * at(layer, batch_size)["output_var"] for layer in result["layers"]]
    distinct = len(set(z)) > 1
    return {
        "batch_size": batch_size,
        "layers": rows,
        "var_times_k_vs_z_slope": loglog_fit(z, var_k)[0] if distinct else None,
        "sigma_v": [r["sigma_v"] for r in rows],
        "sigma_u": [r["sigma_u"] for r in rows],
    }


def _rms(t: Tensor) -> float:
    return t.detach().double().pow(2).mean().sqrt().item()


def layer_signal(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    loss_fn=None,
) -> dict[str, Any]:
    """The signal by depth (Bjorck et al. 2018, sections 3-4): one forward and backward pass
    of the batch `x`, `y` through `model` in its current mode (in train mode, batch norm
    uses the batch statistics of `x` and updates its running estimates).

    For every conv/linear layer, in registration order (the order of depth for sequential
    models such as All-CNN-C): `input_rms`, `input_mean_abs`, `input_std` (over all values
    of the batch) of the signal entering the layer (the previous block's activations, the
    image for the first layer); `output_rms` of the layer's own output (before any
    normalization); `weight_norm` ||W||, `grad_norm` ||dL/dW|| (Frobenius norms, weight
    only) and `relative_grad` = grad_norm / weight_norm (the relative change of W that a
    gradient step of rate 1 makes). Also the batch loss `loss` (default: the NLL of the
    log-probabilities the model returns).

    The gradients of this batch are left in `.grad` (earlier ones are discarded), so that
    `sgd_step_` can follow them."""
    if loss_fn is None:
        loss_fn = F.nll_loss
    layers = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear)
    ]
    if not layers:
        raise ValueError("the model has no conv or linear layer")
    seen: dict[str, dict[str, float]] = {}

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            u = inputs[0].detach().double()
            seen[name] = {
                "input_rms": u.pow(2).mean().sqrt().item(),
                "input_mean_abs": u.abs().mean().item(),
                "input_std": u.std(correction=0).item(),
                "output_rms": _rms(output),
            }

        return record

    model.zero_grad(set_to_none=True)
    handles = [m.register_forward_hook(hook(name)) for name, m in layers]
    try:
        loss = loss_fn(model(x), y)
    finally:
        for h in handles:
            h.remove()
    loss.backward()
    rows = []
    for i, (name, m) in enumerate(layers, start=1):
        weight_norm = m.weight.detach().double().norm().item()
        grad_norm = 0.0 if m.weight.grad is None else m.weight.grad.double().norm().item()
        rows.append({
            "layer": i, "name": name, **seen.get(name, {}), "weight_norm": weight_norm,
            "grad_norm": grad_norm, "relative_grad": grad_norm / weight_norm,
        })  # fmt: skip
    return {"loss": loss.item(), "layers": rows}


@torch.no_grad()
def sgd_step_(model: nn.Module, lr: float) -> nn.Module:
    """One plain gradient-descent step `p <- p - lr * p.grad` on every parameter with a
    gradient (no momentum, no weight decay): the single large update whose effect on the
    signal by depth Bjorck et al. (2018) examine; a probe, not training. Returns `model`,
    changed in place."""
    for p in model.parameters():
        if p.grad is not None:
            p.sub_(lr * p.grad)
    return model


def scale_step_sizes(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    lr: float,
    *,
    gamma_decay: float = 0.0,
) -> list[dict[str, Any]]:
    """The effective learning rate of the scales s of every normalization layer of `model`:
    the size of one plain SGD step of s relative to s itself,

        lr * ||grad_s J_B|| / ||s||,    J_B = NLL of batch B + gamma_decay * sum_c s_c^2,

    the objective of the training loop on one mini-batch in train mode (Luo et al.: BN's
    implicit regularizer is a gamma decay; with `gamma_decay` the explicit one is included).
    The output of a normalization is linear in s, so this is also the relative change of the
    layer's output scale per step. `model` returns log-probabilities; each batch (x, y) is
    used as it comes (augment it beforehand to measure training batches).

    Per layer, in `normalizations(model)` order: `channels`, `scale_rms` = ||s|| / sqrt(C),
    `relative_gradient` = the mean over batches of ||grad_s J_B|| / ||s|| and its standard
    error `relative_gradient_se`, and `effective_lr`, `effective_lr_se` (both times `lr`).
    Nothing is stepped; the running statistics that train mode updates (batch and
    population norm) evolve over the batches as in training and are restored afterwards.
    """
    layers = normalizations(model)
    if not layers:
        raise ValueError("the model has no normalization layer")
    scales = [n.weight for n in layers]
    device = scales[0].device
    saved = {name: b.detach().clone() for name, b in model.named_buffers()}
    was_training = model.training
    ratios: list[Tensor] = []
    try:
        model.train()
        for x, y in batches:
            objective = F.nll_loss(model(x.to(device)), y.to(device))
            if gamma_decay:
                objective = objective + gamma_decay * scale_penalty(model)
            grads = torch.autograd.grad(objective, scales)
            pairs = zip(grads, scales, strict=True)
            ratios.append(torch.stack([g.norm() / s.detach().norm() for g, s in pairs]))
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(saved[name])
        model.train(was_training)
    if not ratios:
        raise ValueError("no batches to measure on")
    table = torch.stack(ratios).double()  # [batches, layers]
    mean = table.mean(0)
    se = table.std(0) / len(table) ** 0.5 if len(table) > 1 else torch.zeros_like(mean)
    return [
        {
            "layer": i + 1,
            "channels": n.num_features,
            "scale_rms": (n.weight.detach().norm() / n.num_features**0.5).item(),
            "relative_gradient": mean[i].item(),
            "relative_gradient_se": se[i].item(),
            "effective_lr": lr * mean[i].item(),
            "effective_lr_se": lr * se[i].item(),
        }
        for i, n in enumerate(layers)
    ]


@torch.no_grad()
def batch_dependence(
    model: nn.Module,
    probes: Tensor,
    pool: Tensor,
    batch_sizes: Sequence[int] = (1, 8, 64),
    *,
    generator: torch.Generator | None = None,
) -> list[dict[str, Any]]:
    """How much the train-mode output for one sample depends on the rest of its batch.

    Every probe image `probes[i]` is passed first in a batch whose other k - 1 samples are
    drawn at random from `pool`: once at the reference size K = max(batch_sizes), then once
    at every k in `batch_sizes` with fresh companions (k = 1: alone). Per k: `max_abs_diff`,
    the largest |output - reference output| over probes and output entries, and
    `max_rel_diff`, that divided by the largest |reference output|. A normalization whose
    output for one sample does not involve the others (analytic, weight, population norm)
    gives float round-off; batch norm does not. Buffers (running statistics) are restored
    before every forward, so each pass sees the model as it was given; the model is left as
    it was.
    """
    if not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"batch sizes must be >= 1, got {list(batch_sizes)}")
    device = next(model.parameters()).device
    saved = {name: b.detach().clone() for name, b in model.named_buffers()}
    buffers = dict(model.named_buffers())
    was_training = model.training
    reference = max(batch_sizes)

    def probe_output(probe: Tensor, k: int) -> Tensor:
        for name, b in buffers.items():
            b.copy_(saved[name])
        idx = torch.randint(len(pool), (k - 1,), generator=generator)
        batch = torch.cat([probe.unsqueeze(0), pool[idx]]).to(device)
        return model(batch)[0].double().cpu()

    try:
        model.train()
        refs = [probe_output(p, reference) for p in probes]
        scale = max(r.abs().max().item() for r in refs)
        rows = []
        for k in batch_sizes:
            pairs = zip(probes, refs, strict=True)
            diff = max((probe_output(p, k) - r).abs().max().item() for p, r in pairs)
            rows.append({"batch_size": k, "max_abs_diff": diff,
                         "max_rel_diff": diff / scale if scale > 0 else diff})  # fmt: skip
    finally:
        for name, b in buffers.items():
            b.copy_(saved[name])
        model.train(was_training)
    return rows


def independence_error(
    model: nn.Module, x: Tensor, *, batch_size: int = 500, max_rows: int = 200_000
) -> list[dict[str, Any]]:
    """How much of the variance of each normalized conv/linear output the independence
    assumption of the moment rules misses, given the true input moments.

    For every normalization bound to a layer, the layer's input patches over `x` (what the conv
    multiplies with its weights, zero padding included; about `max_rows` of them, drawn at random
    from every batch in proportion) have the covariance Sigma; the output variance of channel o is
    w_o^T Sigma w_o. Per layer, the mean over channels of sqrt(w^T D w / w^T Sigma w) for D =
    diag(Sigma) ("independent": what the conv rule assumes), Sigma restricted to pairs in the same
    input channel ("spatial": spatial correlations only), to pairs at the same
    kernel offset ("channel": cross-channel correlations only), and replaced by the separable
    model C0[c, d] r(a - b) ("separable": the channels' covariance C0 at equal positions, times
    one correlation r of a channel's values at kernel offsets a, b that depends on their
    displacement only, averaged over the channels), and by the between-image model
    ("between": every image's per-channel spatial means, with their full covariance across
    images, plus independent pixels around them with the channel's mean within-image
    variance; for a linear layer, whose inputs have no positions, it is Sigma itself).
    1 means the assumption costs nothing; below 1 the rule underestimates the std.
    """
    bound = [(n, n.layer) for n in normalizations(model) if n.layer is not None]
    if not bound:
        raise ValueError("the model has no normalization bound to a conv/linear layer")
    patches: dict[int, list[Tensor]] = {id(layer): [] for _, layer in bound}
    images: dict[int, list[tuple[Tensor, Tensor]]] = {id(layer): [] for _, layer in bound}
    g = torch.Generator().manual_seed(0)

    def collect(layer: nn.Module, inputs: tuple) -> None:
        u = inputs[0].detach()
        share = math.ceil(max_rows * len(u) / len(x))  # rows kept from this batch
        if isinstance(layer, nn.Conv2d):  # each image's channel means and variances
            images[id(layer)].append((u.mean((2, 3)).double(),
                                      u.var((2, 3), unbiased=False).double()))  # fmt: skip
        else:
            flat = u.reshape(len(u), -1).double()
            images[id(layer)].append((flat, torch.zeros_like(flat)))
        if isinstance(layer, nn.Conv2d):
            cols = F.unfold(u, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
            u = cols.transpose(1, 2).reshape(-1, cols.shape[1])
        u = u.reshape(len(u), -1)
        if len(u) > share:
            u = u[torch.randperm(len(u), generator=g)[:share]]
        patches[id(layer)].append(u.double())

    _eval_with_input_hooks(model, x, {layer: collect for _, layer in bound}, batch_size)
    rows = []
    for i, (_, layer) in enumerate(bound, start=1):
        rows_ = torch.cat(patches.pop(id(layer)))
        # a grouped conv's output channel reads its group's inputs only: one covariance of
        # the patch features of each group, [g, d, d] (d = C / g * kernel positions)
        groups = getattr(layer, "groups", 1)
        d = rows_.shape[1] // groups
        centred = (rows_ - rows_.mean(0)).view(len(rows_), groups, d)
        cov = torch.einsum("rgi,rgj->gij", centred, centred) / max(len(rows_) - 1, 1)
        w = layer.weight.detach().double().reshape(groups, layer.weight.shape[0] // groups, d)
        per_channel = d // (layer.in_channels // groups) if isinstance(layer, nn.Conv2d) else 1
        feature = torch.arange(d)  # unfold orders a conv's features channel-major
        channel, offset = feature // per_channel, feature % per_channel
        true = torch.einsum("goi,gij,goj->go", w, cov, w)

        def ratio(model: Tensor, w=w, true=true) -> float:
            kept = torch.einsum("goi,gij,goj->go", w, model, w)
            return (kept / true).clamp_min(0).sqrt().mean().item()

        rows.append({
            "layer": i,
            "independent": ratio(cov * torch.eye(d, dtype=cov.dtype)),
            "spatial": ratio(cov * (channel[:, None] == channel[None, :])),
            "channel": ratio(cov * (offset[:, None] == offset[None, :])),
            "separable": ratio(_separable_covariance(cov, per_channel, layer)),
            "between": ratio(_between_image_covariance(images.pop(id(layer)), groups,
                                                       per_channel)),  # fmt: skip
            "patches": len(rows_),
        })  # fmt: skip
    return rows


def _between_image_covariance(
    images: list[tuple[Tensor, Tensor]], groups: int, per_channel: int
) -> Tensor:
    """The between-image model of a layer's patch covariance, [g, d, d]: from each image's
    per-channel spatial means and variances (`images`, per batch), the covariance B of the
    means across images (within each group of channels) for every pair of kernel offsets,
    plus the mean within-image variance W of a channel on the diagonal."""
    means = torch.cat([m for m, _ in images])
    within = torch.cat([v for _, v in images]).mean(0)
    centred = (means - means.mean(0)).view(len(means), groups, -1)
    between = torch.einsum("ngc,ngd->gcd", centred, centred) / max(len(means) - 1, 1)
    ones = torch.ones(per_channel, per_channel, dtype=between.dtype)
    diagonal = torch.diag_embed(within.view(groups, -1).repeat_interleave(per_channel, dim=1))
    return torch.stack([torch.kron(b, ones) for b in between]) + diagonal


def _separable_covariance(cov: Tensor, per_channel: int, layer: nn.Module) -> Tensor:
    """The separable model of the patch covariances `cov` [g, d, d] (features channel-major,
    `per_channel` kernel offsets each): C0[c, d] R[a, b], with C0 the channels' covariance
    averaged over the offsets and R[a, b] = r(a - b) the correlation of one channel's values
    at offsets a and b, averaged over the channels and over the offset pairs of the same
    displacement (a conv's kernel grid; a linear layer has one offset, so the model is
    `cov` itself)."""
    g, d, _ = cov.shape
    k = per_channel
    blocks = cov.view(g, d // k, k, d // k, k)
    lag0 = blocks.diagonal(dim1=2, dim2=4).mean(-1)  # [g, C, C]
    var = lag0.diagonal(dim1=1, dim2=2)  # [g, C]
    same = blocks.diagonal(dim1=1, dim2=3)  # one channel's [g, k, k, C]
    live = (var > 0).to(cov.dtype)[:, None, None, :]  # channels that vary
    corr = same / var.clamp_min(torch.finfo(cov.dtype).tiny)[:, None, None, :] * live
    corr = corr.sum((0, 3)) / live.sum().clamp_min(1)  # [k, k], mean over channels
    if k > 1:
        kw = layer.kernel_size[1]
        row, col = torch.arange(k) // kw, torch.arange(k) % kw
        lag = (row[:, None] - row[None, :]) * (2 * kw - 1) + (col[:, None] - col[None, :])
        _, index = torch.unique(lag, return_inverse=True)
        per_lag = torch.zeros(int(index.max()) + 1, dtype=cov.dtype)
        per_lag.index_add_(0, index.flatten(), corr.flatten())
        counts = torch.bincount(index.flatten()).to(cov.dtype)
        corr = (per_lag / counts)[index]
    return torch.stack([torch.kron(c0, corr) for c0 in lag0])


def _operation(model: nn.Module, step: Any) -> str:
    """What a step of the propagation's plan computes, in a word (a module's class name, a
    function's or method's name)."""
    if step.op == "call_module":
        return type(model.get_submodule(step.target)).__name__
    return getattr(step.target, "__name__", str(step.target))


@torch.no_grad()
def rule_errors(model: nn.Module, x: Tensor, *, batch_size: int = 500) -> list[dict[str, Any]]:
    """Where analytic norm's estimates go wrong: for every step of the moment propagation
    that has a rule (conv, activation, pooling, residual addition, ...), the rule's own
    error given the true moments of its inputs, beside the error of the propagated estimate
    that carries all errors before it.

    The true per-channel moments of every step's output are measured on `x` with the model
    in eval mode; the propagation is first run from the current weights (setting the
    statistics, as a training forward does). Per step, medians over channels (channels with
    a true sd below 1e-6 left out) of sigma_rule / sigma_true and |mu_rule - mu_true| /
    sigma_true ("own_*", the rule given the true inputs) and the same for the propagated
    estimate. Left out: normalization steps (their output moments hold by construction) and
    steps whose rule and operation both pass the input's moments on (identity, dropout in
    eval, flatten: exact).
    """
    propagation = propagation_of(model)
    if propagation is None:
        raise ValueError("the model has no moment propagation (no analytic normalization)")
    propagated = propagation.propagate(model, x.shape[1], tuple(x.shape[2:]))
    steps = propagation.plan
    sums: list[_ChannelMoments | None] = [None] * len(steps)
    sizes: list[tuple[int, ...]] = [()] * len(steps)
    was_training = model.training
    model.eval()
    try:
        for batch, _ in datasets.batches(datasets.Split(x, torch.zeros(len(x))), batch_size):
            for i, (_, value) in enumerate(propagation.execute(model, batch)):
                if not (
                    isinstance(value, Tensor) and value.is_floating_point() and value.ndim >= 2
                ):
                    continue
                sums[i] = sums[i] or _ChannelMoments()
                sums[i].add(value)
                sizes[i] = tuple(value.shape[2:])
    finally:
        model.train(was_training)
    param = next(model.parameters())
    true: list[Any] = []
    for entry, size in zip(sums, sizes, strict=True):
        if entry is None:
            true.append(None)
            continue
        mean, var = entry.mean_var()
        true.append((mean.to(param), var.to(param), size))
    own = propagation.rules_given(model, true)
    rows = []
    for step, measured, alone, carried in zip(steps, true, own, propagated.values(), strict=True):
        if measured is None or alone is None or alone[0].shape != measured[0].shape:
            continue
        if any(
            t is not None and alone[0] is t[0] and alone[1] is t[1]
            and torch.allclose(t[0], measured[0]) and torch.allclose(t[1], measured[1])
            for t in true
        ):  # fmt: skip
            continue  # the step passes its input on (identity, dropout, flatten): exact
        mean, sd = measured[0].double(), measured[1].double().sqrt()
        kept = sd > 1e-6

        def errors(state: State, mean=mean, sd=sd, kept=kept) -> tuple[float, float]:
            est_mean, est_sd = state[0].double()[kept], state[1].double()[kept].sqrt()
            ratio = (est_sd / sd[kept]).median().item()
            return ratio, ((est_mean - mean[kept]).abs() / sd[kept]).median().item()

        row = {"step": step.name, "operation": _operation(model, step)}
        row["own_sigma_ratio"], row["own_mean_error"] = errors(alone)
        if carried is not None:
            row["sigma_ratio"], row["mean_error"] = errors(carried)
        rows.append(row)
    return rows


def rule_error_summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """`rule_errors` rows per operation: how many steps, and the median, min and max over
    them of the rule's own sigma ratio, and the median of its own mean error."""
    found: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        found.setdefault(row["operation"], []).append(row)
    summary = {}
    for operation, group in found.items():
        ratios = torch.tensor([r["own_sigma_ratio"] for r in group])
        errors = torch.tensor([r["own_mean_error"] for r in group])
        summary[operation] = {
            "steps": len(group),
            "sigma_ratio_median": ratios.median().item(),
            "sigma_ratio_min": ratios.min().item(),
            "sigma_ratio_max": ratios.max().item(),
            "mean_error_median": errors.median().item(),
        }
    return summary
