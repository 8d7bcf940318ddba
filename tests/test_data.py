"""Dataset readers, the fixed splits, augmentation and batching.

Most tests build tiny files in the official formats under a temporary $STOCHNORM_DATA; one
checks the real Fashion-MNIST files when they are installed.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import re
import shlex
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from stochnorm import data as datasets
from stochnorm.data import cifar10, fashion_mnist
from stochnorm.data.download import download, sha256
from stochnorm.data.idx import parse_idx, read_bytes, read_idx, write_idx
from stochnorm.data.raw import RawDataset
from stochnorm.data.splits import Split, augment, batches, split
from stochnorm.errors import ConfigError, DataError

TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty $STOCHNORM_DATA, with HOME moved away from the real user cache."""
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("STOCHNORM_DATA", str(root))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return root


@pytest.fixture
def no_system_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide the Debian copy of Fashion-MNIST that this machine may have."""
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", str(tmp_path / "no-such-system-dir"))


# --------------------------------------------------------------------------------------------
# IDX


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("shape", [(7, 5, 3), (11,), (2, 3, 4, 5)])
def test_idx_round_trip(tmp_path: Path, suffix: str, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(1)
    array = rng.integers(0, 256, shape, dtype=np.uint8)
    path = tmp_path / f"a-idx{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == np.uint8
    assert back.shape == shape
    np.testing.assert_array_equal(back, array)


def test_idx_layout_and_compression(tmp_path: Path) -> None:
    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    plain, packed = tmp_path / "x-idx2-ubyte", tmp_path / "x-idx2-ubyte.gz"
    write_idx(plain, array)
    write_idx(packed, array)
    expected = bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 0, 1, 2, 3, 4, 5])
    assert plain.read_bytes() == expected
    assert packed.read_bytes()[:2] == b"\x1f\x8b"  # a real gzip stream
    assert gzip.decompress(packed.read_bytes()) == expected
    assert read_bytes(packed) == read_bytes(plain) == expected


def test_idx_wider_types_become_native_endian() -> None:
    raw = bytes([0, 0, 0x0C, 1, 0, 0, 0, 3]) + np.array([1, -2, 70000], ">i4").tobytes()
    values = parse_idx(raw)
    assert values.dtype == np.dtype(np.int32)
    assert values.dtype.isnative
    assert values.tolist() == [1, -2, 70000]


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x07", "bad magic"),
        (b"\x00\x01\x08\x01\x00\x00\x00\x01\x07", "bad magic"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x07", "bad magic"),  # unknown type code
        (b"\x00\x00", "bad magic"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x02\x00\x00", "truncated IDX header"),
        (_idx_bytes(np.zeros((4, 3), np.uint8))[:-1], "truncated"),
        (_idx_bytes(np.zeros((4, 3), np.uint8)) + b"\x00", "padded"),
    ],
    ids=["magic-0", "magic-1", "type-code", "too-short", "header", "data", "padding"],
)
def test_parse_idx_rejects_broken_bytes(raw: bytes, message: str) -> None:
    name = "/some/where/broken-idx3-ubyte"
    with pytest.raises(DataError, match=re.escape(name)) as info:
        parse_idx(raw, name)
    assert message in str(info.value)


def test_read_idx_truncated_gzip_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cut-idx3-ubyte.gz"
    write_idx(path, np.random.default_rng(0).integers(0, 256, (20, 28, 28), dtype=np.uint8))
    packed = path.read_bytes()
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataError, match=re.escape(str(path))):
        read_idx(path)


def test_read_idx_truncated_plain_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cut-idx3-ubyte"
    write_idx(path, np.ones((5, 4, 4), np.uint8))
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(DataError, match=re.escape(str(path))):
        read_idx(path)


# --------------------------------------------------------------------------------------------
# Fashion-MNIST from synthetic files


def _write_fashion(
    root: Path,
    n_train: int = 50,
    n_test: int = 20,
    seed: int = 0,
    n_train_labels: int | None = None,
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_labels = n_train if n_train_labels is None else n_train_labels
    arrays = {
        TRAIN_IMAGES: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        TRAIN_LABELS: rng.permutation(np.arange(n_labels) % 10).astype(np.uint8),
        TEST_IMAGES: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        TEST_LABELS: rng.permutation(np.arange(n_test) % 10).astype(np.uint8),
    }
    assert set(arrays) == set(fashion_mnist.FILES)
    root.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_idx(root / name, array)
    return arrays


def _check_fashion(raw: RawDataset, arrays: dict[str, np.ndarray], source: Path) -> None:
    assert raw.name == "fashion-mnist"
    assert raw.source == str(source)
    assert raw.classes == fashion_mnist.CLASSES and len(raw.classes) == 10
    n_train, n_test = len(arrays[TRAIN_IMAGES]), len(arrays[TEST_IMAGES])
    assert raw.train_x.shape == (n_train, 1, 28, 28)
    assert raw.test_x.shape == (n_test, 1, 28, 28)
    assert raw.train_x.dtype == raw.test_x.dtype == np.uint8
    assert raw.train_y.dtype == raw.test_y.dtype == np.int64
    np.testing.assert_array_equal(raw.train_x[:, 0], arrays[TRAIN_IMAGES])
    np.testing.assert_array_equal(raw.test_x[:, 0], arrays[TEST_IMAGES])
    np.testing.assert_array_equal(raw.train_y, arrays[TRAIN_LABELS])
    np.testing.assert_array_equal(raw.test_y, arrays[TEST_LABELS])


def test_fashion_mnist_reads_synthetic_files(data_dir: Path) -> None:
    # The Debian copy (if any) is left visible: $STOCHNORM_DATA must come first.
    arrays = _write_fashion(data_dir)
    assert fashion_mnist.locate() == data_dir
    _check_fashion(datasets.load("fashion-mnist", download=False), arrays, data_dir)


def test_fashion_mnist_prefers_the_named_subdirectory(data_dir: Path) -> None:
    _write_fashion(data_dir, seed=1)
    arrays = _write_fashion(data_dir / "fashion-mnist", n_train=30, n_test=10, seed=2)
    raw = datasets.load(datasets.Dataset.FASHION_MNIST, download=False)
    _check_fashion(raw, arrays, data_dir / "fashion-mnist")


def test_fashion_mnist_from_user_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_system_copy: None
) -> None:
    monkeypatch.delenv("STOCHNORM_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cache = tmp_path / "home" / ".cache" / "stochnorm" / "fashion-mnist"
    arrays = _write_fashion(cache, seed=3)
    _check_fashion(datasets.load("fashion-mnist", download=False), arrays, cache)


def test_fashion_mnist_missing_says_how_to_get_it(data_dir: Path, no_system_copy: None) -> None:
    assert fashion_mnist.locate() is None
    with pytest.raises(DataError, match="dataset-fashion-mnist") as info:
        datasets.load("fashion-mnist", download=False)
    assert str(data_dir) in str(info.value)  # says where it looked
    assert not list(data_dir.iterdir())  # and did not try to download


def test_fashion_mnist_incomplete_directory_is_missing(
    data_dir: Path, no_system_copy: None
) -> None:
    _write_fashion(data_dir)
    (data_dir / TEST_LABELS).unlink()
    assert fashion_mnist.locate() is None
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        datasets.load("fashion-mnist", download=False)


def test_fashion_mnist_count_mismatch(data_dir: Path) -> None:
    _write_fashion(data_dir, n_train=50, n_train_labels=49)
    with pytest.raises(DataError, match="50 train images but 49 train labels"):
        datasets.load("fashion-mnist", download=False)


def test_fashion_mnist_truncated_file(data_dir: Path) -> None:
    _write_fashion(data_dir)
    path = data_dir / TRAIN_IMAGES
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match=re.escape(str(path))):
        datasets.load("fashion-mnist", download=False)


def test_fashion_mnist_download_from_mirror(
    tmp_path: Path, data_dir: Path, no_system_copy: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = tmp_path / "mirror"
    arrays = _write_fashion(mirror, seed=4)
    digests = {f: sha256(gzip.decompress((mirror / f).read_bytes())) for f in arrays}
    monkeypatch.setattr(fashion_mnist, "MIRROR", mirror.as_uri() + "/")
    monkeypatch.setattr(fashion_mnist, "FILES", digests)
    raw = datasets.load("fashion-mnist", download=True)
    _check_fashion(raw, arrays, data_dir / "fashion-mnist")
    for f in arrays:
        assert (data_dir / "fashion-mnist" / f).read_bytes() == (mirror / f).read_bytes()


def test_fashion_mnist_download_checksum_mismatch(
    tmp_path: Path, data_dir: Path, no_system_copy: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = tmp_path / "mirror"
    _write_fashion(mirror)
    monkeypatch.setattr(fashion_mnist, "MIRROR", mirror.as_uri() + "/")
    # The real checksums cannot match the synthetic files.
    with pytest.raises(DataError, match="checksum mismatch") as info:
        datasets.load("fashion-mnist", download=True)
    assert "dataset-fashion-mnist" in str(info.value)
    target = data_dir / "fashion-mnist"
    assert not target.exists() or not list(target.iterdir())


# --------------------------------------------------------------------------------------------
# The real Fashion-MNIST


@pytest.mark.slow
def test_real_fashion_mnist() -> None:
    root = fashion_mnist.locate()
    if root is None:
        pytest.skip("Fashion-MNIST is not installed (run `make data`)")
    for name, expected in fashion_mnist.FILES.items():
        assert sha256(read_bytes(root / name)) == expected, name
    raw = datasets.load("fashion-mnist", download=False)
    assert raw.source == str(root)
    assert raw.train_x.shape == (60000, 1, 28, 28)
    assert raw.test_x.shape == (10000, 1, 28, 28)
    assert raw.train_y.shape == (60000,) and raw.test_y.shape == (10000,)
    assert raw.train_y.min() == 0 and raw.train_y.max() == 9
    assert raw.test_y.min() == 0 and raw.test_y.max() == 9
    assert np.bincount(raw.train_y, minlength=10).tolist() == [6000] * 10
    assert np.bincount(raw.test_y, minlength=10).tolist() == [1000] * 10
    assert raw.train_x.max() == 255 and raw.train_x.min() == 0


# --------------------------------------------------------------------------------------------
# CIFAR-10 from a synthetic tarball


def _cifar_batch(rng: np.random.Generator, n: int, label: bytes) -> dict[bytes, object]:
    return {
        b"batch_label": label,
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [b"image_%d.png" % i for i in range(n)],
    }


def _write_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def _cifar_members(n: int = 4, seed: int = 0) -> tuple[dict[str, bytes], dict[str, dict]]:
    rng = np.random.default_rng(seed)
    batches_ = {m: _cifar_batch(rng, n, m.encode()) for m in cifar10.TRAIN_MEMBERS}
    batches_[cifar10.TEST_MEMBER] = _cifar_batch(rng, n + 1, b"testing batch 1 of 1")
    # One image with constant planes, to pin down the channel order.
    batches_[cifar10.TRAIN_MEMBERS[0]][b"data"][0] = np.repeat([10, 20, 30], 1024)
    return {m: pickle.dumps(b, protocol=2) for m, b in batches_.items()}, batches_


def _chw(rows: np.ndarray) -> np.ndarray:
    """Rows of 3072 values to [N, 3, 32, 32]: plane c, row r, column k is c*1024 + r*32 + k."""
    c, r, k = np.indices((3, 32, 32))
    return rows[:, c * 1024 + r * 32 + k]


def test_cifar10_reads_synthetic_tarball(data_dir: Path) -> None:
    n = 4
    members, contents = _cifar_members(n)
    path = _write_tar(data_dir / cifar10.TARBALL, members)
    raw = datasets.load("cifar10", download=False)
    assert raw.name == "cifar10" and raw.source == str(path)
    assert raw.classes == cifar10.CLASSES
    assert raw.train_x.shape == (5 * n, 3, 32, 32) and raw.train_x.dtype == np.uint8
    assert raw.test_x.shape == (n + 1, 3, 32, 32) and raw.test_x.dtype == np.uint8
    assert raw.train_y.dtype == raw.test_y.dtype == np.int64
    train_rows = np.concatenate([contents[m][b"data"] for m in cifar10.TRAIN_MEMBERS])
    train_labels = sum((contents[m][b"labels"] for m in cifar10.TRAIN_MEMBERS), [])
    np.testing.assert_array_equal(raw.train_x, _chw(train_rows))
    np.testing.assert_array_equal(raw.train_y, train_labels)
    np.testing.assert_array_equal(raw.test_x, _chw(contents[cifar10.TEST_MEMBER][b"data"]))
    np.testing.assert_array_equal(raw.test_y, contents[cifar10.TEST_MEMBER][b"labels"])
    # R plane, then G, then B.
    assert [int(v) for v in np.unique(raw.train_x[0, 0])] == [10]
    assert [int(v) for v in np.unique(raw.train_x[0, 1])] == [20]
    assert [int(v) for v in np.unique(raw.train_x[0, 2])] == [30]
    # Rows of 32 within a plane: the value at (row 1, column 0) is data[32].
    first = contents[cifar10.TRAIN_MEMBERS[0]][b"data"][1]
    assert raw.train_x[1, 0, 1, 0] == first[32]
    assert raw.train_x[1, 2, 31, 30] == first[2 * 1024 + 31 * 32 + 30]


def test_cifar10_missing_tarball(data_dir: Path) -> None:
    assert cifar10.locate() is None
    with pytest.raises(DataError, match=re.escape(cifar10.TARBALL)):
        datasets.load("cifar10", download=False)


@pytest.mark.parametrize("missing", [cifar10.TRAIN_MEMBERS[3], cifar10.TEST_MEMBER])
def test_cifar10_missing_member(data_dir: Path, missing: str) -> None:
    members, _ = _cifar_members()
    del members[missing]
    _write_tar(data_dir / cifar10.TARBALL, members)
    with pytest.raises(DataError, match=re.escape(missing)):
        datasets.load("cifar10", download=False)


class _RunsCommand:
    """Unpickles into a call of os.system: what a tampered batch could hold."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_cifar10_refuses_code_in_pickles(tmp_path: Path, data_dir: Path) -> None:
    marker = tmp_path / "pwned"
    evil = pickle.dumps(
        {b"data": _RunsCommand(f"touch {shlex.quote(str(marker))}"), b"labels": [0]}, protocol=2
    )
    # The payload is live: a plain unpickler runs it.
    live = tmp_path / "live"
    pickle.loads(pickle.dumps(_RunsCommand(f"touch {shlex.quote(str(live))}"), protocol=2))
    assert live.exists()

    members, _ = _cifar_members()
    members[cifar10.TRAIN_MEMBERS[2]] = evil
    _write_tar(data_dir / cifar10.TARBALL, members)
    with pytest.raises(DataError, match=re.escape(cifar10.TRAIN_MEMBERS[2])) as info:
        datasets.load("cifar10", download=False)
    assert "system" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "batch",
    [
        {b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]},  # not 3x32x32 images
        [np.zeros((2, 3072), np.uint8), [0, 1]],  # not a dict
    ],
    ids=["bad-size", "not-a-dict"],
)
def test_cifar10_malformed_batch(data_dir: Path, batch: object) -> None:
    members, _ = _cifar_members()
    members[cifar10.TEST_MEMBER] = pickle.dumps(batch, protocol=2)
    _write_tar(data_dir / cifar10.TARBALL, members)
    with pytest.raises(DataError, match=re.escape(cifar10.TEST_MEMBER)):
        datasets.load("cifar10", download=False)


