"""What the registered image models share: a conv followed by its normalization (and an
activation), and a sequential network of such blocks that checks its input and attaches
analytic norm's moment propagation."""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from .. import analytic
from ..norms import DEFAULT_GROUPS, Norm, make_norm, needs_bias


def conv_block(
    channels: int,
    out: int,
    kernel: int,
    norm: Norm,
    *,
    stride: int = 1,
    padding: int = 0,
    negative_slope: float | None = 0.01,
    groups: int = DEFAULT_GROUPS,
) -> nn.Sequential:
    """conv -> `norm` bound to it -> leaky ReLU (none with `negative_slope` None)."""
    conv = nn.Conv2d(channels, out, kernel, stride, padding=padding, bias=needs_bias(norm))
    layers = [("conv", conv), ("norm", make_norm(norm, out, conv, groups=groups))]
    if negative_slope is not None:
        layers.append(("act", nn.LeakyReLU(negative_slope)))
    return nn.Sequential(OrderedDict(layers))


class NormalizedSequential(nn.Sequential):
    """A network of `blocks` normalized by `norm` (analytic norm's propagation attached) that
    takes images [B, C, H, W]."""

    def __init__(self, blocks: OrderedDict[str, nn.Module], norm: Norm, width: float) -> None:
        super().__init__(blocks)
        self.norm = norm
        self.width = width
        if norm is Norm.ANALYTIC:
            analytic.attach(self)

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(x, Tensor) and x.ndim != 4:  # (skipped while torch.fx traces)
            raise ValueError(
                f"{type(self).__name__} expects images [B, C, H, W], got shape {tuple(x.shape)}"
            )
        return super().forward(x)
