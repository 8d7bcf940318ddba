"""A model's traced graph as a plan of plain steps, for the moment propagation
(`stochnorm.analytic`): tracing with normalizations as leaves, the steps, the structure the
refined rules look for (rectified values, max-pools after the first layer) and the geometry
of windows (conv taps inside the map, pooling windows at the border)."""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import fx, nn
from torch.nn import functional as F

from .norms import _Normalization

ADD = (operator.add, operator.iadd, torch.add)
# steps whose output is their input's values, or a selection of them (max pooling): a
# rectified (nonnegative) input stays rectified
SELECTING_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.Identity, nn.Dropout, nn.Dropout2d,
)  # fmt: skip


class Tracer(fx.Tracer):
    """Traces a model with every normalization as one node: stochnorm's, torch's batch
    norms, and any module that declares itself a batch norm by subclassing it (e.g. timm's
    BatchNormAct2d, a batch norm fused with its activation)."""

    def is_leaf_module(self, module: nn.Module, qualname: str) -> bool:
        if isinstance(module, _Normalization | nn.modules.batchnorm._BatchNorm):
            return True
        return super().is_leaf_module(module, qualname)


def symbolic_tracing() -> bool:
    """Whether torch.fx is tracing (newer torch names the check without a warning)."""
    check = getattr(fx._symbolic_trace, "is_fx_symbolic_tracing", fx._symbolic_trace.is_fx_tracing)
    return check()


def pair(value: Any, n: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, Sequence) else (value,) * n


