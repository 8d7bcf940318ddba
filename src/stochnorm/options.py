"""String options validated where they enter (CLI, factories), enum members past that."""

from __future__ import annotations

from enum import Enum

from .errors import ConfigError


class Option(str, Enum):
    """A named choice; `parse` turns a string into a member or raises a ConfigError that
    lists the choices."""

    @classmethod
    def parse(cls, name: str | Option):
        try:
            return cls(name)
        except ValueError:
            choices = ", ".join(member.value for member in cls)
            raise ConfigError(
                f"unknown {cls.__name__.lower()} {name!r}; choose one of: {choices}"
            ) from None
