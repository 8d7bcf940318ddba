import dataclasses

import pytest
import torch

from stochnorm.data.digits import digits, unfamiliar_digits
from stochnorm.errors import ConfigError

pytest.importorskip("sklearn")


def test_digits_are_framed_as_mnist_frames_them():
    x, y = digits()
    assert x.shape == (1797, 1, 28, 28) and y.shape == (1797,)
    assert x.min() >= 0 and x.max() <= 1
    assert torch.equal(torch.unique(y), torch.arange(10))
    assert x[..., :4, :].abs().max() == 0 and x[..., -4:].abs().max() == 0  # black border
    # bright strokes on a dark background, as Fashion-MNIST's objects
    assert x.mean() < 0.5 and x.amax(dim=(1, 2, 3)).min() > 0.5


def test_unfamiliar_digits_are_standardized_like_the_data(tiny_fashion):
    found = unfamiliar_digits(tiny_fashion)
    x, _ = digits()
    assert torch.allclose(found.x * tiny_fashion.std[0] + tiny_fashion.mean[0], x, atol=1e-5)
    background = -tiny_fashion.mean[0] / tiny_fashion.std[0]
    assert found.x[0, 0, 0, 0].item() == pytest.approx(background, rel=1e-5)


def test_digits_refuse_data_of_another_shape(tiny_fashion):
    rgb = dataclasses.replace(
        tiny_fashion, train=dataclasses.replace(tiny_fashion.train, x=torch.zeros(2, 3, 32, 32))
    )
    with pytest.raises(ConfigError, match="28x28 grayscale"):
        unfamiliar_digits(rgb)
