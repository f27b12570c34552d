"""Typed, user-facing errors.

Every mistake a user can make (a missing file, a stack that is not 2D + time, a model
whose input does not fit, an unwritable output) raises a subclass of `UnetrtError`
whose message is written for a microscopist. The CLI prints the message and exits
non-zero without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterable
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


def check_keys(
    data: object, what: str, known: Iterable[str], error: type[UnetrtError]
) -> dict[str, Any]:
    """Check the plain-JSON form of a settings object before building it.

    Args:
        data: The parsed JSON value.
        what: How messages name it, e.g. ``"model contract"``.
        known: The keys it may have.
        error: The error class to raise.

    Returns:
        ``data`` itself, now known to be a dict.

    Raises:
        error: If ``data`` is not a JSON object or has keys outside ``known`` (all
            named, with the valid ones).
    """
    if not isinstance(data, dict):
        raise error(f"{what} must be a JSON object, got {type(data).__name__} {data!r}")
    valid = sorted(known)
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise error(f"{what} has unknown keys: {', '.join(unknown)} (valid: {', '.join(valid)})")
    return data
