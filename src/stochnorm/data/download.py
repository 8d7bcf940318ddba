"""Checksum-verified downloads, written atomically (temporary file, then rename)."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from ..checkpoint import atomic_write
from ..errors import DataError


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download(
    url: str,
    dest: Path,
    digest: Callable[[bytes], str],
    expected: str | None,
    timeout: float = 60.0,
) -> Path:
    """Fetch `url` into `dest` if `digest(content) == expected`, else raise DataError
    (`expected` None: a source that publishes no checksum; its reader checks the content).

    `digest` lets a caller check what matters: for gzip files the uncompressed bytes, since
    the same data is distributed with different compressions.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            content = response.read()
    except (urllib.error.URLError, OSError) as exc:
        raise DataError(
            f"cannot download {url} ({exc}); fetch it by hand into {dest.parent}"
        ) from None
    got = digest(content)
    if expected is not None and got != expected:
        raise DataError(f"{url}: checksum mismatch (got {got}, expected {expected})")
    atomic_write(dest, lambda f: f.write(content))
    return dest


def data_dirs(name: str, system_dir: str | None = None) -> list[Path]:
    """Where dataset `name` is looked for, in order: $STOCHNORM_DATA, the user cache, the
    system directory of a distribution package."""
    dirs = []
    env = os.environ.get("STOCHNORM_DATA")
    if env:
        dirs += [Path(env) / name, Path(env)]
    dirs.append(cache_dir() / name)
    if system_dir:
        dirs.append(Path(system_dir))
    return dirs


def cache_dir() -> Path:
    """Download target: $STOCHNORM_DATA if set, else ~/.cache/stochnorm."""
    env = os.environ.get("STOCHNORM_DATA")
    return Path(env) if env else Path.home() / ".cache" / "stochnorm"
