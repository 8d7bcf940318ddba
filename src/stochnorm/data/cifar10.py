"""CIFAR-10 (Krizhevsky, 2009) from the official python-pickle tarball, read in place.

The batches are Python pickles; they are read with an unpickler that only builds numpy
arrays and plain containers, so a tampered file cannot run code.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError
from .download import cache_dir, data_dirs, download, sha256
from .raw import RawDataset

NAME = "cifar10"
TARBALL = "cifar-10-python.tar.gz"
URL = "https://www.cs.toronto.edu/~kriz/" + TARBALL
SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
TRAIN_MEMBERS = tuple(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6))
TEST_MEMBER = "cifar-10-batches-py/test_batch"
HOW_TO_GET = (
    f"run `stochnorm data cifar10 --download`, or put {TARBALL} in $STOCHNORM_DATA "
    "or ~/.cache/stochnorm"
)
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_batch(tar: tarfile.TarFile, member: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        f = tar.extractfile(member)
    except KeyError:
        raise DataError(f"{path}: member {member} missing; the tarball is incomplete") from None
    if f is None:
        raise DataError(f"{path}: member {member} is not a file; the tarball is corrupt")
    try:
        batch = _ArrayUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
        x = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(batch[b"labels"], dtype=np.int64)
    except KeyError as exc:
        raise DataError(f"{path}: {member} lacks the entry {exc}; the tarball is corrupt") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read {member} ({exc}); the tarball is corrupt") from None
    return x, y


def locate() -> Path | None:
    for d in data_dirs("", None):
        if (d / TARBALL).is_file():
            return d / TARBALL
    return None


def fetch() -> Path:
    return download(URL, cache_dir() / TARBALL, sha256, SHA256, timeout=300)


def load(download_missing: bool = True) -> RawDataset:
    """Load CIFAR-10 as uint8 arrays [N, 3, 32, 32] and int64 labels."""
    path = locate()
    if path is None:
        if not download_missing:
            raise DataError(f"CIFAR-10 tarball {TARBALL} not found; {HOW_TO_GET}")
        try:
            path = fetch()
        except DataError as exc:
            raise DataError(f"CIFAR-10 not found locally and {exc}; {HOW_TO_GET}") from None
    try:
        with tarfile.open(path, "r:gz") as tar:
            train = [_read_batch(tar, m, path) for m in TRAIN_MEMBERS]
            test_x, test_y = _read_batch(tar, TEST_MEMBER, path)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read the tarball ({exc}); {HOW_TO_GET}") from None
    except DataError as exc:
        raise DataError(f"{exc}; to replace it, {HOW_TO_GET}") from None
    return RawDataset.checked(
        name=NAME,
        train_x=np.concatenate([x for x, _ in train]),
        train_y=np.concatenate([y for _, y in train]),
        test_x=test_x,
        test_y=test_y,
        classes=CLASSES,
        source=str(path),
    )
