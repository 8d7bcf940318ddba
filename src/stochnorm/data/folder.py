"""A user's segmentation data: dataset "folder:PATH" reads PATH/images/NAME.EXT with its mask
PATH/masks/NAME.EXT (TIFF or PNG, any name; a mask may be stored under another extension
than its image). Every mask is read as object (non-zero) vs background (zero), the labels
of binary masks and of instance masks alike; all images must have one size and one channel
count. The images are split 70% / 30% into training and validation at random."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .segmentation import RawSegmentation, foreground, read_image, read_mask

PREFIX = "folder:"
SUFFIXES = (".tif", ".tiff", ".png")
CLASSES = ("background", "object")


class Folder:
    """The reader of one folder (the interface of the dataset modules)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.HOW_TO_GET = (
            f"put image files in {self.path / 'images'} and masks of the same names in "
            f"{self.path / 'masks'}"
        )

    def locate(self) -> Path | None:
        return self.path if (self.path / "images").is_dir() else None

    def fetch(self) -> Path:
        raise DataError(f"{self.path}: a folder dataset is not downloaded; {self.HOW_TO_GET}")

    def load(self, download_missing: bool = True) -> RawSegmentation:
        if self.locate() is None:
            raise DataError(f"{self.path}: no images/ folder; {self.HOW_TO_GET}")
        masks_dir = self.path / "masks"
        masks_by_stem = {p.stem: p for p in _files(masks_dir)}
        images, masks = [], []
        for image_path in _files(self.path / "images"):
            mask_path = masks_by_stem.get(image_path.stem)
            if mask_path is None:
                raise DataError(f"{image_path}: no mask {image_path.stem}.* in {masks_dir}")
            image, mask = read_image(image_path), read_mask(mask_path)
            if image.shape[1:] != mask.shape:
                raise DataError(f"{mask_path}: size {mask.shape} differs from its image's")
            if images and image.shape != images[0].shape:
                raise DataError(
                    f"{image_path}: shape {image.shape} differs from the first image's "
                    f"{images[0].shape}; crop or pad the images to one size"
                )
            images.append(image)
            masks.append(foreground(mask))
        if not images:
            raise DataError(f"{self.path / 'images'}: no {'/'.join(SUFFIXES)} files")
        return RawSegmentation.checked(
            name=f"{PREFIX}{self.path}", images=np.stack(images), masks=np.stack(masks),
            classes=CLASSES, source=str(self.path),
        )  # fmt: skip


def _files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES)
