"""Shared fixtures: small real-data splits (Fashion-MNIST, installed by `make data`)."""

from __future__ import annotations

import dataclasses

import pytest

from stochnorm import data as datasets


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
