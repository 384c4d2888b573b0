"""Errors a user can act on: the CLI shows their message as one line, without a traceback."""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "Interrupted",
    "LockError",
    "ModelError",
    "SkinclsError",
    "TrainingError",
]


class SkinclsError(Exception):
    """Base class: the message says what went wrong and what to do about it."""


class ConfigError(SkinclsError):
    """A configuration file or option is invalid."""


class DataError(SkinclsError):
    """The dataset is missing, unreadable or inconsistent."""


class ModelError(SkinclsError):
    """A model cannot be built or its weights cannot be loaded."""


class CheckpointError(SkinclsError):
    """A checkpoint cannot be read, or is not a skincls checkpoint."""


class TrainingError(SkinclsError):
    """Training cannot go on, e.g. the loss or the weights became NaN or infinite (diverged)."""


class LockError(SkinclsError):
    """A data dir or run dir is in use by another skincls process."""


class Interrupted(KeyboardInterrupt):
    """A run was interrupted (Ctrl-C); the message says what was kept and how to go on.

    A `KeyboardInterrupt`, not a `SkinclsError`: `except Exception` must not swallow an interruption.
    """
