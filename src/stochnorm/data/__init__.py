"""Datasets: readers for the real files, the fixed splits, augmentation and batching.

Classification sets (Fashion-MNIST, CIFAR-10) hold one label per image; segmentation sets
(the nuclei image, DIC-HeLa, a user's "folder:PATH") one class per pixel
(`data.segmentation`)."""

from __future__ import annotations

from ..errors import ConfigError
from ..options import Option
from . import cifar10, dic_hela, fashion_mnist, nuclei
from .folder import PREFIX as FOLDER_PREFIX
from .folder import Folder
from .raw import RawDataset
from .segmentation import RawSegmentation, crop_batches, crops_per_epoch, split_segmentation
from .splits import Split, Splits, augment, batches, split


class Dataset(Option):
    FASHION_MNIST = "fashion-mnist"
    CIFAR10 = "cifar10"
    NUCLEI = "nuclei"
    DIC_HELA = "dic-hela"


_READERS = {
    Dataset.FASHION_MNIST: fashion_mnist, Dataset.CIFAR10: cifar10, Dataset.NUCLEI: nuclei,
    Dataset.DIC_HELA: dic_hela,
}  # fmt: skip


def check_name(name: str) -> str:
    """`name` as runs record it: a registered dataset, or "folder:PATH" (a ConfigError that
    lists the choices otherwise)."""
    if isinstance(name, str) and name.startswith(FOLDER_PREFIX):
        if not name[len(FOLDER_PREFIX) :]:
            raise ConfigError("dataset folder: needs a path, as in folder:/data/cells")
        return name
    try:
        return Dataset.parse(name).value
    except ConfigError as exc:
        raise ConfigError(f"{exc}, or folder:PATH (images/ and masks/ in PATH)") from None


def reader(name: str | Dataset):
    """The reader (module or `Folder`) that locates, downloads and loads dataset `name`."""
    name = check_name(name)
    if name.startswith(FOLDER_PREFIX):
        return Folder(name[len(FOLDER_PREFIX) :])
    return _READERS[Dataset(name)]


def load(name: str | Dataset, *, download: bool = True) -> RawDataset | RawSegmentation:
    """Load the raw arrays of dataset `name`, downloading them if allowed and missing."""
    return reader(name).load(download)


def prepare(
    name: str | Dataset, *, subset: float = 1.0, split_seed: int = 0, download: bool = True
) -> Splits:
    """Load dataset `name` and return its standardized train/validation/test splits
    (`subset`: the fraction of the training split kept; a segmentation set keeps all its
    training images, and its epochs cover that fraction of their pixels, see
    `crop_batches`)."""
    raw = load(name, download=download)
    if isinstance(raw, RawSegmentation):
        return split_segmentation(raw, split_seed=split_seed)
    return split(raw, subset=subset, split_seed=split_seed)


__all__ = [
    "Dataset", "RawDataset", "RawSegmentation", "Split", "Splits", "augment", "batches",
    "check_name", "crop_batches", "crops_per_epoch", "load", "prepare", "reader", "split",
]  # fmt: skip
