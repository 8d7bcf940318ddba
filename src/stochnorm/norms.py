"""Normalization layers and the one factory that maps a name to a layer.

Every normalization computes main paper eq. (2) for the conv/linear layer in front of it,

    y = (u - mu) / sigma * s + b,    u = w·x + a  (the layer's output),

and the variants differ only in how `mu` and `sigma` (one value per output channel) are
obtained. `_Normalization` owns the affine parameters (`weight` = s, `bias` = b, named as
in PyTorch's batch norm so that state dicts carry over) and the formula; a subclass
implements `statistics(u)`. A normalization that needs the weights `w` of its layer (weight
and analytic norm, projection, folding) is bound to that layer with `bind`; the reference is
not a submodule, so parameters are not listed twice.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn
from torch import distributed as dist
from torch.nn import functional as F

from .options import Option


class _SumOverProcesses(torch.autograd.Function):
    """The sum of a tensor over the processes of the default group, differentiable: the
    gradient of each process's input is the sum of the gradients of all processes' outputs
    (synchronized batch norm: every process's loss depends on every process's batch)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def all_reduce(x: Tensor) -> Tensor:
    return _SumOverProcesses.apply(x)


Layer = nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear


class Norm(Option):
    """Normalization placed after every conv/linear layer."""

    NONE = "none"  # plain network (optionally with data-dependent initialization)
    BATCH = "batch"  # mu, sigma over the batch and spatial positions; running ones in eval
    WEIGHT = "weight"  # mu = a (the layer's bias, if any), sigma = ||w||
    ANALYTIC = "analytic"  # mu, sigma propagated from the data's input moments (moments.py)
    POPULATION = "population"  # mu, sigma = running population estimates, also in training
    GROUP = "group"  # mu, sigma per sample over groups of channels and positions (Wu & He)
    LAYER = "layer"  # mu, sigma per sample over all channels and positions (group norm, G = 1)


TRANSPOSED_CONVS = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
# The layers a normalization can be bound to: what it normalizes is their output per channel.
LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, *TRANSPOSED_CONVS, nn.Linear)


def out_features(layer: nn.Module) -> int:
    """Output channels of a conv (transposed or not) or output features of a linear layer."""
    if isinstance(layer, nn.Linear):
        return layer.out_features
    if isinstance(layer, LAYERS):
        return layer.out_channels
    raise TypeError(f"expected a conv or linear layer, got {type(layer).__name__}")


