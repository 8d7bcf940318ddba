"""Train/validation/test splits, input standardization, augmentation and batching.

Everything is held in memory as tensors; batches are drawn with an explicit generator so
that a run is reproducible from its seed and resumable at any epoch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError
from .raw import RawDataset


@dataclass(frozen=True)
class Split:
    """Standardized images [N, C, H, W] (float32) and labels [N] (int64)."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return len(self.y)

    def head(self, n: int) -> Split:
        return Split(self.x[:n], self.y[:n])


@dataclass(frozen=True)
class Splits:
    """The three sets of one run plus the per-channel statistics used to standardize them."""

    name: str
    train: Split
    val: Split
    test: Split
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    source: str

    @property
    def in_channels(self) -> int:
        return self.train.x.shape[1]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def segmentation(self) -> bool:
        """Whether the labels are masks [N, H, W] (a class per pixel) rather than [N]."""
        return self.train.y.ndim == 3

    @property
    def fill(self) -> Tensor:
        """The standardized value of a black (raw 0) pixel, per channel: the padding value."""
        return -torch.tensor(self.mean) / torch.tensor(self.std)


def channel_statistics(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation (plus 1e-8) of `images` [N, C, H, W]."""
    return images.mean(axis=(0, 2, 3)), images.std(axis=(0, 2, 3)) + 1e-8


def standardized(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> Tensor:
    """`images` [N, C, H, W] (uint8 read as [0, 1]) standardized per channel: a float32
    tensor of (x - mean) / std."""
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    z = (images - mean[:, None, None]) / std[:, None, None]
    return torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32))


def split(
    raw: RawDataset, *, subset: float = 1.0, split_seed: int = 0, val_fraction: float = 0.1
) -> Splits:
    """Split the official training set into train/validation (fixed by `split_seed`), keep a
    fraction `subset` of the training part, and standardize every set per channel with the
    statistics of the kept training part. The test set is only standardized."""
    if not 0.0 < subset <= 1.0:
        raise ConfigError(f"subset must be in (0, 1], got {subset}")
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n = len(raw.train_y)
    order = np.random.default_rng(split_seed).permutation(n)
    n_val = int(round(val_fraction * n))
    val_idx, train_idx = order[:n_val], order[n_val:]
    train_idx = train_idx[: max(1, int(round(subset * len(train_idx))))]
    train_x = raw.train_x[train_idx].astype(np.float32) / 255.0
    mean, std = channel_statistics(train_x)

    def standardize(x: np.ndarray) -> Tensor:
        return standardized(x, mean, std)

    return Splits(
        name=raw.name,
        train=Split(standardize(train_x), torch.from_numpy(raw.train_y[train_idx])),
        val=Split(standardize(raw.train_x[val_idx]), torch.from_numpy(raw.train_y[val_idx])),
        test=Split(standardize(raw.test_x), torch.from_numpy(raw.test_y)),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        classes=raw.classes,
        source=raw.source,
    )


def augment(x: Tensor, fill: Tensor, generator: torch.Generator, shift: int = 2) -> Tensor:
    """Random translation by up to `shift` pixels in each direction (the uncovered border
    takes the value `fill`, per channel) and a random horizontal flip, per image.

    x: [B, C, H, W]; returns a new tensor of the same shape.
    """
    b, c, h, w = x.shape
    padded = fill.view(1, c, 1, 1).to(x).expand(b, c, h + 2 * shift, w + 2 * shift).clone()
    padded[:, :, shift : shift + h, shift : shift + w] = x
    dy, dx = torch.randint(0, 2 * shift + 1, (2, b, 1), generator=generator)
    rows = (dy + torch.arange(h)).view(b, 1, h, 1)
    cols = (dx + torch.arange(w)).view(b, 1, 1, w)
    flip = torch.rand(b, generator=generator) < 0.5
    cols = torch.where(flip.view(b, 1, 1, 1), cols.flip(-1), cols)
    bi = torch.arange(b).view(b, 1, 1, 1)
    ci = torch.arange(c).view(1, c, 1, 1)
    return padded[bi, ci, rows, cols]


def batches(
    data: Split,
    batch_size: int,
    generator: torch.Generator | None = None,
    *,
    drop_last: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (x, y) mini-batches; shuffled when a generator is given, in order otherwise."""
    n = len(data)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        yield data.x[idx], data.y[idx]
