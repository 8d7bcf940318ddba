"""Fashion-MNIST (Xiao et al., 2017): 60,000 training and 10,000 test images, 28x28 grey."""

from __future__ import annotations

import gzip
from pathlib import Path

from ..errors import DataError
from .download import cache_dir, data_dirs, download, sha256
from .idx import read_idx
from .raw import RawDataset

NAME = "fashion-mnist"
SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's package dataset-fashion-mnist
MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
# SHA-256 of the *uncompressed* IDX bytes: the official mirror and Debian's package hold the
# same data under different gzip compressions.
FILES = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
HOW_TO_GET = (
    "install Debian's package dataset-fashion-mnist, run `stochnorm data fashion-mnist "
    "--download`, or put the four IDX .gz files in $STOCHNORM_DATA"
)


def locate() -> Path | None:
    """The first directory of the search order that holds all four files, or None."""
    for d in data_dirs(NAME, SYSTEM_DIR):
        if all((d / f).is_file() for f in FILES):
            return d
    return None


def fetch() -> Path:
    """Download the files missing from the cache directory, verifying each checksum."""
    dest = cache_dir() / NAME
    for file, expected in FILES.items():
        if not (dest / file).is_file():
            download(MIRROR + file, dest / file, lambda b: sha256(gzip.decompress(b)), expected)
    return dest


def load(download_missing: bool = True) -> RawDataset:
    """Load Fashion-MNIST as uint8 arrays of shape [N, 1, 28, 28] and int64 labels."""
    root = locate()
    if root is None:
        if not download_missing:
            raise DataError(f"Fashion-MNIST not found in {_searched()}; {HOW_TO_GET}")
        try:
            root = fetch()
        except DataError as exc:
            raise DataError(
                f"Fashion-MNIST not found in {_searched()} and {exc}; {HOW_TO_GET}"
            ) from None
    try:
        arrays = {f: read_idx(root / f) for f in FILES}
    except DataError as exc:
        raise DataError(f"{exc}; to replace it, {HOW_TO_GET}") from None
    return RawDataset.checked(
        name=NAME,
        train_x=arrays["train-images-idx3-ubyte.gz"][:, None],
        train_y=arrays["train-labels-idx1-ubyte.gz"],
        test_x=arrays["t10k-images-idx3-ubyte.gz"][:, None],
        test_y=arrays["t10k-labels-idx1-ubyte.gz"],
        classes=CLASSES,
        source=str(root),
    )


def _searched() -> str:
    return ", ".join(str(d) for d in data_dirs(NAME, SYSTEM_DIR))
