"""Segmentation data: images with a class per pixel, their splits, and the random crops that
training sees, augmented as the main paper's appendix A.2 does (random horizontal and
vertical flips and small non-rigid deformations, the same for an image and its mask).

A segmentation split is a `Split` whose labels are masks [N, H, W] (int64, a class per
pixel) beside images [N, C, H, W]; every pixel is one classified example.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..errors import ConfigError, DataError
from .corruptions import deform, elastic_field
from .splits import Split, Splits, channel_statistics, standardized

# The deformation of a training crop: a smooth random displacement field (white noise
# blurred by a Gaussian of std SMOOTHNESS pixels) with an rms displacement of AMPLITUDE
# pixels: "small non-rigid deformations" (the paper's Fig. 8 shows its size, not numbers).
AMPLITUDE = 3.0
SMOOTHNESS = 12.0


@dataclass(frozen=True)
class RawSegmentation:
    """Images [N, C, H, W] (float32, any range) with masks [N, H, W] (int64 classes in
    [0, len(classes))) and, per image, which split it belongs to: "train" or "val"; or one
    image whose columns from `val_column` on are the validation region (`val_column` set)."""

    name: str
    images: np.ndarray
    masks: np.ndarray
    classes: tuple[str, ...]
    source: str
    val_column: int | None = None

    @classmethod
    def checked(cls, **fields) -> RawSegmentation:
        data = cls(**fields)
        x, y = data.images, data.masks
        if x.ndim != 4 or y.ndim != 3 or len(x) != len(y) or x.shape[2:] != y.shape[1:]:
            raise DataError(
                f"{data.source}: images must be [N, C, H, W] and masks [N, H, W] of the same "
                f"sizes, got {x.shape} and {y.shape}"
            )
        if len(y) == 0:
            raise DataError(f"{data.source}: no images")
        if y.min() < 0 or y.max() >= len(data.classes):
            raise DataError(f"{data.source}: mask values outside 0..{len(data.classes) - 1}")
        if data.val_column is not None and (len(x) != 1 or not 0 < data.val_column < x.shape[3]):
            raise DataError(f"{data.source}: a region split needs one image and 0 < column < W")
        object.__setattr__(data, "images", x.astype(np.float32))
        object.__setattr__(data, "masks", y.astype(np.int64))
        return data


def read_image(path: Path | BinaryIO) -> np.ndarray:
    """The pixels of an image file (TIFF, PNG, ... as Pillow reads them, 8 or 16 bits) as a
    float32 array [C, H, W]; a DataError that names the file if it cannot be read."""
    try:
        with Image.open(path) as image:
            array = np.asarray(image)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the image ({exc})") from None
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3:
        array = array.transpose(2, 0, 1)
    else:
        raise DataError(f"{path}: expected a 2-d image, got an array of shape {array.shape}")
    return array.astype(np.float32)


def read_mask(path: Path | BinaryIO) -> np.ndarray:
    """A mask file as int64 [H, W] (its values as stored: labels, or instance ids)."""
    array = read_image(path)
    if array.shape[0] != 1:
        raise DataError(f"{path}: a mask must have one channel, got {array.shape[0]}")
    return array[0].astype(np.int64)


def split_segmentation(
    raw: RawSegmentation, *, split_seed: int = 0, val_fraction: float = 0.3
) -> Splits:
    """Train and validation splits of `raw`: its region split when it has one, else a
    random `val_fraction` of the images (fixed by `split_seed`; the paper: 70% / 30%).
    Images are standardized per channel by the training pixels' mean and std. There is no
    separate test set: the paper reports validation, and `test` is the validation split."""
    x, y = raw.images, raw.masks
    if raw.val_column is not None:
        c = raw.val_column
        train_x, train_y, val_x, val_y = x[..., :c], y[..., :c], x[..., c:], y[..., c:]
    else:
        if len(x) < 2:
            raise DataError(f"{raw.source}: a split by images needs at least 2 images")
        order = np.random.default_rng(split_seed).permutation(len(x))
        n_val = min(len(x) - 1, max(1, round(val_fraction * len(x))))
        val_idx, train_idx = order[:n_val], order[n_val:]
        train_x, train_y, val_x, val_y = x[train_idx], y[train_idx], x[val_idx], y[val_idx]
    mean, std = channel_statistics(train_x)

    def pair(images: np.ndarray, masks: np.ndarray) -> Split:
        return Split(standardized(images, mean, std), torch.from_numpy(np.ascontiguousarray(masks)))

    val = pair(val_x, val_y)
    return Splits(
        name=raw.name, train=pair(train_x, train_y), val=val, test=val,
        mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std),
        classes=raw.classes, source=raw.source,
    )  # fmt: skip


def crops_per_epoch(split: Split, size: int | None, batch_size: int, subset: float = 1.0) -> int:
    """The number of crops of an epoch: as many as cover a fraction `subset` of the
    training pixels once (ceil(subset * pixels / size^2); with `size` None, whole images),
    at least one batch."""
    if not 0.0 < subset <= 1.0:
        raise ConfigError(f"subset must be in (0, 1], got {subset}")
    pixels = subset * split.y.numel()
    per_crop = split.y[0].numel() if size is None else size**2
    return max(batch_size, math.ceil(pixels / per_crop))


def crop_batches(
    split: Split,
    batch_size: int,
    size: int | None,
    generator: torch.Generator,
    *,
    subset: float = 1.0,
    augment: bool = True,
) -> Iterator[tuple[Tensor, Tensor]]:
    """One epoch of training batches (x [B, C, s, s], masks [B, s, s]): `crops_per_epoch`
    crops of `size` (None: whole images, in a shuffled order), each from a random image at
    a random position, the last incomplete batch dropped; `augment` flips and deforms each
    crop (`augment_pair`)."""
    n, _, h, w = split.x.shape
    if size is not None and (size > h or size > w):
        raise ConfigError(f"crop_size {size} exceeds the training images ({h}x{w})")
    count = crops_per_epoch(split, size, batch_size, subset)
    if size is None:
        order = torch.cat([torch.randperm(n, generator=generator)
                           for _ in range(math.ceil(count / n))])[:count]  # fmt: skip
    for start in range(0, count - count % batch_size, batch_size):
        if size is None:
            idx = order[start : start + batch_size]
            x, y = split.x[idx], split.y[idx]
        else:
            idx = torch.randint(n, (batch_size,), generator=generator)
            top = torch.randint(h - size + 1, (batch_size,), generator=generator)
            left = torch.randint(w - size + 1, (batch_size,), generator=generator)
            x = torch.stack([split.x[i, :, t : t + size, c : c + size]
                             for i, t, c in zip(idx, top, left, strict=True)])  # fmt: skip
            y = torch.stack([split.y[i, t : t + size, c : c + size]
                             for i, t, c in zip(idx, top, left, strict=True)])  # fmt: skip
        if augment:
            x, y = augment_pair(x, y, generator)
        yield x, y


def augment_pair(
    x: Tensor,
    masks: Tensor,
    generator: torch.Generator,
    *,
    amplitude: float = AMPLITUDE,
    smoothness: float = SMOOTHNESS,
) -> tuple[Tensor, Tensor]:
    """Images [B, C, H, W] and their masks [B, H, W], each pair flipped horizontally and
    vertically with probability 1/2 each and deformed by one random smooth displacement
    field (`corruptions.elastic_field`): the image resampled bilinearly, its mask at the
    nearest pixel, so that a mask pixel moves with its image pixel."""
    b = len(x)
    flips = torch.rand((2, b), generator=generator) < 0.5
    x, masks = x.clone(), masks.clone()
    for dim, flip in ((-1, flips[0]), (-2, flips[1])):
        x[flip] = x[flip].flip(dim)
        masks[flip] = masks[flip].flip(dim)
    if amplitude == 0:
        return x, masks
    field = elastic_field(b, tuple(x.shape[-2:]), amplitude, generator, smoothness).to(x)
    moved = deform(x, field)
    moved_masks = deform(masks[:, None].to(x), field, mode="nearest")[:, 0].round().long()
    return moved, moved_masks


def foreground(masks: np.ndarray) -> np.ndarray:
    """Instance masks (0 background, 1, 2, ... one id per object) as cell (1) vs
    background (0)."""
    return (masks > 0).astype(np.int64)
