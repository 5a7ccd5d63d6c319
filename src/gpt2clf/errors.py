"""User-facing errors.

Every mistake a user can make (a bad path, a malformed file, an out-of-range option, a
broken model folder) raises a subclass of :class:`UserError` with a one-line message that
names the problem and what to do. The command line turns these into a message on stderr
and exit code 2; library users can catch them like any other exception.
"""

from __future__ import annotations

__all__ = ["ConfigError", "DataError", "ModelLoadError", "PerformanceWarning", "SecurityWarning", "UserError",
           "first_line"]


class UserError(Exception):
    """A problem with the user's input, not a bug in gpt2clf."""


class ConfigError(UserError, ValueError):
    """An unknown key, wrong type or out-of-range value in the configuration."""


class DataError(UserError, ValueError):
    """A dataset that is missing, malformed or unusable."""


class ModelLoadError(UserError, OSError):
    """A backbone, tokenizer or saved model folder that cannot be loaded."""


class PerformanceWarning(UserWarning):
    """A setting that works, but runs far slower on this machine than another would."""


class SecurityWarning(UserWarning):
    """A setting that works, but leaves open what is closed by default (e.g. a server without a key)."""


def first_line(err: BaseException) -> str:
    """An exception as one short line, for embedding in one-line error messages."""
    lines = str(err).strip().splitlines()
    return (lines[0] if lines else type(err).__name__)[:200]
