"""Swap normalizations in any model (`convert`) and fold them away for inference (`fold`).

Both return a new model and leave their input untouched, in the manner of PyTorch's
`SyncBatchNorm.convert_sync_batchnorm`: parameters and buffers are copied, `requires_grad`
is kept.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import fx, nn

from . import analytic
from .bayes import add_noise
from .norms import (
    DEFAULT_GROUPS,
    LAYERS,
    BatchNorm,
    GroupNorm,
    Norm,
    _Normalization,
    make_norm,
    out_features,
    output_rows,
    set_output_rows,
)
from .plan import Tracer

_BATCH_NORMS = (nn.modules.batchnorm._BatchNorm, _Normalization)


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _layer_norm_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(layer name, norm name) for every normalization whose input is the output of a
    conv/linear layer used nowhere else, found by tracing the model's graph."""
    graph = Tracer().trace(model)
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        module = model.get_submodule(node.target)
        if not isinstance(module, _BATCH_NORMS) or not node.args:
            continue
        source = node.args[0]
        if (
            isinstance(source, fx.Node)
            and source.op == "call_module"
            and isinstance(model.get_submodule(source.target), LAYERS)
            and len(source.users) == 1
        ):
            pairs.append((source.target, node.target))
    return pairs


def convert(
    model: nn.Module,
    norm: str | Norm,
    noise: str | None = None,
    *,
    input_mean: torch.Tensor | float = 0.0,
    input_var: torch.Tensor | float = 1.0,
    inputs: torch.Tensor | None = None,
    groups: int = DEFAULT_GROUPS,
    strict: bool = True,
    rectified_residuals: bool = False,
    border_aware_convs: bool = False,
    **noise_options,
) -> nn.Module:
    """A copy of `model` in which every batch normalization (PyTorch's or stochnorm's) that
    follows a conv/linear layer becomes the normalization `norm`, bound to that layer. The
    affine parameters (s, b) are copied; BN's running statistics are kept where the new
    normalization has them. For `norm="analytic"`, moments are propagated from the given
    per-channel input moments (defaults: standardized inputs), or from sample `inputs`
    [N, C, H, W] (e.g. a few hundred training images): their measured per-channel moments,
    the first conv's output moments exact from their patch covariance, and the statistics
    set at once for their size; `rectified_residuals` chooses the rule of a ReLU after a
    residual addition and `border_aware_convs` whether the conv rule counts zero padding
    (`stochnorm.analytic.MomentPropagation`); `groups` is group norm's G.
    `norm="none"` is `fold`.
    `noise` ("bn-like" or "bayes") adds noise after every new normalization, with
    `noise_options` passed to `stochnorm.bayes.add_noise`. The source's `eps` (and a batch
    norm's `momentum`, None included) carry over; options stochnorm's layers lack
    (`affine=False`, `track_running_stats=False`) are an error. A batch norm with no
    conv/linear in front cannot be converted: an error naming it, or with `strict=False` a
    warning, the layer kept as it is.
    """
    norm = Norm.parse(norm)
    if norm is Norm.NONE:
        return fold(model)
    new = copy.deepcopy(model)
    pairs = _layer_norm_pairs(new)
    if not pairs:
        raise ValueError("convert found no batch normalization after a conv/linear layer")
    _refuse_unconverted(new, {name for _, name in pairs}, strict)
    for layer_name, norm_name in pairs:
        layer, old = new.get_submodule(layer_name), new.get_submodule(norm_name)
        _check_options(norm_name, old)
        factory = {"device": layer.weight.device, "dtype": layer.weight.dtype}
        replacement = make_norm(norm, out_features(layer), layer, groups=groups, **factory)
        replacement.eps = old.eps
        if isinstance(replacement, BatchNorm) and hasattr(old, "momentum"):
            replacement.momentum = old.momentum
        with torch.no_grad():
            for name in ("weight", "bias"):  # absent when BN has affine=False
                source = getattr(old, name)
                if source is not None:
                    getattr(replacement, name).copy_(source)
                    getattr(replacement, name).requires_grad_(source.requires_grad)
            if (
                isinstance(replacement, BatchNorm)
                and getattr(old, "running_mean", None) is not None
            ):
                replacement.running_mean.copy_(old.running_mean)
                replacement.running_var.copy_(old.running_var)
                tracked = getattr(old, "num_batches_tracked", None)
                if tracked is not None:  # the estimates' age: population norm's first batch
                    replacement.num_batches_tracked.copy_(tracked)  # and momentum=None's average
        replacement.train(old.training)
        _set_submodule(new, norm_name, _with_what_follows(replacement, old))
    if norm is Norm.ANALYTIC and inputs is not None:
        mean, var, patches = analytic.input_moments(new, inputs)
        size = tuple(inputs.shape[2:])
        analytic.attach(new, mean, var, channels=inputs.shape[1], size=size,
                        input_patches=patches, rectified_residuals=rectified_residuals,
                        border_aware_convs=border_aware_convs)  # fmt: skip
    elif norm is Norm.ANALYTIC:
        analytic.attach(new, input_mean, input_var, rectified_residuals=rectified_residuals,
                        border_aware_convs=border_aware_convs)  # fmt: skip
    else:
        analytic.detach(new)
    if noise is not None:
        add_noise(new, noise, **noise_options)
    return new


