"""A real annotated microscopy image that needs no dataset download: the fluorescence image
of cell nuclei (512x512, 16 bits) with its instance mask from the 2018 Data Science Bowl
(Caicedo et al., Nature Methods 2019) that the stardist wheel ships as example data.

The wheel is fetched from PyPI with `pip download --no-deps` (stardist itself is never
installed), the two TIFF files are taken out of it and checked against pinned SHA-256
digests. The mask is binarized (nucleus vs background). Split by region, as the paper
splits DIC-HeLa 70% / 30%: training is the left 70% of the columns (358 of 512),
validation the right 30%; a nucleus on the boundary is seen partly in both.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..checkpoint import atomic_write
from ..errors import DataError
from .download import cache_dir, data_dirs, sha256
from .segmentation import RawSegmentation, foreground, read_image, read_mask

NAME = "nuclei"
PACKAGE = "stardist==0.9.2"
# pip may fetch the wheel of any platform: the example data is the same in each.
PIP_WHEEL = ["--only-binary=:all:", "--platform", "manylinux_2_28_x86_64",
             "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311"]  # fmt: skip
MEMBER = "stardist/data/images/"
FILES = {
    "img2d.tif": "f9ccc1571b92c861ff87e28463068b43f61bd47357ed0503f711e5cd1eb97750",
    "mask2d.tif": "59ad5e820b7982ca9d13e946fa6e7f64e2714899e00a2ae6c69aa79aad53d46f",
}
CLASSES = ("background", "nucleus")
VAL_FRACTION = 0.3
HOW_TO_GET = (
    f"run `stochnorm data nuclei --download` (it runs `pip download --no-deps {PACKAGE}`), or "
    f"put {' and '.join(FILES)} from that wheel's {MEMBER} in $STOCHNORM_DATA"
)


def locate() -> Path | None:
    for d in data_dirs(NAME):
        if all((d / f).is_file() for f in FILES):
            return d
    return None


def fetch() -> Path:
    """Download the stardist wheel into a temporary directory and keep the two images."""
    dest = cache_dir() / NAME
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                   *PIP_WHEEL, "--dest", tmp, PACKAGE]  # fmt: skip
        try:
            subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", None) or exc
            raise DataError(f"cannot download {PACKAGE} with pip ({detail})") from None
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise DataError(f"pip download {PACKAGE} left no wheel in {tmp}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            for file, expected in FILES.items():
                try:
                    content = wheel.read(MEMBER + file)
                except KeyError:
                    raise DataError(f"{wheels[0].name} has no {MEMBER + file}") from None
                _verify(content, expected, f"{wheels[0].name}:{MEMBER + file}")
                atomic_write(dest / file, lambda f, c=content: f.write(c))
    return dest


def load(download_missing: bool = True) -> RawSegmentation:
    """The image [1, 1, 512, 512] and its binarized mask, checked against the digests."""
    root = locate()
    if root is None:
        if not download_missing:
            raise DataError(f"the nuclei image is not in {_searched()}; {HOW_TO_GET}")
        root = fetch()
    for file, expected in FILES.items():
        _verify((root / file).read_bytes(), expected, str(root / file))
    image = read_image(root / "img2d.tif")
    mask = foreground(read_mask(root / "mask2d.tif"))
    width = image.shape[2]
    return RawSegmentation.checked(
        name=NAME, images=image[None], masks=mask[None], classes=CLASSES, source=str(root),
        val_column=width - round(VAL_FRACTION * width),
    )  # fmt: skip


def _verify(content: bytes, expected: str, where: str) -> None:
    got = sha256(content)
    if got != expected:
        raise DataError(
            f"{where}: checksum mismatch (got {got}, expected {expected}); {HOW_TO_GET}"
        )


def _searched() -> str:
    return ", ".join(str(d) for d in data_dirs(NAME))
