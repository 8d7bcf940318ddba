"""The fully convolutional segmentation network of the main paper, appendix A.2: eleven 9x9
convolutions in five stages, each stage ending in a 3x3 average pooling that keeps the
resolution, then a 1x1 convolution to the classes and a log-softmax per pixel."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from ..errors import ConfigError
from ..norms import DEFAULT_GROUPS, Norm
from .blocks import NormalizedSequential, conv_block

# The output channels of the 9x9 convs, stage by stage (a pooling after each stage).
STAGES = ((64, 64), (32, 32), (16, 16), (8, 8, 8), (4, 4))
KERNEL = 9
POOL = 3


class FCN(NormalizedSequential):
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
        for stage, outs in enumerate(STAGES, start=1):
            for out in outs:
                index += 1
                out = max(1, round(out * width))
                blocks[f"layer{index}"] = conv_block(
                    channels, out, KERNEL, norm, padding=KERNEL // 2,
                    negative_slope=negative_slope, groups=groups,
                )  # fmt: skip
                channels = out
            blocks[f"pool{stage}"] = nn.AvgPool2d(
                POOL, stride=1, padding=POOL // 2, count_include_pad=False
            )
        blocks[f"layer{index + 1}"] = conv_block(
            channels, num_classes, 1, norm, negative_slope=None, groups=groups
        )
        blocks["log_softmax"] = nn.LogSoftmax(dim=1)
        super().__init__(blocks, norm, width)
