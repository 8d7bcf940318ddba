"""Datasets: readers for the real files, the fixed splits, augmentation and batching."""

from __future__ import annotations

from ..options import Option
from . import cifar10, fashion_mnist
from .raw import RawDataset
from .splits import Split, Splits, augment, batches, split


class Dataset(Option):
    FASHION_MNIST = "fashion-mnist"
    CIFAR10 = "cifar10"


_READERS = {Dataset.FASHION_MNIST: fashion_mnist, Dataset.CIFAR10: cifar10}


def reader(name: str | Dataset):
    """The module that locates, downloads and loads dataset `name`."""
    return _READERS[Dataset.parse(name)]


def load(name: str | Dataset, *, download: bool = True) -> RawDataset:
    """Load the raw arrays of dataset `name`, downloading them if allowed and missing."""
    return reader(name).load(download)


def prepare(
    name: str | Dataset, *, subset: float = 1.0, split_seed: int = 0, download: bool = True
) -> Splits:
    """Load dataset `name` and return its standardized train/validation/test splits."""
    return split(load(name, download=download), subset=subset, split_seed=split_seed)


__all__ = [
    "Dataset", "RawDataset", "Split", "Splits", "augment", "batches", "load", "prepare",
    "reader", "split",
]  # fmt: skip
