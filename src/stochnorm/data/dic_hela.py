"""DIC-HeLa (ISBI Cell Tracking Challenge, DIC-C2DH-HeLa training data; Ulman et al., Nature
Methods 2017): HeLa cells on glass in differential interference contrast, 512x512 8-bit
frames of two sequences, with hand-drawn segmentations of some frames, the data of the main
paper's section 4 and appendix A.2.

The challenge publishes no checksum of its archive. Its structure is checked (sequences
01 and 02, their `NN_GT/SEG/man_segTTT.tif` masks each beside a frame `NN/tTTT.tif`), and
the SHA-256 of the first archive read is recorded beside it (`DIC-C2DH-HeLa.zip.sha256`),
so that a later, corrupted or replaced copy is refused. Every annotated frame is one image;
the instance masks are binarized (cell vs background), and the images are split 70% / 30%
into training and validation at random, as the paper does.
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from pathlib import Path

import numpy as np

from ..checkpoint import atomic_write
from ..errors import DataError
from .download import cache_dir, data_dirs, download
from .segmentation import RawSegmentation, foreground, read_image, read_mask

NAME = "dic-hela"
ARCHIVE = "DIC-C2DH-HeLa.zip"
URL = "http://data.celltrackingchallenge.net/training-datasets/" + ARCHIVE
ROOT = "DIC-C2DH-HeLa"
SEQUENCES = ("01", "02")
CLASSES = ("background", "cell")
HOW_TO_GET = (
    f"run `stochnorm data dic-hela --download`, or put {ARCHIVE} (from "
    f"celltrackingchallenge.net) in $STOCHNORM_DATA or ~/.cache/stochnorm"
)
_MASK = re.compile(rf"^{ROOT}/(\d\d)_GT/SEG/man_seg(\d+)\.tif$")


def locate() -> Path | None:
    for d in data_dirs(NAME):
        if (d / ARCHIVE).is_file():
            return d
    return None


def fetch() -> Path:
    """Download the archive (its structure is checked when it is read)."""
    dest = cache_dir() / NAME
    download(URL, dest / ARCHIVE, _digest, None)
    return dest


def load(download_missing: bool = True) -> RawSegmentation:
    root = locate()
    if root is None:
        if not download_missing:
            raise DataError(f"{ARCHIVE} not found in {_searched()}; {HOW_TO_GET}")
        root = fetch()
    return read_archive(root / ARCHIVE)


def read_archive(path: Path) -> RawSegmentation:
    """The annotated frames of the archive at `path` with their binarized masks; the
    archive's SHA-256 recorded at the first read and compared at every later one."""
    content = path.read_bytes()
    _check_recorded(path, _digest(content))
    try:
        archive = zipfile.ZipFile(io.BytesIO(content))
    except zipfile.BadZipFile as exc:
        raise DataError(f"{path}: not a zip archive ({exc}); {HOW_TO_GET}") from None
    names = set(archive.namelist())
    pairs = sorted(
        (m.group(1), m.group(2), name) for name in names if (m := _MASK.match(name))
    )  # fmt: skip
    found = {seq for seq, _, _ in pairs}
    if found != set(SEQUENCES):
        raise DataError(
            f"{path}: expected the segmentation masks of sequences {', '.join(SEQUENCES)} under "
            f"{ROOT}/NN_GT/SEG/, found them for {sorted(found) or 'none'}; {HOW_TO_GET}"
        )
    images, masks = [], []
    for seq, frame, mask_name in pairs:
        image_name = f"{ROOT}/{seq}/t{frame}.tif"
        if image_name not in names:
            raise DataError(f"{path}: {mask_name} has no frame {image_name}")
        images.append(_read(archive, image_name, read_image, path))
        masks.append(foreground(_read(archive, mask_name, read_mask, path)))
    shapes = {im.shape for im in images} | {(1, *m.shape) for m in masks}
    if len(shapes) != 1:
        raise DataError(f"{path}: frames and masks of different sizes {sorted(shapes)}")
    return RawSegmentation.checked(
        name=NAME, images=np.stack(images), masks=np.stack(masks), classes=CLASSES,
        source=str(path),
    )  # fmt: skip


def _read(archive: zipfile.ZipFile, name: str, reader, path: Path) -> np.ndarray:
    try:
        return reader(io.BytesIO(archive.read(name)))
    except (zipfile.BadZipFile, OSError, KeyError, DataError) as exc:
        raise DataError(f"{path}: cannot read {name} ({exc})") from None


def _digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _check_recorded(path: Path, digest: str) -> None:
    record = path.with_name(path.name + ".sha256")
    if not record.is_file():
        atomic_write(record, lambda f: f.write(f"{digest}  {path.name}\n".encode()))
        return
    recorded = (record.read_text().split() or [""])[0]
    if recorded != digest:
        raise DataError(
            f"{path}: its SHA-256 {digest} differs from the one recorded at its first use "
            f"({recorded}, in {record}); the archive changed or is corrupt: {HOW_TO_GET}, or "
            f"remove {record.name} to accept this copy"
        )


def _searched() -> str:
    return ", ".join(str(d) for d in data_dirs(NAME))
