"""Typed, user-facing errors.

Every mistake a user can make (a missing file, a stack that is not 2D + time, a model
whose input does not fit, an unwritable output) raises a subclass of `UnetrtError`
whose message is written for a microscopist. The CLI prints the message and exits
non-zero without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import Any


class UnetrtError(Exception):
    """Base class of every error meant to be shown to the user as is."""


class InputError(UnetrtError):
    """An input image or stack is missing, unreadable, truncated or of a shape we cannot use."""


class ModelError(UnetrtError):
    """A model file is missing, invalid, or does not fit the input it is given."""


class OutputError(UnetrtError):
    """An output cannot be written (bad path, no permission, disk full)."""


class ConfigError(UnetrtError):
    """An option, flag or configuration value is invalid."""


class MissingDependencyError(UnetrtError):
    """An optional dependency is needed; the message names the extra to install."""


def require(module: str, extra: str) -> Any:
    """Import an optional dependency lazily.

    Args:
        module: The module to import, e.g. ``"tensorflow"``.
        extra: The unetrt extra that installs it, e.g. ``"train"``.

    Returns:
        The imported module.

    Raises:
        MissingDependencyError: If the module is not installed.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module} is not installed; install it with: pip install 'unetrt[{extra}]'"
        ) from exc
