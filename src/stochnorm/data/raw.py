"""The in-memory form every dataset reader returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DataError


@dataclass(frozen=True)
class RawDataset:
    """Images as uint8 arrays [N, C, H, W] with int64 labels in [0, len(classes))."""

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: tuple[str, ...]
    source: str

    @classmethod
    def checked(cls, **fields) -> RawDataset:
        """Build the dataset after checking that images and labels agree."""
        data = cls(**fields)
        for part in ("train", "test"):
            x, y = getattr(data, f"{part}_x"), getattr(data, f"{part}_y")
            if x.ndim != 4 or x.dtype != np.uint8:
                raise DataError(f"{data.source}: {part} images must be uint8 [N, C, H, W]")
            if len(x) != len(y):
                raise DataError(f"{data.source}: {len(x)} {part} images but {len(y)} {part} labels")
            if len(y) and (y.min() < 0 or y.max() >= len(data.classes)):
                raise DataError(f"{data.source}: {part} labels outside 0..{len(data.classes) - 1}")
        object.__setattr__(data, "train_y", data.train_y.astype(np.int64))
        object.__setattr__(data, "test_y", data.test_y.astype(np.int64))
        return data
