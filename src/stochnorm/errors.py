"""Errors a user can act on: the CLI prints their message on one line and exits non-zero."""


class StochnormError(Exception):
    """Bad input or a missing resource; the message says what is wrong and how to fix it."""


class DataError(StochnormError):
    """A dataset file is missing, truncated or corrupt."""


class ConfigError(StochnormError):
    """A training or evaluation option is out of range or inconsistent."""


class RunDirError(StochnormError):
    """A path given as a run directory is not one (no config.json / checkpoint)."""