def window_out(size, kernel, stride, padding, dilation=1, ceil_mode=False) -> tuple[int, ...]:
    n = len(size)
    kernel, stride = pair(kernel, n), pair(stride if stride else kernel, n)
    padding, dilation = pair(padding, n), pair(dilation, n)
    out = []
    for s, k, st, p, d in zip(size, kernel, stride, padding, dilation, strict=True):
        span = s + 2 * p - d * (k - 1) - 1
        out.append((-(-span // st) if ceil_mode else span // st) + 1)
    return tuple(out)


def conv_padding(module: nn.Module) -> tuple[int, ...]:
    """A conv's zero padding per spatial dim (also for padding="same" / "valid")."""
    n = module.weight.ndim - 2
    if module.padding == "valid":
        return (0,) * n
    if module.padding == "same":
        return tuple(d * (k - 1) // 2 for k, d in zip(pair(module.kernel_size, n),
                                                      pair(module.dilation, n), strict=True))  # fmt: skip
    return pair(module.padding, n)


def taps_inside(size, module: nn.Module) -> tuple[list[float], list[list[float]]]:
    """For a conv with zero padding on a map of `size`: the fraction of output positions at
    which each kernel tap reads inside the map [K], and at which two taps both do [K, K]
    (taps in the order of `weight.flatten(2)`)."""
    n = len(size)
    return _taps_inside_of(tuple(size), pair(module.kernel_size, n), pair(module.stride, n),
                           conv_padding(module), pair(module.dilation, n))  # fmt: skip


def _taps_read(size: int, kernel: int, stride: int, padding: int, dilation: int, out: int):
    """Along one dim of a window op (conv, pooling) on `size` values with `out` outputs: for
    each output position, whether each of its `kernel` taps reads inside (not padding)."""
    return [[0 <= i * stride - padding + tap * dilation < size for tap in range(kernel)]
            for i in range(out)]  # fmt: skip


@functools.lru_cache(maxsize=1024)
def _taps_inside_of(size, kernel, stride, padding, dilation):
    # the output positions form a grid and a tap reads inside when it does in every dim: the
    # fractions are products over the dims (Kronecker products of the per-dim fractions)
    inside, pairs = [1.0], [[1.0]]
    out = window_out(size, kernel, stride, padding, dilation)
    for m, k, st, p, d, o in zip(size, kernel, stride, padding, dilation, out, strict=True):
        reads = _taps_read(m, k, st, p, d, o)
        dim_inside = [sum(r[t] for r in reads) / o for t in range(k)]
        dim_pairs = [[sum(r[t] and r[u] for r in reads) / o for u in range(k)] for t in range(k)]
        inside = [a * b for a in inside for b in dim_inside]
        pairs = [[a * b for a in row for b in dim_row] for row in pairs for dim_row in dim_pairs]
    return inside, pairs


class Ref(NamedTuple):
    """An argument of a step that is the result of the step at `index` of the plan."""

    index: int


@dataclass(frozen=True)
class Step:
    """One node of the traced graph as plain data (torch.fx's graph is not something
    torch.compile traces through): what it calls, with earlier results as `Ref`s."""

    name: str
    op: str  # "placeholder", "call_module", "call_function", "call_method", "get_attr"
    target: Any
    args: tuple
    kwargs: dict
    reads_input: bool  # its first argument is the model's input itself


def is_relu(model: nn.Module, step: Step) -> bool:
    if step.op == "call_module":
        return isinstance(model.get_submodule(step.target), nn.ReLU)
    if step.op == "call_function":
        return step.target in (F.relu, torch.relu)
    return step.op == "call_method" and step.target in ("relu", "relu_")


def selects(model: nn.Module, step: Step) -> bool:
    """Whether `step` outputs (a selection of) its input's values unchanged."""
    if step.op == "call_module":
        return isinstance(model.get_submodule(step.target), SELECTING_MODULES)
    return step.op == "call_method" and step.target in ("contiguous", "clone")


def first_ref(step: Step) -> int | None:
    return step.args[0].index if step.args and isinstance(step.args[0], Ref) else None


def rectified_steps(model: nn.Module, plan: Sequence[Step]) -> tuple[frozenset, dict]:
    """Where the plan's values are ReLU outputs, found from the graph alone: the names of
    the ReLUs whose input is already rectified (relu(relu(a)) = relu(a)) and, for each ReLU
    after a residual addition of a rectified value and another branch, the plan indices of
    the two terms, (rectified, other) (`moments.residual_relu`)."""
    rectified: set[int] = set()
    again: set[str] = set()
    residual: dict[str, tuple[int, int]] = {}
    for i, step in enumerate(plan):
        first = first_ref(step)
        if first is None:
            continue
        if is_relu(model, step):
            producer = plan[first]
            terms = [a.index for a in producer.args if isinstance(a, Ref)]
            if first in rectified:
                again.add(step.name)
            elif producer.op == "call_function" and producer.target in ADD and len(terms) == 2:
                skip = [t for t in terms if t in rectified]
                if len(skip) == 1:
                    residual[step.name] = (skip[0], next(t for t in terms if t != skip[0]))
            rectified.add(i)
        elif first in rectified and selects(model, step):
            rectified.add(i)
    return frozenset(again), residual


class PoolSource(NamedTuple):
    """Where a max-pool's input comes from: the plan indices of the first-layer conv, and
    of the value before the ReLU (the conv's output through per-channel normalizations),
    and whether a ReLU lies in between."""

    conv: int
    before_relu: int
    relu: bool


def max_pool_sources(model: nn.Module, plan: Sequence[Step]) -> dict[str, PoolSource]:
    """The 2d max-pools whose input is the model's first conv (reading the input) through
    per-channel normalizations, at most one ReLU and identities, by step name: the pools
    whose input's spatial correlation the first layer's patch cross-covariances give."""
    found = {}
    for step in plan:
        if step.op != "call_module" or not isinstance(model.get_submodule(step.target),
                                                      nn.MaxPool2d):  # fmt: skip
            continue
        index = before = first_ref(step)
        relu = normalized = False
        while index is not None:
            source = plan[index]
            module = model.get_submodule(source.target) if source.op == "call_module" else None
            if isinstance(module, nn.Conv2d) and source.reads_input:
                found[step.name] = PoolSource(index, before, relu)
                break
            if is_relu(model, source) and not (relu or normalized):
                relu, before = True, first_ref(source)
            elif isinstance(module, _Normalization | nn.modules.batchnorm._BatchNorm):
                normalized = True  # per channel: keeps the correlation between positions
            elif not isinstance(module, nn.Identity | nn.Dropout | nn.Dropout2d):
                break
            index = first_ref(source)
    return found


def window_offsets(pool: nn.MaxPool2d) -> list[tuple[int, int]]:
    """The positions of a max-pool's window elements, row by row, in its input's grid."""
    (kh, kw), (dh, dw) = pair(pool.kernel_size, 2), pair(pool.dilation, 2)
    return [(i * dh, j * dw) for i in range(kh) for j in range(kw)]


def canonical_offset(dy: int, dx: int) -> tuple[int, int]:
    """One of the offsets +-(dy, dx), whose cross-covariances are each other's transpose."""
    return (dy, dx) if (dy, dx) > (0, 0) else (-dy, -dx)


def max_pool_offsets(model: nn.Module, plan: Sequence[Step] | None = None) -> list[tuple[int, int]]:
    """The nonzero offsets (in the first conv's output grid, one of each +- pair, sorted)
    between the window elements of the max-pools that `max_pool_sources` finds: the
    offsets at which `patch_moments` measures the patches' cross-covariance (`plan`: the
    model's, if already traced)."""
    plan = trace_plan(Tracer().trace(model)) if plan is None else plan
    offsets = set()
    for name in max_pool_sources(model, plan):
        pool = model.get_submodule(next(s.target for s in plan if s.name == name))
        window = window_offsets(pool)
        offsets |= {
            canonical_offset(b[0] - a[0], b[1] - a[1]) for a in window for b in window if a != b
        }
    return sorted(offsets)


def window_types(size, pool: nn.MaxPool2d) -> tuple[list[list[int]], list[float]]:
    """For a 2d max-pool on a map of `size`: the distinct sets of window elements (indices
    into `window_offsets`) that fall inside the map, with the fraction of output positions
    whose window has each (padding is never the max)."""
    per_dim = []
    kernel, stride = pair(pool.kernel_size, 2), pair(pool.stride or pool.kernel_size, 2)
    padding, dilation = pair(pool.padding, 2), pair(pool.dilation, 2)
    out = window_out(size, kernel, stride, padding, dilation, pool.ceil_mode)
    for n, k, st, p, d, o in zip(size, kernel, stride, padding, dilation, out, strict=True):
        inside: dict[tuple[int, ...], int] = {}
        for reads in _taps_read(n, k, st, p, d, o):
            key = tuple(i for i in range(k) if reads[i])
            inside[key] = inside.get(key, 0) + 1
        per_dim.append(inside)
    (rows, columns), width = per_dim, kernel[1]
    types = [[i * width + j for i in r for j in c] for r in rows for c in columns]
    shares = [a * b / (out[0] * out[1]) for a in rows.values() for b in columns.values()]
    return types, shares


def trace_plan(graph: fx.Graph) -> tuple[Step, ...]:
    """The nodes of `graph` up to its output, in order, as `Step`s."""
    index: dict[fx.Node, int] = {}
    steps = []
    for node in graph.nodes:
        if node.op == "output":
            break
        index[node] = len(steps)
        source = node.args[0] if node.args else None
        steps.append(Step(
            node.name, node.op, node.target,
            fx.node.map_arg(node.args, lambda n: Ref(index[n])),
            fx.node.map_arg(node.kwargs, lambda n: Ref(index[n])),
            isinstance(source, fx.Node) and source.op == "placeholder",
        ))  # fmt: skip
    return tuple(steps)
