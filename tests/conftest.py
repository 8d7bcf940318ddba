"""Shared fixtures: small real-data splits (Fashion-MNIST, installed by `make data`) and
every experiment reproduced once in its demo profile on tiny settings."""

from __future__ import annotations

import contextlib
import dataclasses
import io

import pytest

from stochnorm import data as datasets
from stochnorm.cli import main


@pytest.fixture(scope="session")
def fashion_mnist() -> datasets.Splits:
    """The real Fashion-MNIST splits (whole)."""
    if datasets.fashion_mnist.locate() is None:
        pytest.fail("Fashion-MNIST is missing: run `make data` (CI installs it)")
    return datasets.prepare("fashion-mnist")


@pytest.fixture(scope="session")
def tiny_fashion(fashion_mnist: datasets.Splits) -> datasets.Splits:
    """256 training, 200 validation and 200 test images of Fashion-MNIST."""
    return dataclasses.replace(
        fashion_mnist,
        train=fashion_mnist.train.head(256),
        val=fashion_mnist.val.head(200),
        test=fashion_mnist.test.head(200),
    )


# the settings of the demo reproduction that the reproduce and report tests share
REPRODUCE_TINY = ["--width", "0.1", "--subset", "0.005", "--epochs", "2", "--eval-train-size", "50",
        "--eval-size", "500", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="session")
def reproduced(tmp_path_factory):
    """Every experiment reproduced once into one output directory (runs they share are
    trained once), and what the command printed; each test that reads them can run alone."""
    out = tmp_path_factory.mktemp("reproduce")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert (
            main(["reproduce", "all", "--profile", "demo", "--out", str(out), *REPRODUCE_TINY]) == 0
        )
    return out, printed.getvalue()


@pytest.fixture
def shared_out(reproduced):
    return reproduced[0]