def output_rows(layer: nn.Module) -> Tensor:
    """The weight of `layer` as one row per output channel, [O, fan-in]: the weights that
    make output channel o. A conv's or linear layer's weight is laid out that way already
    (a view); a transposed conv's, [C_in, O / groups, *kernel], is reordered (a copy that
    autograd follows; `set_output_rows` writes one back)."""
    weight = layer.weight
    if not isinstance(layer, TRANSPOSED_CONVS):
        return weight.flatten(1)
    groups = layer.groups
    per_group = weight.view(groups, weight.shape[0] // groups, weight.shape[1], -1)
    return per_group.transpose(1, 2).reshape(groups * weight.shape[1], -1)


@torch.no_grad()
def set_output_rows(layer: nn.Module, rows: Tensor) -> None:
    """Write `rows` [O, fan-in] (in the order of `output_rows`) into `layer.weight`."""
    weight = layer.weight
    if not isinstance(layer, TRANSPOSED_CONVS):
        weight.copy_(rows.view_as(weight))
        return
    groups = layer.groups
    per_group = rows.view(groups, weight.shape[1], weight.shape[0] // groups, -1)
    weight.copy_(per_group.transpose(1, 2).reshape(weight.shape))


class _Normalization(nn.Module):
    """Base of all normalizations: `y = (u - mu) / sigma * weight + bias` per channel
    (dimension 1 of u), for u of shape [B, C] or [B, C, *spatial]."""

    _version = 1

    def __init__(self, num_features: int, eps: float = 1e-5, *, device=None, dtype=None) -> None:
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(num_features, **factory_kwargs))
        self.bias = nn.Parameter(torch.empty(num_features, **factory_kwargs))
        self._bound: tuple[nn.Module, ...] = ()
        self.noise: nn.Module | None = None  # see stochnorm.noise
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)

    def bind(self, layer: nn.Module) -> _Normalization:
        """Attach the conv/linear layer whose output this layer normalizes."""
        if out_features(layer) != self.num_features:
            raise ValueError(
                f"{type(self).__name__}({self.num_features}) cannot follow a layer with "
                f"{out_features(layer)} outputs"
            )
        self._bound = (layer,)
        return self

    @property
    def layer(self) -> nn.Module | None:
        """The bound conv/linear layer, or None."""
        return self._bound[0] if self._bound else None

    def _require_layer(self) -> nn.Module:
        if not self._bound:
            raise RuntimeError(
                f"{type(self).__name__} needs the weights of its conv/linear layer: call "
                ".bind(layer) (models built by stochnorm and convert() do)"
            )
        return self._bound[0]

    # How many consecutive output channels of the layer in front share one scale invariance:
    # the output does not change when their weights are scaled together (1: each channel).
    invariant_channels = 1

    def statistics(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, sigma), each [C], for the layer output `u`."""
        raise NotImplementedError

    def normalize(self, u: Tensor) -> Tensor:
        """`(u - mu) / sigma`, before the affine."""
        mu, sigma = self.statistics(u)
        shape = (1, -1) + (1,) * (u.ndim - 2)
        return (u - mu.view(shape)) / sigma.view(shape)

    def _check_input(self, u: Tensor) -> None:
        if u.ndim < 2 or u.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__}({self.num_features}) got input of shape {tuple(u.shape)}"
            )

    def kl(self) -> Tensor:
        """KL divergence of the noise's posterior to its prior (0 without a learned one)."""
        if self.noise is None or not hasattr(self.noise, "kl"):
            return self.weight.new_zeros(())
        return self.noise.kl(self.weight)

    def forward(self, u: Tensor) -> Tensor:
        self._check_input(u)
        if self.noise is not None:
            return self.noise(self.normalize(u), self.weight, self.bias)
        # (u - mu) / sigma * s + b as one fused multiply-add: u * scale + shift
        mu, sigma = self.statistics(u)
        scale = self.weight / sigma
        shift = self.bias - mu * scale
        shape = (1, -1) + (1,) * (u.ndim - 2)
        return torch.addcmul(shift.view(shape), u, scale.view(shape))

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