def test_cifar10_label_count_mismatch(data_dir: Path) -> None:
    members, contents = _cifar_members()
    batch = dict(contents[cifar10.TEST_MEMBER])
    batch[b"labels"] = batch[b"labels"][:-1]
    members[cifar10.TEST_MEMBER] = pickle.dumps(batch, protocol=2)
    _write_tar(data_dir / cifar10.TARBALL, members)
    with pytest.raises(DataError, match="5 test images but 4 test labels"):
        datasets.load("cifar10", download=False)


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.02])
def test_cifar10_truncated_tarball(data_dir: Path, keep: float) -> None:
    members, _ = _cifar_members()
    path = _write_tar(data_dir / cifar10.TARBALL, members)
    packed = path.read_bytes()
    path.write_bytes(packed[: int(len(packed) * keep)])
    with pytest.raises(DataError, match=re.escape(str(path))):
        datasets.load("cifar10", download=False)


def test_cifar10_corrupt_tarball_is_a_data_error(data_dir: Path) -> None:
    members, _ = _cifar_members()
    path = _write_tar(data_dir / cifar10.TARBALL, members)
    packed = path.read_bytes()
    for start in range(40, len(packed) - 40, 97):
        broken = bytearray(packed)
        broken[start : start + 16] = bytes(b ^ 0xA5 for b in broken[start : start + 16])
        path.write_bytes(bytes(broken))
        try:
            datasets.load("cifar10", download=False)
        except DataError:
            pass  # what every unreadable file should give


