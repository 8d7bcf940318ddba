"""Normalization layers and the one factory that maps a name to a layer.

Every normalization computes main paper eq. (2), `(w·x - mu(w)) / sigma(w) * s + b`, for
the conv/linear unit in front of it; they differ in `mu` and `sigma` only.
"""

from __future__ import annotations

from enum import Enum

from torch import nn

from .errors import ConfigError


class Norm(str, Enum):
    """Normalization placed after every conv/linear layer."""

    NONE = "none"  # plain network (optionally with data-dependent initialization)
    BATCH = "batch"  # batch normalization: mu, sigma over the batch and spatial positions

    @classmethod
    def parse(cls, name: str | Norm) -> Norm:
        try:
            return cls(name)
        except ValueError:
            choices = ", ".join(n.value for n in cls)
            raise ConfigError(f"unknown norm {name!r}; choose one of: {choices}") from None


def make_norm(norm: str | Norm, num_features: int, *, device=None, dtype=None) -> nn.Module:
    """The normalization layer `norm` for `num_features` channels, with affine s, b."""
    norm = Norm.parse(norm)
    if norm is Norm.NONE:
        return nn.Identity()
    return nn.BatchNorm2d(num_features, device=device, dtype=dtype)


def needs_bias(norm: str | Norm) -> bool:
    """Whether the conv/linear before `norm` needs its own bias (any mean-subtracting
    normalization makes it redundant)."""
    return Norm.parse(norm) is Norm.NONE
