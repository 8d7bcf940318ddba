"""Unfamiliar inputs for a Fashion-MNIST model: real handwritten digits, the UCI optical
recognition set (1,797 images of 8x8 pixels, 16 grey levels) that scikit-learn ships in its
wheel, so nothing is downloaded.

Each digit is put into Fashion-MNIST's frame the way MNIST frames its digits: scaled
(bilinear) to 20x20 pixels, centred in a 28x28 image with a black border, grey levels
mapped to [0, 1] with the strokes bright on a dark background as Fashion-MNIST's objects
are; then standardized with the statistics of the model's training split.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..errors import ConfigError
from .splits import Split, Splits

SOURCE = "scikit-learn's copy of the UCI optical recognition of handwritten digits data"


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The 1,797 digits as [N, 1, 28, 28] float images in [0, 1], and their digits [N]."""
    try:
        from sklearn.datasets import load_digits  # optional: the benchmark extra
    except ImportError:
        raise ConfigError(
            "the handwritten digits come with scikit-learn: pip install 'stochnorm[benchmark]'"
        ) from None
    found = load_digits()
    images = torch.as_tensor(found.images, dtype=torch.float32)[:, None] / 16.0
    scaled = F.interpolate(images, size=(20, 20), mode="bilinear", align_corners=False)
    return F.pad(scaled, (4, 4, 4, 4)).clamp(0.0, 1.0), torch.as_tensor(found.target)


def unfamiliar_digits(data: Splits) -> Split:
    """The digits standardized as `data`'s images are (labels: the digit, 0-9, which no
    Fashion-MNIST model knows). Only for 28x28 grayscale datasets."""
    if data.train.x.shape[1:] != (1, 28, 28):
        raise ConfigError(
            f"handwritten digits are unfamiliar inputs for 28x28 grayscale data; "
            f"{data.name} has images of shape {tuple(data.train.x.shape[1:])}"
        )
    pixels, labels = digits()
    return Split((pixels - data.mean[0]) / data.std[0], labels.long())
