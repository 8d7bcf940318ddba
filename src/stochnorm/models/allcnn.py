"""All-CNN-C (Springenberg et al., 2015) as specified in the main paper, appendix A.1."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from ..errors import ConfigError
from ..norms import DEFAULT_GROUPS, Norm
from .blocks import NormalizedSequential, conv_block

# (output channels, kernel size, stride, padded) of the nine conv layers; the last one has as
# many outputs as there are classes. The seventh conv is never padded (Springenberg's "valid").
LAYERS = (
    (96, 3, 1, True), (96, 3, 1, True), (96, 3, 2, True),
    (192, 3, 1, True), (192, 3, 1, True), (192, 3, 2, True),
    (192, 3, 1, False), (192, 1, 1, False), (None, 1, 1, False),
)  # fmt: skip


class AllCNN(NormalizedSequential):
    """All-CNN-C: nine conv layers, each followed by a normalization and (all but the last)
    by a leaky ReLU of slope 0.01, then global average pooling and log-softmax.

    Input [B, in_channels, H, W]; output log-probabilities [B, num_classes].

    `width` multiplies every channel count but the last; `groups` is group norm's G. `padding` is applied to the first
    six convs. The default 1 is Springenberg's model C (global pooling over 6x6 on 32x32
    CIFAR-10, 5x5 on 28x28 Fashion-MNIST). The main paper's Fig. 4 quotes a 2x2 spatial
    size for its "layer 6" on CIFAR-10, which only `padding=0` gives (then 28x28 inputs end
    at 1x1); on Fashion-MNIST the unpadded network is clearly weaker (results/README.md).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        *,
        width: float = 1.0,
        norm: str | Norm = Norm.BATCH,
        padding: int = 1,
        negative_slope: float = 0.01,
        groups: int = DEFAULT_GROUPS,
    ) -> None:
        if not width > 0:
            raise ConfigError(f"width must be positive, got {width}")
        if padding < 0:
            raise ConfigError(f"padding must be >= 0, got {padding}")
        norm = Norm.parse(norm)
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        channels = in_channels
        for i, (out, kernel, stride, padded) in enumerate(LAYERS, start=1):
            out = num_classes if out is None else max(1, round(out * width))
            blocks[f"layer{i}"] = conv_block(
                channels, out, kernel, norm, stride=stride, padding=padding if padded else 0,
                negative_slope=negative_slope if i < len(LAYERS) else None, groups=groups,
            )  # fmt: skip
            channels = out
        blocks["pool"] = nn.AdaptiveAvgPool2d(1)
        blocks["flatten"] = nn.Flatten()
        blocks["log_softmax"] = nn.LogSoftmax(dim=1)
        super().__init__(blocks, norm, width)