class BatchNorm(_Normalization):
    """Batch normalization (Ioffe & Szegedy; main paper eq. 1 and 4): in training, mu and
    sigma^2 are the mean and biased variance of u over the batch and spatial positions
    (n = k·z values per channel); running averages of them (unbiased variance, as PyTorch)
    are used in evaluation. Numerically the same as `torch.nn.BatchNorm2d`.

    `ghost_batch` = k: in training, the statistics are those of each group of k consecutive
    samples of the batch (Hoffer et al.'s ghost batches; what each replica computes in
    data-parallel training without synchronized BN), the running estimates those of the
    first group.

    `sync` (data-parallel training, `TrainConfig.sync_bn`): in training, the statistics of
    the global batch, all processes' shares together (torch's SyncBatchNorm: two all-reduces
    in every layer, differentiable, so the gradient is that of one process on the whole
    batch); without a process group it changes nothing."""

    def __init__(
        self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, *,
        device=None, dtype=None,
    ) -> None:  # fmt: skip
        self.momentum = momentum  # None: the cumulative average over all batches, as torch's
        self.ghost_batch: int | None = None
        self.sync = False
        super().__init__(num_features, eps, device=device, dtype=dtype)
        factory_kwargs = {"device": device, "dtype": dtype}
        self.register_buffer("running_mean", torch.zeros(num_features, **factory_kwargs))
        self.register_buffer("running_var", torch.ones(num_features, **factory_kwargs))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        self.running_var.fill_(1)
        self.num_batches_tracked.zero_()

    def statistics(self, u: Tensor) -> tuple[Tensor, Tensor]:
        if not self.training:
            return self.running_mean, (self.running_var + self.eps).sqrt()
        var, mu, unbiased = self._batch_moments(u)
        self._track(mu, unbiased)
        return mu, (var + self.eps).sqrt()

    def _batch_moments(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The biased variance and the mean of u per channel over the batch and spatial
        positions (with gradients), and the unbiased variance (without); over the global
        batch when `_synced`."""
        dims = [0] + list(range(2, u.ndim))
        n = u.numel() // u.shape[1]
        if not self._synced:
            var, mu = torch.var_mean(u, dims, correction=0)
            return var, mu, var.detach() * (n / max(n - 1, 1))
        count = u.new_full((1,), float(n))
        total = all_reduce(torch.cat([u.sum(dims), count]))  # sums over the processes
        n = total[-1].detach()  # on the device: no host synchronization
        mu = total[:-1] / n
        shape = (1, -1) + (1,) * (u.ndim - 2)
        var = all_reduce((u - mu.view(shape)).pow(2).sum(dims)) / n  # two passes, as var_mean
        return var, mu, var.detach() * (n / (n - 1).clamp_min(1))

    @property
    def _synced(self) -> bool:
        """Whether this training step's statistics are the global batch's (`sync`)."""
        return (self.sync and self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1)  # fmt: skip

    def _average_factor(self) -> float:
        """The weight of the current batch in the running estimates: `momentum`, or 1 / the
        number of batches so far for the cumulative average (momentum None), counted after
        this batch as torch's batch norm does."""
        if self.momentum is not None:
            return self.momentum
        return 1.0 / float(self.num_batches_tracked)

    @torch.no_grad()
    def _track(self, mu: Tensor, unbiased: Tensor) -> None:
        """Move the running estimates towards this batch's statistics."""
        self.num_batches_tracked += 1
        factor = self._average_factor()
        self.running_mean.lerp_(mu.detach(), factor)
        self.running_var.lerp_(unbiased, factor)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, *args) -> None:
        # torch's batch norm before its version 2 had no counter; torch fills it in too
        state_dict.setdefault(prefix + "num_batches_tracked", torch.tensor(0, dtype=torch.long))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, *args)

    def forward(self, u: Tensor) -> Tensor:
        if u.numel() == 0:  # nothing to normalize; the running estimates stay as they are
            self._check_input(u)
            return u.clone()
        if self.training and self.ghost_batch is not None and len(u) > self.ghost_batch:
            self._check_input(u)
            z = self._ghost_normalize(u)
            if self.noise is not None:
                return self.noise(z, self.weight, self.bias)
            shape = (1, -1) + (1,) * (u.ndim - 2)
            return torch.addcmul(self.bias.view(shape), z, self.weight.view(shape))
        if self.noise is not None or self._synced:
            return super().forward(u)
        # the fused kernel computes the same as the base formula, faster
        self._check_input(u)
        factor = 0.0
        if self.training:
            self.num_batches_tracked += 1
            factor = self._average_factor()
        return F.batch_norm(
            u, self.running_mean, self.running_var, self.weight, self.bias,
            self.training, factor, self.eps,
        )  # fmt: skip

    def _ghost_normalize(self, u: Tensor) -> Tensor:
        """`(u - mu) / sigma` with mu, sigma of each group of `ghost_batch` consecutive
        samples (data-parallel training without synchronized statistics, each group one
        replica's batch); the running estimates follow the first group, as a replica's
        would that DDP broadcasts to the others."""
        if len(u) % self.ghost_batch:
            raise ValueError(
                f"a batch of {len(u)} does not split into ghost batches of {self.ghost_batch}"
            )
        groups = u.split(self.ghost_batch)
        self.num_batches_tracked += 1
        out = [F.batch_norm(groups[0], self.running_mean, self.running_var, None, None, True,
                            self._average_factor(), self.eps)]  # fmt: skip
        out += [F.batch_norm(g, None, None, None, None, True, 0.0, self.eps) for g in groups[1:]]
        return torch.cat(out)

    def extra_repr(self) -> str:
        ghost = f", ghost_batch={self.ghost_batch}" if self.ghost_batch is not None else ""
        sync = ", sync=True" if self.sync else ""
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}{ghost}{sync}"


