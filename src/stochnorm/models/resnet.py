"""The CIFAR ResNet of He et al. (2016, section 4.2): a 3x3 conv with 16 channels, three
stages of basic blocks with 16, 32 and 64 channels (the second and third start with stride
2), global average pooling and a linear classifier; ResNet-20 has three blocks per stage."""

from __future__ import annotations

from torch import Tensor, nn

from .. import analytic
from ..errors import ConfigError
from ..norms import DEFAULT_GROUPS, Norm, make_norm, needs_bias


class BasicBlock(nn.Module):
    """Two 3x3 convs, each followed by a normalization, a ReLU after the first and after the
    residual sum. Where the shape changes, the shortcut is a 1x1 conv with stride and a
    normalization (He et al.'s option B; their CIFAR nets pad with zeros instead, option A,
    for which the moment rules would need a strided slice and a channel pad)."""

    def __init__(self, inplanes: int, planes: int, stride: int, norm: Norm, groups: int) -> None:
        super().__init__()
        bias = needs_bias(norm)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=bias)
        self.norm1 = make_norm(norm, planes, self.conv1, groups=groups)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=bias)
        self.norm2 = make_norm(norm, planes, self.conv2, groups=groups)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or inplanes != planes:
            conv = nn.Conv2d(inplanes, planes, 1, stride, bias=bias)
            self.shortcut = nn.Sequential(conv, make_norm(norm, planes, conv, groups=groups))
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.norm2(self.conv2(self.relu1(self.norm1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet with `blocks` basic blocks per stage (depth 6 * blocks + 2), a
    normalization after every conv, log-softmax output. `width` multiplies the channel
    counts 16, 32, 64. Input [B, in_channels, H, W] (any size: the pooling is global);
    output log-probabilities [B, num_classes]."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        *,
        blocks: int = 3,
        width: float = 1.0,
        norm: str | Norm = Norm.BATCH,
        groups: int = DEFAULT_GROUPS,
    ) -> None:
        super().__init__()
        if not width > 0:
            raise ConfigError(f"width must be positive, got {width}")
        if blocks < 1:
            raise ConfigError(f"blocks must be >= 1, got {blocks}")
        norm = Norm.parse(norm)
        planes = [max(1, round(c * width)) for c in (16, 32, 64)]
        self.conv = nn.Conv2d(in_channels, planes[0], 3, 1, 1, bias=needs_bias(norm))
        self.norm = make_norm(norm, planes[0], self.conv, groups=groups)
        self.relu = nn.ReLU()
        stages, inplanes = [], planes[0]
        for i, p in enumerate(planes):
            stage = [BasicBlock(inplanes if j == 0 else p, p, 2 if i and not j else 1, norm, groups)
                     for j in range(blocks)]  # fmt: skip
            stages.append(nn.Sequential(*stage))
            inplanes = p
        self.stage1, self.stage2, self.stage3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(planes[-1], num_classes)
        self.log_softmax = nn.LogSoftmax(dim=1)
        if norm is Norm.ANALYTIC:
            analytic.attach(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.norm(self.conv(x)))
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.log_softmax(self.fc(self.flatten(self.pool(x))))


def resnet20(in_channels: int = 3, num_classes: int = 10, **options) -> ResNet:
    """ResNet-20 (three basic blocks per stage, about 0.27M parameters at width 1)."""
    return ResNet(in_channels, num_classes, blocks=3, **options)
