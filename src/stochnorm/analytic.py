"""Moment propagation through a whole model, for analytic normalization (SPEC section 2).

The model's graph is traced once with torch.fx (normalization layers are leaves), so any
model the converter accepts works, residual networks included, not only chains. Before
every training forward, `MomentPropagation` walks the graph from the data's per-channel
input moments with the rules of `stochnorm.moments` and hands each `AnalyticNorm` the mean
and variance of its layer's output. The cost is a few small tensor operations per layer,
independent of the batch.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from . import moments
from .norms import AnalyticNorm, _Normalization
from .plan import (
    ADD,
    Ref,
    Step,
    Tracer,
    canonical_offset,
    conv_padding,
    first_ref,
    max_pool_offsets,
    max_pool_sources,
    pair,
    rectified_steps,
    symbolic_tracing,
    taps_inside,
    trace_plan,
    window_offsets,
    window_out,
    window_types,
)  # fmt: skip

State = tuple[Tensor, Tensor, tuple[int, ...]]  # mean [C], var [C], spatial size

# Elementwise activations whose moments come from Gauss-Hermite quadrature of the module or
# function itself (`moments.elementwise`); ReLU and leaky ReLU have closed forms.
ELEMENTWISE_MODULES = (
    nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.ELU, nn.SELU,
    nn.CELU, nn.Softplus, nn.Mish, nn.ReLU6, nn.Hardtanh,
)  # fmt: skip
ELEMENTWISE_FUNCTIONS = (
    F.silu, F.gelu, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.hardswish,
    F.hardsigmoid, F.elu, F.selu, F.celu, F.softplus, F.mish, F.relu6, F.hardtanh,
)  # fmt: skip
ELEMENTWISE_METHODS = ("sigmoid", "tanh")
MULTIPLY = (operator.mul, operator.imul, torch.mul)
CONCATENATE = (torch.cat, torch.concat)
SUPPORTED = (
    "conv (also transposed), linear, ReLU, leaky ReLU, elementwise activations (SiLU, GELU, "
    "sigmoid, tanh, hardswish, ELU, softplus, Mish, ...), average/max pooling (also a "
    "spatial mean), upsampling, "
    "residual addition, products of branches (gating), channel concatenation, flatten and "
    "normalizations"
)


class MomentPropagation(nn.Module):
    """Propagates input moments through `model` before every training forward (a forward
    pre-hook of the model), so that each AnalyticNorm sees the moments of its layer's output.

    A submodule of the model it serves (`model.moment_propagation`, see `attach`), holding
    the data's statistics as buffers that travel in the model's `state_dict`: `input_mean`,
    `input_var`, the per-channel moments of the (standardized, augmented) training inputs
    ([C], or [1] for one value broadcast to every channel), and optionally `patch_mean` [D],
    `patch_cov` [D, D], those of the input patches seen by the first conv/linear (see
    `patch_moments`), whose output moments are then exact instead of assuming independent
    inputs, and `patch_cross` [n, D, D], their cross-covariances at the offsets a max-pool
    right after that conv needs (`max_pool_offsets`): that max-pool's rule then takes the
    max of its window's correlated values (`_max_pool_rule`); without them it passes its
    input's moments on (the max of equal values, the papers' rule).

    The rules' options: `pool_correlation`: "full" (pooled values perfectly correlated: the
    variance is unchanged by average pooling, our default) or "none" (independent: the
    variance is divided by the window size). `rectified_residuals`: a ReLU after the
    residual addition of an earlier ReLU's output and another branch gets the moments of
    relu(relu(a) + b) (`moments.residual_relu`) and a ReLU of an already rectified value is
    the identity; False (the default) takes every ReLU's input as Gaussian, the papers'
    rule. `border_aware_convs`: the conv rule counts zero padding
    (`moments.conv_with_padding`); False (the default) takes every tap as inside, the
    papers' rule. Together with the max-pool rule, the two keep the statistics of residual
    networks at initialization within [0.8, 1.25] of the truth in almost every layer; the
    residual rule costs about 1.7 times the operations of a training step there (measured in
    results/benchmarks/rule-candidates.md and op_counts.md).

    The model's graph is traced once, at construction, with normalizations as leaves, and
    kept as a plan of plain steps that torch.compile traces without graph breaks. When
    the model is an `nn.Sequential`, whose forward calls every child, this module is called
    last and returns its input unchanged.
    """

    _version = 1

    def __init__(
        self,
        model: nn.Module,
        input_mean: Tensor | float = 0.0,
        input_var: Tensor | float = 1.0,
        pool_correlation: str = "full",
        input_patches: tuple[Tensor, ...] | None = None,
        rectified_residuals: bool = False,
        border_aware_convs: bool = False,
    ) -> None:
        super().__init__()
        moments.average_pool(torch.zeros(1), torch.ones(1), 1, pool_correlation)  # validates
        self.plan = trace_plan(Tracer().trace(model))
        self.pool_correlation = pool_correlation
        self.rectified_residuals = rectified_residuals
        self.border_aware_convs = border_aware_convs
        self._relu_of_rectified, self._residual_relus = rectified_steps(model, self.plan)
        self._max_pools = max_pool_sources(model, self.plan)
        self._constants: dict[tuple, Tensor] = {}  # see `_constant`
        self._offsets = max_pool_offsets(model, self.plan) if self._max_pools else []
        self.register_buffer("input_mean", torch.zeros(1))
        self.register_buffer("input_var", torch.ones(1))
        self.register_buffer("patch_mean", None)
        self.register_buffer("patch_cov", None)
        self.register_buffer("patch_cross", None)
        # True when loaded from a checkpoint written before these buffers existed (it holds
        # the normalizations' statistics but not the input moments: see `needs_input_moments`)
        self.needs_input_moments = False
        self.set_input_moments(input_mean, input_var, input_patches)

    @property
    def input_patches(self) -> tuple[Tensor, Tensor] | None:
        return None if self.patch_mean is None else (self.patch_mean, self.patch_cov)

    def set_input_moments(
        self,
        mean: Tensor | float,
        var: Tensor | float,
        patches: tuple[Tensor, ...] | None = None,
    ) -> None:
        """Replace the input moments (and the first layer's patch moments, None: drop them;
        `patch_moments` measures them, with the cross-covariances at `max_pool_offsets`)."""
        device = self.input_mean.device
        self.input_mean = torch.as_tensor(mean, dtype=torch.float32).flatten().to(device)
        self.input_var = torch.as_tensor(var, dtype=torch.float32).flatten().to(device)
        self.patch_mean = self.patch_cov = self.patch_cross = None
        if patches is not None:
            self.patch_mean, self.patch_cov = (t.detach().to(device) for t in patches[:2])
            if len(patches) > 2 and self._max_pools:
                cross = patches[2].detach().to(device)
                if len(cross) != len(self._offsets):
                    raise ValueError(
                        f"patch cross-covariances at {len(cross)} offsets given; this model's "
                        f"max-pools need {len(self._offsets)} (see max_pool_offsets)"
                    )
                self.patch_cross = cross
        self.needs_input_moments = False

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, *args):
        names = ("input_mean", "input_var", "patch_mean", "patch_cov", "patch_cross")
        if local_metadata.get("version") is None and prefix + "input_mean" not in state_dict:
            # a checkpoint from before this module kept its moments in the state dict
            self.needs_input_moments = True
            return
        for name in names:  # buffers take the saved shapes (channels, patch size)
            saved = state_dict.get(prefix + name)
            if saved is not None and (getattr(self, name) is None or
                                      getattr(self, name).shape != saved.shape):  # fmt: skip
                setattr(self, name, torch.empty_like(saved, device=self.input_mean.device))
        if prefix + "patch_mean" not in state_dict:
            self.patch_mean = self.patch_cov = None
        if prefix + "patch_cross" not in state_dict:  # also: saved before max-pools had a rule
            self.patch_cross = None
        self.needs_input_moments = False
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, *args)

    def before_forward(self, model: nn.Module, args: tuple) -> None:
        """The forward pre-hook of `model`: propagate in training mode (not while torch.fx
        traces the model, when the inputs are proxies)."""
        if model.training and not symbolic_tracing():
            x = args[0]
            self.propagate(model, channels=x.shape[1], size=tuple(x.shape[2:]))

    def forward(self, x: Any) -> Any:
        return x

    def extra_repr(self) -> str:
        patches = ", exact first layer" if self.patch_mean is not None else ""
        return (
            f"input channels={self.input_mean.numel()}{patches}, pool_correlation="
            f"{self.pool_correlation}, rectified_residuals={self.rectified_residuals}, "
            f"border_aware_convs={self.border_aware_convs}"
        )

    def propagate(
        self, model: nn.Module, channels: int, size: tuple[int, ...]
    ) -> dict[str, State | None]:
        """Walk the graph; set the statistics of every AnalyticNorm; return the state
        (mean, var, spatial size) of every node by name (None where no rule applies)."""
        param = next(model.parameters())
        mean = self.input_mean.to(param).expand(channels)
        var = self.input_var.to(param).expand(channels)
        if self.needs_input_moments:
            raise RuntimeError(
                "analytic normalization: this model was loaded from a checkpoint that does not "
                "hold the input moments; set them with stochnorm.analytic.attach (or load the "
                "run with stochnorm.load_run, which measures them on its data)"
            )
        env: list[State | None] = []
        for step in self.plan:
            if step.op == "placeholder":
                env.append((mean, var, size) if not env else None)
            else:
                env.append(self._rule(model, step, env))
        return {step.name: state for step, state in zip(self.plan, env, strict=True)}

    def execute(self, model: nn.Module, x: Tensor) -> Iterator[tuple[Step, Any]]:
        """Run `model` on `x` step by step along the plan, each module as it is (e.g. in eval
        mode), yielding every step with its output as soon as it is computed (a later
        in-place operation may change it): the quantities whose moments the rules estimate,
        measured."""
        values: list[Any] = []
        for step in self.plan:
            args, kwargs = _resolve(step.args, values), _resolve(step.kwargs, values)
            if step.op == "placeholder":
                value = x if not values else None
            elif step.op == "get_attr":
                value = model
                for part in step.target.split("."):
                    value = getattr(value, part)
            elif step.op == "call_module":
                value = model.get_submodule(step.target)(*args, **kwargs)
            elif step.op == "call_function":
                value = step.target(*args, **kwargs)
            else:  # call_method
                value = getattr(args[0], step.target)(*args[1:], **kwargs)
            values.append(value)
            yield step, value

    def rules_given(self, model: nn.Module, given: Sequence[State | None]) -> list[State | None]:
        """Every step's rule applied to `given` states of its inputs (in plan order, e.g. the
        true moments measured on data) instead of the propagated ones, so that each rule's
        own error shows. Normalization steps give None: their output moments hold by
        construction, and their statistics are left as they are."""
        found: list[State | None] = []
        for step in self.plan:
            module = model.get_submodule(step.target) if step.op == "call_module" else None
            if step.op == "placeholder" or isinstance(
                module, _Normalization | nn.modules.batchnorm._BatchNorm
            ):
                found.append(None)
            else:
                found.append(self._rule(model, step, list(given)))
        return found

    def _rule(self, model: nn.Module, node: Step, env: list) -> State | None:
        inputs = [env[a.index] if isinstance(a, Ref) else a for a in node.args]
        first = inputs[0] if inputs else None
        if self.rectified_residuals and first is not None:
            if node.name in self._relu_of_rectified:
                return first
            if node.name in self._residual_relus:
                skip, branch = (env[i] for i in self._residual_relus[node.name])
                if skip is not None and branch is not None:
                    found = moments.residual_relu(skip[:2], branch[:2])
                    return (*found, first[2])
        if node.name in self._max_pools and self.patch_cross is not None and first is not None:
            return self._max_pool_rule(model, node, env)
        if node.op == "call_module":
            module = model.get_submodule(node.target)
            if (
                self.input_patches is not None
                and node.reads_input
                and isinstance(module, FIRST_LAYERS)
                and module.weight[0].numel() == self.input_patches[0].numel()
            ):
                return self._first_layer_rule(module, first)
            return self._module_rule(module, first, node)
        if node.op == "call_function":
            target = node.target
            if target in ADD:
                states = [s for s in inputs if s is not None and isinstance(s, tuple)]
                if len(states) != 2:
                    return None
                (m1, v1, size), (m2, v2, _) = states
                return (*moments.add((m1, v1), (m2, v2)), size)
            if target in (torch.flatten,) and first is not None:
                return first[0], first[1], ()
            if target in (F.relu, torch.relu) and first is not None:
                return (*moments.relu(first[0], first[1]), first[2])
            if target is F.leaky_relu and first is not None:
                slope = node.kwargs.get("negative_slope", inputs[1] if len(inputs) > 1 else 0.01)
                return (*moments.leaky_relu(first[0], first[1], slope), first[2])
            if target in ELEMENTWISE_FUNCTIONS and first is not None:
                rest = [a for a in node.args[1:] if not isinstance(a, Ref)]
                return (
                    *moments.elementwise(
                        first[0], first[1], lambda x: target(x, *rest, **node.kwargs)
                    ),
                    first[2],
                )
            if target in MULTIPLY:
                return _product(inputs)
            if target in CONCATENATE:
                return _concatenate(node, env)
            if target is F.interpolate and first is not None:
                return first[0], first[1], _resized(first[2], node.kwargs, node.args[1:])
            return None
        if node.op == "call_method" and first is not None:
            if node.target in ("flatten", "view", "reshape"):
                return first[0], first[1], ()
            if node.target in ("contiguous", "clone"):
                return first
            if node.target == "relu":
                return (*moments.relu(first[0], first[1]), first[2])
            if node.target in ELEMENTWISE_METHODS:
                method = getattr(torch, node.target)
                return (*moments.elementwise(first[0], first[1], method), first[2])
            if node.target == "mul":
                return _product(inputs)
            if node.target == "mean":
                return self._spatial_mean(node, first)
        return None

    def _spatial_mean(self, node: Step, state: State) -> State | None:
        """`x.mean(dims, keepdim)` over all spatial dims (global average pooling, as in
        squeeze-excite): the pooling rule over the whole map."""
        dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        keepdim = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
        mean, var, size = state
        if dims is None:  # the mean of everything, channels included: no channel moments
            return None
        rank = len(size) + 2
        found = {d % rank for d in (dims if isinstance(dims, list | tuple) else [dims])}
        if found != set(range(2, rank)):
            return None
        window = max(1, math.prod(size))
        pooled = moments.average_pool(mean, var, window, self.pool_correlation)
        return (*pooled, (1,) * len(size) if keepdim else ())

    def _first_layer_rule(self, module: nn.Module, state: State) -> State:
        patch_mean, patch_cov = (t.to(module.weight) for t in self.input_patches)
        mean, var = moments.linear_from_patches(patch_mean, patch_cov, module.weight, module.bias)
        if isinstance(module, nn.Linear):
            return mean, var, ()
        out = window_out(
            state[2], module.kernel_size, module.stride, module.padding, module.dilation
        )
        return mean, var, out

    def _max_pool_rule(self, model: nn.Module, node: Step, env: list) -> State | None:
        """A max-pool after the first conv (`max_pool_sources`): the max of the window's
        pre-activations, jointly Gaussian with the mean of their correlations between
        positions, which come from the conv's weights and the input patches'
        cross-covariances (`moments.exchangeable_max`), then the ReLU's rule (it commutes
        with the max); border windows, which hold fewer values, are mixed in by their share
        of positions. The normalizations in between are per channel and keep the
        correlation (their noise, shared by a channel's positions, is taken as independent
        between positions)."""
        source = self._max_pools[node.name]
        before, given = env[source.before_relu], env[first_ref(node)]
        if before is None:
            return None
        conv = model.get_submodule(self.plan[source.conv].target)
        pool = model.get_submodule(node.target)
        w = conv.weight.flatten(1)
        cov, cross = self.patch_cov.to(w), self.patch_cross.to(w)
        var_out = ((w @ cov) * w).sum(1).clamp_min(torch.finfo(w.dtype).tiny)
        along = ((w @ cross) * w).sum(-1) / var_out  # [offsets, C]
        types, shares = window_types(given[2], pool)
        peak_mean, peak_var = moments.exchangeable_max(
            (
                self._constant(
                    ("pairs", node.name, given[2]), w, lambda: self._pair_shares(pool, types)
                )
                @ along
            ).T,
            [len(t) for t in types],
        )  # [C, types]
        mean = before[0][:, None] + before[1].sqrt()[:, None] * peak_mean
        var = before[1][:, None] * peak_var
        if source.relu:
            mean, var = moments.relu(mean, var)
        share = self._constant(("shares", node.name, given[2]), mean, lambda: shares)
        pooled = (mean * share).sum(-1)
        spread = ((var + (mean - pooled[:, None]).square()) * share).sum(-1)
        return pooled, spread, window_out(given[2], pool.kernel_size, pool.stride,
                                           pool.padding, pool.dilation, pool.ceil_mode)  # fmt: skip

    def _constant(self, key: tuple, like: Tensor, make) -> Tensor:
        """The tensor of `make()` (numbers that depend only on the model's geometry) in
        `like`'s dtype and device, made once per key: no operations in later steps."""
        key = (*key, like.dtype, like.device)
        if key not in self._constants:
            self._constants[key] = torch.as_tensor(make()).to(like)
        return self._constants[key]

    def _pair_shares(self, pool: nn.Module, types: list[list[int]]) -> Tensor:
        """[types, offsets]: for each window type the share of its ordered pairs of values
        that lie at each offset (the weights of their mean correlation)."""
        window, where = window_offsets(pool), {o: i for i, o in enumerate(self._offsets)}
        shares = [[0.0] * len(self._offsets) for _ in types]
        for row, members in zip(shares, types, strict=True):
            for a in members:
                for b in members:
                    if a != b:
                        offset = (window[b][0] - window[a][0], window[b][1] - window[a][1])
                        row[where[canonical_offset(*offset)]] += 1 / (
                            len(members) ** 2 - len(members)
                        )
        return torch.tensor(shares)

    def _module_rule(self, module: nn.Module, state: State | None, node: Step) -> State | None:
        if state is None:
            if isinstance(module, AnalyticNorm):
                raise RuntimeError(
                    f"analytic normalization at {node.target}: no moment rule for an operation "
                    f"in front of it; supported are {SUPPORTED}"
                )
            return None
        mean, var, size = state
        if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            padding = conv_padding(module)
            out = window_out(size, module.kernel_size, module.stride, padding, module.dilation)
            if self.border_aware_convs and any(padding) and module.padding_mode == "zeros":
                key = ("taps", node.name, size)
                inside, pairs = (self._constant((*key, i), mean, lambda i=i: taps_inside(size, module)[i])
                                 for i in range(2))  # fmt: skip
                found = moments.conv_with_padding(mean, var, module.weight, inside, pairs,
                                                  module.bias)  # fmt: skip
                return (*found, out)
            return (*moments.linear(mean, var, module.weight, module.bias), out)
        if isinstance(module, nn.ConvTranspose1d | nn.ConvTranspose2d | nn.ConvTranspose3d):
            return _transposed_conv(module, mean, var, size)
        if isinstance(module, nn.Linear):
            return (*moments.linear(mean, var, module.weight, module.bias), ())
        if isinstance(module, ELEMENTWISE_MODULES):
            return (*moments.elementwise(mean, var, module), size)
        if isinstance(module, nn.Upsample):
            kwargs = {"size": module.size, "scale_factor": module.scale_factor}
            return mean, var, _resized(size, kwargs, ())
        if isinstance(module, AnalyticNorm):
            module.set_statistics(mean, var)
        if isinstance(module, _Normalization | nn.modules.batchnorm._BatchNorm):
            # the normalized output has mean 0 and variance 1, then the affine s, b and any
            # noise with its mean parameters (what evaluation sees; SPEC section 2)
            w = module.weight if module.weight is not None else torch.ones_like(mean)
            b = module.bias if module.bias is not None else torch.zeros_like(mean)
            noise = getattr(module, "noise", None)
            if noise is not None:
                return (*noise.output_moments(w, b), size)
            return b, w * w, size
        if isinstance(module, nn.LeakyReLU):
            return (*moments.leaky_relu(mean, var, module.negative_slope), size)
        if isinstance(module, nn.ReLU):
            return (*moments.relu(mean, var), size)
        if isinstance(module, nn.AvgPool1d | nn.AvgPool2d | nn.AvgPool3d):
            kernel = pair(module.kernel_size, len(size))
            out = window_out(size, kernel, module.stride, module.padding, 1, module.ceil_mode)
            window = math.prod(kernel)
            return (*moments.average_pool(mean, var, window, self.pool_correlation), out)
        if isinstance(module, nn.AdaptiveAvgPool1d | nn.AdaptiveAvgPool2d | nn.AdaptiveAvgPool3d):
            target = pair(module.output_size, len(size))
            out = tuple(s if t is None else t for s, t in zip(size, target, strict=True))
            window = max(1, math.prod(size) // max(1, math.prod(out)))
            return (*moments.average_pool(mean, var, window, self.pool_correlation), out)
        if isinstance(module, nn.MaxPool1d | nn.MaxPool2d | nn.MaxPool3d):
            # under full correlation the maximum of equal values is that value
            out = window_out(
                size, module.kernel_size, module.stride, module.padding, module.dilation,
                module.ceil_mode,
            )  # fmt: skip
            return mean, var, out
        if isinstance(module, nn.Flatten):
            return mean, var, ()
        if isinstance(module, nn.Identity | nn.Dropout | nn.Dropout2d):
            return state
        return None


def _resolve(args: Any, values: list) -> Any:
    """`args` of a step with every `Ref` replaced by the value it refers to."""
    if isinstance(args, Ref):
        return values[args.index]
    if isinstance(args, tuple | list):
        return type(args)(_resolve(a, values) for a in args)
    if isinstance(args, dict):
        return {k: _resolve(v, values) for k, v in args.items()}
    return args


def _product(inputs: Sequence[Any]) -> State | None:
    """A product of two branches (independent, `moments.multiply`) or of a branch and a
    number (a scale)."""
    states = [s for s in inputs if isinstance(s, tuple)]
    numbers = [s for s in inputs if isinstance(s, int | float)]
    if len(states) == 2:
        (m1, v1, size1), (m2, v2, size2) = states
        size = size1 if len(size1) >= len(size2) else size2  # a gate [C, 1, 1] broadcasts
        if m1.numel() != m2.numel():
            return None
        return (*moments.multiply((m1, v1), (m2, v2)), size)
    if len(states) == 1 and len(numbers) == 1:
        m, v, size = states[0]
        return m * numbers[0], v * numbers[0] ** 2, size
    return None


def _concatenate(node: Step, env: list) -> State | None:
    """Branches concatenated along the channels (dim 1): their channel moments side by
    side (the spatial sizes must agree)."""
    parts = node.args[0] if node.args else node.kwargs.get("tensors", ())
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
    states = [env[p.index] if isinstance(p, Ref) else None for p in parts]
    if dim != 1 or any(s is None for s in states) or len({s[2] for s in states}) != 1:
        return None
    return torch.cat([s[0] for s in states]), torch.cat([s[1] for s in states]), states[0][2]


def _resized(size: tuple[int, ...], kwargs: dict, args: Sequence[Any]) -> tuple[int, ...]:
    """The spatial size after upsampling by `size` or `scale_factor` (torch's rule: floor of
    size * factor). The moments stay: nearest-neighbour copies values, and linear
    interpolation of fully correlated neighbours (the pooling assumption) keeps them."""
    target = kwargs.get("size", args[0] if args else None)
    factor = kwargs.get("scale_factor", args[1] if len(args) > 1 else None)
    if target is not None:
        return pair(target, len(size))
    return tuple(int(s * f) for s, f in zip(size, pair(factor, len(size)), strict=True))


def _transposed_conv(module: nn.Module, mean: Tensor, var: Tensor, size) -> State:
    """A transposed conv's output moments averaged over its output positions: each output
    receives on average prod(kernel) / prod(stride) taps of every input channel, so the
    rule is `moments.linear` with the transposed weight's sums scaled by that share."""
    weight = module.weight.transpose(0, 1)  # [C_in, C_out/groups, k...] -> conv layout
    if module.groups != 1:
        raise RuntimeError("analytic normalization: grouped transposed convs have no rule yet")
    share = 1.0 / math.prod(pair(module.stride, weight.ndim - 2))
    mean_out, var_out = moments.linear(mean, var, weight)
    mean_out, var_out = share * mean_out, share * var_out
    if module.bias is not None:
        mean_out = mean_out + module.bias
    out = tuple(
        (n - 1) * s - 2 * p + d * (k - 1) + op + 1
        for n, s, p, d, k, op in zip(
            size, pair(module.stride, len(size)), pair(module.padding, len(size)),
            pair(module.dilation, len(size)), pair(module.kernel_size, len(size)),
            pair(module.output_padding, len(size)), strict=True,
        )
    )  # fmt: skip
    return mean_out, var_out, out


def patch_moments(
    x: Tensor, conv: nn.Conv2d, offsets: Sequence[tuple[int, int]] = ()
) -> tuple[Tensor, ...]:
    """Mean [D] and covariance [D, D] (D = C * kh * kw) of the patches that `conv` sees in
    the images `x` [N, C, H, W], zero padding included, pooled over images and positions;
    with `offsets` (dy, dx) in the conv's output grid also the cross-covariances [n, D, D]
    of each patch with the patch offset from it, over the pairs inside the grid, about
    the same mean."""
    patches = F.unfold(
        x.double(), conv.kernel_size, dilation=conv.dilation, padding=conv.padding,
        stride=conv.stride,
    )  # [N, D, L]  # fmt: skip
    flat = patches.transpose(1, 2).reshape(-1, patches.shape[1])
    mean = flat.mean(0)
    centred = flat - mean
    cov = centred.T @ centred / len(flat)
    if not offsets:
        return mean.float(), cov.float()
    rows, columns = window_out(x.shape[2:], conv.kernel_size, conv.stride, conv.padding,
                                conv.dilation)  # fmt: skip
    grid = (patches - mean[:, None]).view(len(x), -1, rows, columns).transpose(0, 1)
    cross = []
    for dy, dx in offsets:  # dy >= 0
        left = slice(max(0, -dx), columns - max(0, dx))
        right = slice(max(0, dx), columns + min(0, dx))
        a = grid[:, :, : rows - dy, left].reshape(len(grid), -1)
        b = grid[:, :, dy:, right].reshape(len(grid), -1)
        cross.append(a @ b.T / max(1, a.shape[1]))
    return mean.float(), cov.float(), torch.stack(cross).float()


def first_layer(model: nn.Module) -> tuple[str, nn.Module] | None:
    """(name, module) of the conv/linear layer that reads the model's input directly (the
    layer whose patch moments `patch_moments` measures), or None when the first operation on
    the input is something else."""
    for step in trace_plan(Tracer().trace(model)):
        if step.op == "call_module" and step.reads_input:
            module = model.get_submodule(step.target)
            if isinstance(module, FIRST_LAYERS):
                return step.target, module
    return None


def input_moments(
    model: nn.Module, x: Tensor, *, exact_first_layer: bool = True
) -> tuple[Tensor, Tensor, tuple[Tensor, ...] | None]:
    """The moments analytic norm starts from, measured on sample inputs `x` [N, C, ...]: per
    channel mean and variance, and with `exact_first_layer` the mean and covariance of the
    patches that the model's first layer (a Conv2d reading the input) sees (else None),
    and the cross-covariances the max-pools right after it need (`max_pool_offsets`)."""
    var, mean = torch.var_mean(x, (0, *range(2, x.ndim)), correction=0)
    if not exact_first_layer:
        return mean, var, None
    found = first_layer(model)
    if found is None or not isinstance(found[1], nn.Conv2d):
        what = "no conv/linear" if found is None else type(found[1]).__name__
        raise ValueError(
            f"an exact first layer needs a Conv2d reading the input; this model starts with {what}"
        )
    return mean, var, patch_moments(x, found[1], max_pool_offsets(model))


# The layers whose output moments the input patches make exact when they read the input.
FIRST_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def attach(
    model: nn.Module,
    input_mean: Tensor | float = 0.0,
    input_var: Tensor | float = 1.0,
    *,
    channels: int | None = None,
    size: tuple[int, ...] | None = None,
    pool_correlation: str = "full",
    input_patches: tuple[Tensor, ...] | None = None,
    rectified_residuals: bool = False,
    border_aware_convs: bool = False,
) -> MomentPropagation:
    """Make the AnalyticNorm layers of `model` work: register a `MomentPropagation` (with
    the options of that class) as the submodule `model.moment_propagation` and as a forward
    pre-hook (replacing one attached before) and, when `channels` and `size` of the input
    are given, run it once so the evaluation statistics are set from the start."""
    detach(model)
    propagation = MomentPropagation(model, input_mean, input_var, pool_correlation,
                                    input_patches, rectified_residuals, border_aware_convs)  # fmt: skip
    param = next(model.parameters(), None)
    if param is not None:
        propagation.to(param.device)
    model.add_module(PROPAGATION, propagation)
    handle = model.register_forward_pre_hook(propagation.before_forward)
    propagation._hook_id = handle.id
    if channels is not None and size is not None:
        with torch.no_grad():
            propagation.propagate(model, channels, size)
    return propagation


PROPAGATION = "moment_propagation"  # the submodule's name in the model it serves


def propagation_of(model: nn.Module) -> MomentPropagation | None:
    """The MomentPropagation attached to `model`, if any."""
    found = getattr(model, PROPAGATION, None)
    return found if isinstance(found, MomentPropagation) else None


def detach(model: nn.Module) -> None:
    """Remove the moment propagation from `model` and from any model nested inside it (as
    `fold` does, and `attach` before it attaches one to the whole model)."""
    for module in list(model.modules()):
        propagation = propagation_of(module)
        if propagation is not None:
            module._forward_pre_hooks.pop(getattr(propagation, "_hook_id", None), None)
            delattr(module, PROPAGATION)