class WeightNorm(_Normalization):
    """Weight normalization (Salimans & Kingma) in the form of eq. (2): mu = a (the bias of
    the bound layer, zero if it has none) and sigma = ||w|| per output channel, so that
    y = (w·x / ||w||) * s + b. Independent of the batch; invariant to w -> c w, c > 0."""

    def statistics(self, u: Tensor) -> tuple[Tensor, Tensor]:
        layer = self._require_layer()
        sigma = output_rows(layer).norm(dim=1).clamp_min(torch.finfo(u.dtype).tiny)
        mu = layer.bias if layer.bias is not None else torch.zeros_like(sigma)
        return mu, sigma

    def forward(self, u: Tensor) -> Tensor:
        layer = self._require_layer()
        if self.noise is not None or isinstance(layer, TRANSPOSED_CONVS):
            return super().forward(u)
        # the base formula's u * (s / sigma) + (b - mu s / sigma) in fewer operations: the
        # scale s / ||w|| with its gradient in closed form, and no mean without a layer bias
        self._check_input(u)
        scale = _InverseNormScale.apply(layer.weight, self.weight)
        shift = self.bias
        if layer.bias is not None:
            shift = torch.addcmul(shift, layer.bias, scale, value=-1.0)
        shape = (1, -1) + (1,) * (u.ndim - 2)
        return torch.addcmul(shift.view(shape), u, scale.view(shape))


class _InverseNormScale(torch.autograd.Function):
    """s / ||w_o|| per output channel o of a conv/linear weight w [O, ...] (the norm
    clamped to the smallest normal number, as `WeightNorm.statistics`), with the gradient
    in closed form: d/ds = g / ||w_o||, d/dw_o = -g s w_o / ||w_o||^3."""

    @staticmethod
    def forward(ctx, weight: Tensor, s: Tensor) -> Tensor:
        dims = tuple(range(1, weight.ndim))
        sigma = torch.linalg.vector_norm(weight, dim=dims).clamp_min(torch.finfo(weight.dtype).tiny)
        scale = s / sigma
        ctx.save_for_backward(weight, sigma, scale)
        return scale

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        weight, sigma, scale = ctx.saved_tensors
        d_s = grad / sigma
        by_row = (d_s * scale).div_(sigma).neg_()  # -g s / ||w||^3
        return weight * by_row.view((-1,) + (1,) * (weight.ndim - 1)), d_s


class AnalyticNorm(_Normalization):
    """Analytic normalization (Shekhovtsov & Flach, CVWW 2018): mu and sigma are the mean and
    standard deviation of the layer output over the training distribution, estimated by
    propagating the data's per-channel input moments through the network in closed form
    (`stochnorm.analytic`), from the current weights at every training step and with
    gradients through them. The last estimates are kept as the buffers `mu`, `sigma` and used
    in evaluation; until a propagation has set them (buffer `has_statistics`), evaluation
    raises instead of normalizing with the placeholders. The output for one sample never
    depends on the other samples."""

    # 2: the buffer has_statistics (state dicts of version 1 always held set statistics:
    # stochnorm's models propagated once when built)
    _version = 2

    def __init__(self, num_features: int, eps: float = 1e-5, *, device=None, dtype=None) -> None:
        super().__init__(num_features, eps, device=device, dtype=dtype)
        factory_kwargs = {"device": device, "dtype": dtype}
        self.register_buffer("mu", torch.zeros(num_features, **factory_kwargs))
        self.register_buffer("sigma", torch.ones(num_features, **factory_kwargs))
        self.register_buffer("has_statistics", torch.tensor(False, device=device))
        self._ready = False  # has_statistics, without reading the tensor on every forward
        self._current: tuple[Tensor, Tensor] | None = None

    def set_statistics(self, mean: Tensor, var: Tensor) -> None:
        """Receive the propagated moments of the layer output (with their gradients)."""
        sigma = (var + self.eps).sqrt()
        self._current = (mean, sigma)
        with torch.no_grad():
            self.mu.copy_(mean)
            self.sigma.copy_(sigma)
            if not self._ready:
                self.has_statistics.fill_(True)
                self._ready = True

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, *args) -> None:
        version = local_metadata.get("version")
        key = prefix + "has_statistics"
        if (version is None or version < 2) and key not in state_dict:
            state_dict[key] = torch.tensor(True)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, *args)
        self._ready = bool(self.has_statistics)

    def __getstate__(self) -> dict:
        # the propagated statistics belong to one forward pass (and carry its graph)
        return {**self.__dict__, "_current": None}

    def statistics(self, u: Tensor) -> tuple[Tensor, Tensor]:
        if not self.training:
            if not self._ready:
                raise RuntimeError(
                    "AnalyticNorm has no statistics yet: run one training forward (or "
                    "stochnorm.analytic.attach with the input's channels and size) before "
                    "evaluating, folding or exporting the model"
                )
            return self.mu, self.sigma
        if self._current is None:
            raise RuntimeError(
                "AnalyticNorm has no statistics: its model must propagate moments before "
                "each training forward (stochnorm.analytic.attach does that)"
            )
        return self._current


