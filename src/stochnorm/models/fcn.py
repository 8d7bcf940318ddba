"""The fully convolutional segmentation network of the main paper, appendix A.2: eleven 9x9
convolutions in five stages, each stage ending in a 3x3 average pooling that keeps the
resolution, then a 1x1 convolution to the classes and a log-softmax per pixel."""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from .. import analytic
from ..errors import ConfigError
from ..norms import DEFAULT_GROUPS, Norm, make_norm, needs_bias

# The output channels of the 9x9 convs, stage by stage (a pooling after each stage).
STAGES = ((64, 64), (32, 32), (16, 16), (8, 8, 8), (4, 4))
KERNEL = 9
POOL = 3


class FCN(nn.Sequential):
    """Appendix A.2's network: 9x9 convs with "same" zero padding, each followed by a
    normalization and a leaky ReLU of slope 0.01 (the activation of All-CNN here: the
    paper's listing names "Softmax" as the activation, which we read as a slip), a 3x3
    average pooling of stride 1 after each stage (padding 1, the border averaged over the
    pixels inside), and a normalized 1x1 conv to `num_classes` with a log-softmax over the
    classes of every pixel. About 670k parameters at width 1 (the paper: "about 600k").

    Input [B, in_channels, H, W]; output log-probabilities [B, num_classes, H, W].
    `width` multiplies every channel count (at least one channel), `groups` is group norm's G.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        *,
        width: float = 1.0,
        norm: str | Norm = Norm.BATCH,
        negative_slope: float = 0.01,
        groups: int = DEFAULT_GROUPS,
    ) -> None:
        if not width > 0:
            raise ConfigError(f"width must be positive, got {width}")
        norm = Norm.parse(norm)
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        channels, index = in_channels, 0

        def block(out: int, kernel: int, act: bool) -> nn.Sequential:
            conv = nn.Conv2d(channels, out, kernel, padding=kernel // 2, bias=needs_bias(norm))
            layers = [("conv", conv), ("norm", make_norm(norm, out, conv, groups=groups))]
            if act:
                layers.append(("act", nn.LeakyReLU(negative_slope)))
            return nn.Sequential(OrderedDict(layers))

        for stage, outs in enumerate(STAGES, start=1):
            for out in outs:
                index += 1
                out = max(1, round(out * width))
                blocks[f"layer{index}"] = block(out, KERNEL, act=True)
                channels = out
            blocks[f"pool{stage}"] = nn.AvgPool2d(
                POOL, stride=1, padding=POOL // 2, count_include_pad=False
            )
        blocks[f"layer{index + 1}"] = block(num_classes, 1, act=False)
        blocks["log_softmax"] = nn.LogSoftmax(dim=1)
        super().__init__(blocks)
        self.norm = norm
        self.width = width
        if norm is Norm.ANALYTIC:
            analytic.attach(self)

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(x, Tensor) and x.ndim != 4:  # (skipped while torch.fx traces)
            raise ValueError(f"FCN expects images [B, C, H, W], got shape {tuple(x.shape)}")
        return super().forward(x)