def test_cifar10_download(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    members, contents = _cifar_members(n=2, seed=5)
    source = _write_tar(tmp_path / "upstream.tar.gz", members)
    monkeypatch.setattr(cifar10, "URL", source.as_uri())
    monkeypatch.setattr(cifar10, "SHA256", sha256(source.read_bytes()))
    raw = datasets.load("cifar10", download=True)
    assert raw.source == str(data_dir / cifar10.TARBALL)
    assert (data_dir / cifar10.TARBALL).read_bytes() == source.read_bytes()
    np.testing.assert_array_equal(raw.test_x, _chw(contents[cifar10.TEST_MEMBER][b"data"]))
    assert raw.train_x.shape == (10, 3, 32, 32)


# --------------------------------------------------------------------------------------------
# download


def test_download_writes_file_when_checksum_matches(tmp_path: Path) -> None:
    payload = os.urandom(5000)
    source = tmp_path / "source.bin"
    source.write_bytes(payload)
    dest = tmp_path / "out" / "nested" / "copy.bin"
    got = download(source.as_uri(), dest, sha256, sha256(payload))
    assert got == dest
    assert dest.read_bytes() == payload
    assert sorted(p.name for p in dest.parent.iterdir()) == ["copy.bin"]


def test_download_checks_what_digest_returns(tmp_path: Path) -> None:
    payload = b"the same data, compressed differently"
    source = tmp_path / "source.gz"
    source.write_bytes(gzip.compress(payload, compresslevel=1))
    dest = tmp_path / "out" / "copy.gz"

    def digest(b: bytes) -> str:
        return sha256(gzip.decompress(b))

    download(source.as_uri(), dest, digest, sha256(payload))
    assert gzip.decompress(dest.read_bytes()) == payload


def test_download_checksum_mismatch_leaves_nothing(tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(b"payload")
    dest = tmp_path / "out" / "copy.bin"
    wrong = sha256(b"something else")
    with pytest.raises(DataError, match="checksum mismatch") as info:
        download(source.as_uri(), dest, sha256, wrong)
    assert wrong in str(info.value) and sha256(b"payload") in str(info.value)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # no stray .part file


def test_download_mismatch_keeps_an_existing_file(tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(b"new")
    dest = tmp_path / "copy.bin"
    dest.write_bytes(b"old")
    with pytest.raises(DataError):
        download(source.as_uri(), dest, sha256, sha256(b"other"))
    assert dest.read_bytes() == b"old"
    assert not list(tmp_path.glob("*.part"))


def test_download_unreachable_url(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "file.bin"
    dest = tmp_path / "out" / "file.bin"
    with pytest.raises(DataError, match="cannot download") as info:
        download(missing.as_uri(), dest, sha256, sha256(b""))
    assert str(dest.parent) in str(info.value)  # says where to put it by hand
    assert not dest.exists()
    assert not list(dest.parent.glob("*"))


# --------------------------------------------------------------------------------------------
# RawDataset and splits

CLASSES = tuple("abcdefghij")


def _raw(n_train: int = 200, n_test: int = 30, seed: int = 0) -> RawDataset:
    """Images whose pixel [0, 0, 0] is their index in the training set; label = index % 10."""
    rng = np.random.default_rng(seed)
    train_x = rng.integers(0, 256, (n_train, 3, 4, 5), dtype=np.uint8)
    train_x[:, 1] //= 2  # different statistics per channel
    train_x[:, 2] = 255 - train_x[:, 2] // 4
    train_x[:, 0, 0, 0] = np.arange(n_train)
    test_x = rng.integers(0, 256, (n_test, 3, 4, 5), dtype=np.uint8)
    return RawDataset.checked(
        name="toy",
        train_x=train_x,
        train_y=np.arange(n_train) % 10,
        test_x=test_x,
        test_y=np.arange(n_test) % 10,
        classes=CLASSES,
        source="memory",
    )


def _ids(splits: datasets.Splits, part: Split) -> np.ndarray:
    """Recover the training-set index written into pixel [0, 0, 0]."""
    raw = part.x[:, 0, 0, 0].double().numpy() * splits.std[0] + splits.mean[0]
    return np.rint(raw * 255).astype(np.int64)


def test_raw_dataset_checked() -> None:
    raw = _raw(n_train=12, n_test=3)
    assert raw.train_y.dtype == raw.test_y.dtype == np.int64
    fields = dict(
        name="t", train_x=raw.train_x, train_y=raw.train_y, test_x=raw.test_x,
        test_y=raw.test_y, classes=CLASSES, source="src",
    )  # fmt: skip
    with pytest.raises(DataError, match="12 train images but 11 train labels"):
        RawDataset.checked(**{**fields, "train_y": raw.train_y[:-1]})
    with pytest.raises(DataError, match="test labels outside 0..9"):
        RawDataset.checked(**{**fields, "test_y": np.array([0, 10, 1])})
    with pytest.raises(DataError, match="uint8"):
        RawDataset.checked(**{**fields, "train_x": raw.train_x.astype(np.float32)})
    with pytest.raises(DataError, match="uint8"):
        RawDataset.checked(**{**fields, "test_x": raw.test_x[:, 0]})


def test_split_sizes_disjoint_and_covering() -> None:
    raw = _raw()
    s = split(raw, subset=1.0, split_seed=0)
    assert len(s.val) == 20 and len(s.train) == 180 and len(s.test) == 30
    train_ids, val_ids = _ids(s, s.train), _ids(s, s.val)
    assert not set(train_ids) & set(val_ids)
    assert sorted(np.concatenate([train_ids, val_ids]).tolist()) == list(range(200))
    # Labels travel with their images.
    np.testing.assert_array_equal(s.train.y.numpy(), train_ids % 10)
    np.testing.assert_array_equal(s.val.y.numpy(), val_ids % 10)
    np.testing.assert_array_equal(s.test.y.numpy(), raw.test_y)
    assert s.train.x.dtype == s.val.x.dtype == s.test.x.dtype == torch.float32
    assert s.train.y.dtype == torch.int64
    assert s.train.x.shape == (180, 3, 4, 5)
    assert s.in_channels == 3 and s.num_classes == 10
    assert s.classes == CLASSES and s.name == "toy" and s.source == "memory"


def test_split_is_fixed_by_split_seed() -> None:
    raw = _raw()
    a, b, c = (split(raw, split_seed=seed) for seed in (0, 0, 1))
    assert _ids(a, a.val).tolist() == _ids(b, b.val).tolist()
    assert _ids(a, a.train).tolist() == _ids(b, b.train).tolist()
    assert torch.equal(a.train.x, b.train.x)
    assert set(_ids(a, a.val)) != set(_ids(c, c.val))


def test_split_subset_is_part_of_the_full_training_split() -> None:
    raw = _raw()
    full = split(raw, subset=1.0, split_seed=3)
    half = split(raw, subset=0.5, split_seed=3)
    assert len(half.train) == 90
    assert _ids(half, half.val).tolist() == _ids(full, full.val).tolist()
    assert set(_ids(half, half.train)) < set(_ids(full, full.train))
    assert len(split(raw, subset=1e-6).train) == 1  # at least one image is kept


def _standardized_with(raw_x: np.ndarray, s: datasets.Splits) -> np.ndarray:
    mean = np.array(s.mean)[None, :, None, None]
    std = np.array(s.std)[None, :, None, None]
    return (raw_x.astype(np.float64) / 255.0 - mean) / std


@pytest.mark.parametrize("subset", [1.0, 0.5])
def test_split_standardizes_with_training_statistics(subset: float) -> None:
    raw = _raw()
    s = split(raw, subset=subset, split_seed=0)
    x = s.train.x.double().numpy()
    np.testing.assert_allclose(x.mean(axis=(0, 2, 3)), 0.0, atol=1e-4)
    np.testing.assert_allclose(x.std(axis=(0, 2, 3)), 1.0, atol=1e-4)
    # The statistics are those of the kept training images, in [0, 1] units.
    kept = raw.train_x[_ids(s, s.train)].astype(np.float64) / 255.0
    np.testing.assert_allclose(s.mean, kept.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(s.std, kept.std(axis=(0, 2, 3)), rtol=1e-5)
    assert len(set(np.round(s.mean, 3))) == 3  # the channels really differ
    # Validation and test sets use the same statistics.
    np.testing.assert_allclose(
        s.val.x.numpy(), _standardized_with(raw.train_x[_ids(s, s.val)], s), atol=1e-5
    )
    np.testing.assert_allclose(s.test.x.numpy(), _standardized_with(raw.test_x, s), atol=1e-5)
    # fill is where a raw 0 lands.
    np.testing.assert_allclose(
        s.fill.numpy(), _standardized_with(np.zeros((1, 3, 1, 1)), s).ravel(), rtol=1e-5
    )


@pytest.mark.parametrize("subset", [0.0, -0.1, 1.0001, 2.0])
def test_split_rejects_subset_out_of_range(subset: float) -> None:
    with pytest.raises(ConfigError, match="subset"):
        split(_raw(n_train=20), subset=subset)


def test_prepare_on_synthetic_fashion_mnist(data_dir: Path) -> None:
    _write_fashion(data_dir, n_train=50, n_test=20)
    s = datasets.prepare("fashion-mnist", subset=1.0, split_seed=0, download=False)
    assert (len(s.train), len(s.val), len(s.test)) == (45, 5, 20)
    assert s.train.x.shape == (45, 1, 28, 28) and s.in_channels == 1 and s.num_classes == 10


def test_unknown_dataset_name() -> None:
    with pytest.raises(ConfigError, match="fashion-mnist, cifar10"):
        datasets.load("mnist", download=False)


# --------------------------------------------------------------------------------------------
# augment


def _candidates(x: torch.Tensor, fill: torch.Tensor, shift: int):
    """Every translation of x by (dy, dx) in [-shift, shift]^2 (output[i, j] = x[i + dy, j + dx],
    `fill` where that is outside), unflipped and flipped: ([K, B, C, H, W], [(dy, dx, flip)])."""
    b, c, h, w = x.shape
    canvas = fill.view(1, c, 1, 1).expand(b, c, h + 2 * shift, w + 2 * shift).clone()
    canvas[:, :, shift : shift + h, shift : shift + w] = x
    images, keys = [], []
    for dy in range(-shift, shift + 1):
        for dx in range(-shift, shift + 1):
            moved = canvas[:, :, shift + dy : shift + dy + h, shift + dx : shift + dx + w]
            for flip in (False, True):
                images.append(moved.flip(-1) if flip else moved)
                keys.append((dy, dx, flip))
    return torch.stack(images), keys


def _identify(x: torch.Tensor, out: torch.Tensor, fill: torch.Tensor, shift: int):
    """The (dy, dx, flip) of each output image; fails if an image matches none or several."""
    images, keys = _candidates(x, fill, shift)
    match = (images == out.unsqueeze(0)).flatten(2).all(-1)  # [K, B]
    counts = match.sum(0)
    assert counts.tolist() == [1] * len(x), "some images are not a shifted/flipped input"
    return [keys[k] for k in match.int().argmax(0).tolist()]


def _distinct_images(b: int, c: int, h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(b * c * h * w, generator=g).float().view(b, c, h, w) / 7.0


@pytest.mark.parametrize("shift", [2, 1])
def test_augment_is_a_shift_and_maybe_a_flip(shift: int) -> None:
    x = _distinct_images(64, 3, 7, 9, seed=0)  # not square: rows and columns differ
    fill = torch.tensor([-1.5, -2.5, -3.5])  # per channel, unlike any pixel
    before = x.clone()
    out = augment(x, fill, torch.Generator().manual_seed(0), shift=shift)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(x, before)  # the input is left alone
    keys = _identify(x, out, fill, shift)
    assert all(abs(dy) <= shift and abs(dx) <= shift for dy, dx, _ in keys)
    assert len(set(keys)) > 10  # not one transform for all


def test_augment_borders_take_fill_per_channel() -> None:
    x = _distinct_images(200, 2, 6, 6, seed=1)
    fill = torch.tensor([-4.0, -9.0])
    out = augment(x, fill, torch.Generator().manual_seed(1), shift=2)
    for image, (dy, dx, flip) in zip(out, _identify(x, out, fill, 2), strict=True):
        image = image.flip(-1) if flip else image
        rows = [i for i in range(6) if not 0 <= i + dy < 6]
        cols = [j for j in range(6) if not 0 <= j + dx < 6]
        for ch, value in enumerate(fill.tolist()):
            assert (image[ch, rows, :] == value).all() and (image[ch, :, cols] == value).all()
            inside = image[ch, max(0, -dy) : 6 - max(0, dy), max(0, -dx) : 6 - max(0, dx)]
            assert (inside != value).all()


def test_augment_is_reproducible_from_the_generator() -> None:
    x = _distinct_images(32, 3, 8, 8, seed=2)
    fill = torch.zeros(3) - 1
    a = augment(x, fill, torch.Generator().manual_seed(7))
    b = augment(x, fill, torch.Generator().manual_seed(7))
    c = augment(x, fill, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    g = torch.Generator().manual_seed(7)
    first, second = augment(x, fill, g), augment(x, fill, g)
    assert torch.equal(first, a) and not torch.equal(second, a)  # the generator advances


def test_augment_statistics() -> None:
    x = _distinct_images(2000, 1, 6, 7, seed=3)
    fill = torch.tensor([-1.0])
    keys = _identify(x, augment(x, fill, torch.Generator().manual_seed(3)), fill, 2)
    flip_rate = sum(flip for _, _, flip in keys) / len(keys)
    assert abs(flip_rate - 0.5) <= 0.05
    shifts = {(dy, dx) for dy, dx, _ in keys}
    assert shifts == {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)}
    # Every shift occurs with and without a flip.
    assert {(dy, dx) for dy, dx, f in keys if f} == shifts
    assert {(dy, dx) for dy, dx, f in keys if not f} == shifts


# --------------------------------------------------------------------------------------------
# batches


def _toy_split(n: int = 23) -> Split:
    y = torch.arange(n)
    x = y.float().view(n, 1, 1, 1).expand(n, 2, 3, 3) * 10 + 0.5
    return Split(x.contiguous(), y)


def _check_pairs(xb: torch.Tensor, yb: torch.Tensor) -> None:
    assert torch.equal(xb, yb.float().view(-1, 1, 1, 1).expand(-1, 2, 3, 3) * 10 + 0.5)


def test_batches_shuffled_cover_the_data() -> None:
    data = _toy_split(23)
    got = list(batches(data, 5, torch.Generator().manual_seed(0)))
    assert [len(yb) for _, yb in got] == [5, 5, 5, 5, 3]
    for xb, yb in got:
        _check_pairs(xb, yb)
    order = torch.cat([yb for _, yb in got])
    assert sorted(order.tolist()) == list(range(23))
    assert order.tolist() != list(range(23))  # really shuffled
    again = torch.cat([yb for _, yb in batches(data, 5, torch.Generator().manual_seed(0))])
    assert torch.equal(order, again)
    other = torch.cat([yb for _, yb in batches(data, 5, torch.Generator().manual_seed(1))])
    assert not torch.equal(order, other)


def test_batches_drop_last() -> None:
    data = _toy_split(23)
    got = list(batches(data, 5, torch.Generator().manual_seed(0), drop_last=True))
    assert [len(yb) for _, yb in got] == [5, 5, 5, 5]
    seen = torch.cat([yb for _, yb in got]).tolist()
    assert len(set(seen)) == 20 and set(seen) <= set(range(23))
    # The dropped images are the tail of the same permutation.
    full = torch.cat([yb for _, yb in batches(data, 5, torch.Generator().manual_seed(0))])
    assert seen == full[:20].tolist()
    exact = list(batches(_toy_split(20), 5, torch.Generator().manual_seed(0), drop_last=True))
    assert [len(yb) for _, yb in exact] == [5, 5, 5, 5]


def test_batches_in_order_without_generator() -> None:
    data = _toy_split(23)
    got = list(batches(data, 4))
    assert [yb.tolist() for _, yb in got] == [
        list(range(i, min(i + 4, 23))) for i in range(0, 23, 4)
    ]
    for xb, yb in got:
        _check_pairs(xb, yb)
    kept = list(batches(data, 4, drop_last=True))
    assert torch.cat([yb for _, yb in kept]).tolist() == list(range(20))
    assert list(batches(data, 50, drop_last=True)) == []