class PopulationNorm(BatchNorm):
    """Population normalization (Luo et al., 2019): the forward pass normalizes with
    estimates of the population statistics of u, also in training, never with those of the
    current batch, so the output for one sample does not depend on the rest of its batch.

    The estimates are running averages (momentum `momentum`) of the batch mean and
    unbiased variance, updated after the current batch has been normalized; the first
    training batch initializes them (its variance only if it has two or more values per
    channel: a batch of one image at 1x1 would set a zero variance; the estimate then starts
    at 1). Luo et al. decompose BN into this normalization plus
    an explicit penalty on the scales ("gamma decay", `gamma_decay` below) standing in for
    the noise of batch statistics.

    `gradient` (our choice; Luo et al.'s population statistics mu_P(w), sigma_P(w) are
    functions of the weights): True, the backward pass differentiates the statistics as if
    they were the current batch's, `mu_P + (mu_B - stop_grad(mu_B))` and the same for sigma,
    an estimate of the gradient of the population statistics that leaves the forward value
    unchanged. False, the statistics are constants (stop-gradient), which loses BN's
    invariance to the scale of w in the gradient: measured on the quick profile, that
    network barely trains (Ioffe & Szegedy, section 2, predict this).

    Under data-parallel training the batch statistics are the global batch's (`sync`, set
    by the training loop, `TrainConfig.population_sync="all-reduce"`): every process then
    holds the same estimates, those one process would compute on the whole batch, and no
    broadcast of them is needed. Without `sync` ("broadcast") each process uses its own
    share's statistics and the training loop has DDP broadcast rank 0's estimates.
    """

    def __init__(
        self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, *,
        gradient: bool = True, device=None, dtype=None,
    ) -> None:  # fmt: skip
        super().__init__(num_features, eps, momentum, device=device, dtype=dtype)
        self.gradient = gradient

    def statistics(self, u: Tensor) -> tuple[Tensor, Tensor]:
        if not self.training:
            return super().statistics(u)
        var, mu, unbiased = self._batch_moments(u)
        with torch.no_grad():  # the estimates start at the first batch (no host sync)
            first = self.num_batches_tracked == 0
            self.running_mean.copy_(torch.where(first, mu, self.running_mean))
            if u.numel() // u.shape[1] >= 2:  # one value per channel: no variance yet
                self.running_var.copy_(torch.where(first, unbiased, self.running_var))
            mu_p = self.running_mean.clone()
            sigma_p = (self.running_var + self.eps).sqrt()
        self._track(mu, unbiased)
        if not self.gradient:
            return mu_p, sigma_p
        sigma = (var + self.eps).sqrt()
        return mu_p + (mu - mu.detach()), sigma_p + (sigma - sigma.detach())

    def forward(self, u: Tensor) -> Tensor:
        if self.gradient or self.noise is not None:
            return _Normalization.forward(self, u)
        # no gradient flows through the population statistics, so the fused evaluation-mode
        # kernel applies them (and the affine) in one pass
        self._check_input(u)
        mu, sigma = self.statistics(u)
        var = sigma.pow(2) - self.eps
        return F.batch_norm(u, mu, var, self.weight, self.bias, False, 0.0, self.eps)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gradient={self.gradient}"