def _with_what_follows(replacement: nn.Module, old: nn.Module) -> nn.Module:
    """`replacement`, followed by the submodules of a batch norm fused with what comes after
    it (timm's BatchNormAct2d: drop, then act), in their order; a plain batch norm has
    none, and stochnorm's own normalizations neither (their children, e.g. attached noise,
    are part of them)."""
    if isinstance(old, _Normalization):
        return replacement
    after = [m for m in old.children() if not isinstance(m, nn.Identity)]
    return nn.Sequential(replacement, *after) if after else replacement


def _check_options(name: str, old: nn.Module) -> None:
    for option in ("affine", "track_running_stats"):
        if getattr(old, option, True) is False:
            raise ValueError(
                f"convert: {name} has {option}=False, which stochnorm's normalizations do not "
                "support; build the model with the option on"
            )


def _refuse_unconverted(model: nn.Module, converted: set[str], strict: bool) -> None:
    """Every batch norm of `model` that is not among `converted` (no conv/linear layer in
    front of it): a ValueError naming them, or with `strict=False` a warning."""
    left = [name for name, m in model.named_modules()
            if isinstance(m, _BATCH_NORMS) and name not in converted]  # fmt: skip
    if not left:
        return
    message = (
        f"convert: {len(left)} batch norm(s) have no conv/linear layer in front and stay as "
        f"they are (their outputs then depend on the batch): {', '.join(left)}"
    )
    if strict:
        raise ValueError(message + "; pass strict=False to keep them")
    warnings.warn(message, stacklevel=3)


@torch.no_grad()
def _eval_statistics(norm: _Normalization, layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The (mu, sigma) that `norm` uses in evaluation mode."""
    was_training = norm.training
    norm.eval()
    try:
        probe = torch.zeros(1, norm.num_features, device=norm.weight.device)
        return tuple(t.detach().clone() for t in norm.statistics(probe))
    finally:
        norm.train(was_training)


@torch.no_grad()
def _eval_affine(norm: _Normalization) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, c) such that `norm` outputs a * z + c for its normalized z in evaluation mode:
    its (s, b), or what its attached noise makes of them with the noise off (learned scale
    noise: (z + b) s, so a = s, c = b s)."""
    if norm.noise is None:
        return norm.weight, norm.bias
    was_training = norm.noise.training
    norm.noise.eval()
    try:
        zero = torch.zeros(1, norm.num_features, device=norm.weight.device)
        shift = norm.noise(zero, norm.weight, norm.bias)[0]
        return norm.noise(zero + 1, norm.weight, norm.bias)[0] - shift, shift
    finally:
        norm.noise.train(was_training)


@torch.no_grad()
def fold(model: nn.Module) -> nn.Module:
    """A plain inference copy of `model`: every normalization, with its evaluation-mode
    statistics and affine, is folded into the conv/linear layer before it,

        w' = w * s / sigma,   a' = (a - mu) * s / sigma + b,

    and replaced by `nn.Identity`. The copy is in eval mode and computes what the eval-mode
    model computes (up to round-off) at the cost of the network without normalization.
    """
    new = copy.deepcopy(model).eval()
    for layer_name, norm_name in _layer_norm_pairs(new):
        layer, norm = new.get_submodule(layer_name), new.get_submodule(norm_name)
        if isinstance(norm, GroupNorm):
            raise ValueError(
                f"fold: {norm_name} is a {type(norm).__name__}, which normalizes each sample by "
                "its own statistics; it cannot be folded into the layer in front"
            )
        if isinstance(norm, _Normalization):
            mu, sigma = _eval_statistics(norm, layer)
            scale, shift = _eval_affine(norm)
        else:  # PyTorch's batch norm
            mu, sigma = norm.running_mean, (norm.running_var + norm.eps).sqrt()
            scale = norm.weight if norm.weight is not None else torch.ones_like(mu)
            shift = norm.bias if norm.bias is not None else torch.zeros_like(mu)
        factor = scale / sigma
        bias = layer.bias if layer.bias is not None else torch.zeros_like(mu)
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros_like(mu))
        layer.bias.copy_((bias - mu) * factor + shift)
        set_output_rows(layer, output_rows(layer) * factor[:, None])
        _set_submodule(new, norm_name, _with_what_follows(nn.Identity(), norm))
    analytic.detach(new)
    leftover = [n for n, m in new.named_modules() if isinstance(m, _BATCH_NORMS)]
    if leftover:
        raise ValueError(f"fold cannot fold normalizations not preceded by a layer: {leftover}")
    return new


__all__ = ["convert", "fold"]
