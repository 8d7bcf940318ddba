"""Models by name: the registry that `TrainConfig.model` and `stochnorm train --model` use.

A registered model is built with stochnorm's normalization `norm` after every conv/linear
layer. Any other model comes from a user's factory named `package.module:function`: it is
called as `function(in_channels=C, num_classes=K)`, returns an `nn.Module` whose output is
logits (or log-probabilities) and whose conv/linear layers are followed by batch norm, and
`stochnorm.convert` swaps those for `norm`. Every model returns log-probabilities.
"""

from __future__ import annotations

import importlib
import re
from collections import OrderedDict
from collections.abc import Callable

from torch import nn

from ..convert import convert
from ..errors import ConfigError
from ..norms import DEFAULT_GROUPS, Norm
from .allcnn import AllCNN
from .fcn import FCN
from .resnet import ResNet, resnet20

# name -> builder(in_channels, num_classes, *, norm, width, padding, groups)
MODELS: dict[str, Callable[..., nn.Module]] = {
    "allcnn": lambda c, k, *, padding, **options: AllCNN(c, k, padding=padding, **options),
    "resnet20": lambda c, k, *, padding, **options: (
        _no_padding("resnet20", padding) or resnet20(c, k, **options)
    ),
    "fcn": lambda c, k, *, padding, **options: _no_padding("fcn", padding) or FCN(c, k, **options),
}
SEGMENTATION_MODELS = ("fcn",)  # registered models that predict a class per pixel
DEFAULT_PADDING = 1  # All-CNN-C's; the only value other models accept

_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def _no_padding(name: str, padding: int) -> None:
    if padding != DEFAULT_PADDING:
        raise ConfigError(f"padding sets All-CNN-C's convs; {name} takes no padding option")


def check_model_name(name: str) -> str:
    """`name` if it is a registered model or has the form package.module:function, else a
    ConfigError that says which names exist."""
    if name in MODELS or _FACTORY.match(name):
        return name
    raise ConfigError(
        f"unknown model {name!r}; choose one of: {', '.join(MODELS)}, or name your own "
        "factory as package.module:function"
    )


def load_factory(name: str) -> Callable[..., nn.Module]:
    """The function that `package.module:function` names."""
    module_name, _, function = check_model_name(name).partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"model {name!r}: cannot import {module_name} ({exc})") from None
    factory = getattr(module, function, None)
    if not callable(factory):
        raise ConfigError(f"model {name!r}: {module_name} has no function {function}")
    return factory


def factory_name(factory: Callable[..., nn.Module]) -> str:
    """The name `package.module:function` under which `load_factory` finds `factory` again
    (so that a run's config.json rebuilds its model); a factory it cannot find that way (a
    lambda, a nested function, one defined in __main__) is a ConfigError."""
    name = f"{getattr(factory, '__module__', '')}:{getattr(factory, '__qualname__', '')}"
    if not _FACTORY.match(name) or name.startswith("__main__:"):
        raise ConfigError(
            f"{factory!r} is not importable as package.module:function; define it at the top "
            "level of a module so that a saved run can rebuild its model"
        )
    if load_factory(name) is not factory:
        raise ConfigError(f"{name} does not name {factory!r}")
    return name


def build(
    name: str,
    in_channels: int,
    num_classes: int,
    *,
    norm: str | Norm = Norm.BATCH,
    width: float = 1.0,
    padding: int = DEFAULT_PADDING,
    groups: int = DEFAULT_GROUPS,
) -> nn.Module:
    """The untrained model `name` (PyTorch's default initialization) for inputs with
    `in_channels` channels and `num_classes` classes, normalized by `norm`. `width` and
    `padding` apply to registered models; a user's factory sets its own sizes."""
    norm = Norm.parse(norm)
    if name in MODELS:
        return MODELS[name](in_channels, num_classes, norm=norm, width=width, padding=padding,
                            groups=groups)  # fmt: skip
    _no_padding(name, padding)
    net = load_factory(name)(in_channels=in_channels, num_classes=num_classes)
    if not isinstance(net, nn.Module):
        raise ConfigError(
            f"model {name!r}: the factory returned {type(net).__name__}, not an nn.Module"
        )
    model = nn.Sequential(OrderedDict(net=net, log_softmax=nn.LogSoftmax(dim=1)))
    return convert(model, norm, groups=groups)


__all__ = [
    "MODELS", "SEGMENTATION_MODELS", "FCN", "AllCNN", "ResNet", "build", "check_model_name", "factory_name", "load_factory",
    "resnet20",
]  # fmt: skip