class GroupNorm(_Normalization):
    """Group normalization (Wu & He, 2018), the batch-independent normalization practitioners
    use at small batches: the C channels are split into `groups` groups of consecutive
    channels and every sample is normalized by the mean and biased variance over its own
    group's channels and positions, then `s`, `b` per channel. Computes what
    `torch.nn.GroupNorm` computes, in training and evaluation alike.

    `groups` is Wu & He's G (their default 32); a layer whose C it does not divide uses
    gcd(C, groups) groups, so every width works (G = 1 is layer norm over C, H, W). The output
    is invariant to scaling the weights of a whole group of the conv in front (not of one
    channel): projection scales each group of C / G rows to ||w|| = sqrt(C / G).
    """

    def __init__(
        self, num_features: int, groups: int = 32, eps: float = 1e-5, *, device=None,
        dtype=None,
    ) -> None:  # fmt: skip
        if groups < 1:
            raise ValueError(f"groups must be >= 1, got {groups}")
        self.groups = math.gcd(num_features, groups)
        if self.groups == 1 < groups and type(self) is GroupNorm:
            warnings.warn(
                f"GroupNorm({num_features}, groups={groups}): {groups} shares no divisor with "
                f"{num_features} channels, so this layer normalizes as layer norm (one group)",
                stacklevel=2,
            )
        super().__init__(num_features, eps, device=device, dtype=dtype)

    @property
    def invariant_channels(self) -> int:  # type: ignore[override]
        return self.num_features // self.groups

    def statistics(self, u: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError(
            f"{type(self).__name__} normalizes each sample by its own statistics; it has no "
            "per-channel mu, sigma (and cannot be folded into the layer in front)"
        )

    def normalize(self, u: Tensor) -> Tensor:
        return F.group_norm(u, self.groups, None, None, self.eps)

    def forward(self, u: Tensor) -> Tensor:
        self._check_input(u)
        if self.noise is not None:
            return self.noise(self.normalize(u), self.weight, self.bias)
        return F.group_norm(u, self.groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, groups={self.groups}, eps={self.eps}"


class LayerNorm(GroupNorm):
    """Layer normalization of a conv output as practitioners use it for images: group
    normalization with one group, each sample normalized over all its channels and
    positions (Ba et al., 2016; Wu & He's G = 1), then `s`, `b` per channel."""

    def __init__(self, num_features: int, eps: float = 1e-5, *, device=None, dtype=None) -> None:
        super().__init__(num_features, 1, eps, device=device, dtype=dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


# Batch norms that keep running estimates of batch statistics: stochnorm's (population norm
# included) and torch's, with any module that subclasses one (e.g. timm's BatchNormAct2d).
BATCH_NORMS = (BatchNorm, nn.modules.batchnorm._BatchNorm)


def gamma_decay(model: nn.Module) -> Tensor:
    """Luo et al.'s explicit regularizer of the scales: the sum of s_c^2 over every channel
    of every normalization in `model`. Their analysis of BN gives a coefficient zeta that
    shrinks as 1/M with the batch size M and depends on the loss curvature; the training
    loop multiplies this sum by a constant `gamma_decay` coefficient (a choice to measure)."""
    layers = normalizations(model)
    if not layers:
        return torch.zeros(())
    return sum(layer.weight.pow(2).sum() for layer in layers)


DEFAULT_GROUPS = 32  # Wu & He's default number of groups


def make_norm(
    norm: str | Norm, num_features: int, layer: nn.Module | None = None, *,
    groups: int = DEFAULT_GROUPS, device=None, dtype=None,
) -> nn.Module:  # fmt: skip
    """The normalization layer `norm` for `num_features` channels, bound to `layer` (the
    conv/linear in front of it) when given; `groups` is group norm's G. `Norm.NONE` gives
    `nn.Identity`."""
    norm = Norm.parse(norm)
    if norm is Norm.NONE:
        return nn.Identity()
    options = {"groups": groups} if norm is Norm.GROUP else {}
    module = _CLASSES[norm](num_features, **options, device=device, dtype=dtype)
    return module.bind(layer) if layer is not None else module


def needs_bias(norm: str | Norm) -> bool:
    """Whether the conv/linear before `norm` needs its own bias (any mean-subtracting
    normalization makes it redundant)."""
    return Norm.parse(norm) is Norm.NONE


def normalizations(model: nn.Module) -> list[_Normalization]:
    """Every stochnorm normalization layer in `model`, in registration order."""
    return [m for m in model.modules() if isinstance(m, _Normalization)]


_CLASSES: dict[Norm, type[_Normalization]] = {
    Norm.BATCH: BatchNorm,
    Norm.WEIGHT: WeightNorm,
    Norm.ANALYTIC: AnalyticNorm,
    Norm.POPULATION: PopulationNorm,
    Norm.GROUP: GroupNorm,
    Norm.LAYER: LayerNorm,
}
