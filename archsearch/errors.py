"""Errors raised for bad user input.

The CLI prints an :class:`ArchsearchError` as one line and exits with status 2; anything else is a bug
and keeps its traceback.
"""
from __future__ import annotations

__all__ = ["ArchsearchError", "ConfigError", "InvalidSample", "MeasurementError", "NothingToReport", "mask_secrets"]


import re

#: The password of a URL's user-info: it ends at the authority's '@' and never spans a '/' (``http://h:1/u:p@x``
#: has no user-info: its '@' is in the path).
_PASSWORD_IN_URL = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)(?P<secret>[^@\s/]+)(?P<tail>@)")


#: A secret in a URL's query string: ``?password=...``, ``&token=...`` (libpq, HTTP APIs).
_SECRET_IN_QUERY = re.compile(r"(?P<head>[?&;](?:password|passwd|pwd|token|access_token|api_key|apikey|secret|"
                              r"client_secret|sslpassword)=)(?P<secret>[^&#\s'\"]+)", re.IGNORECASE)


def mask_secrets(text: str) -> str:
    """``postgresql://user:S3cret@host/db`` -> ``postgresql://user:***@host/db`` (and ``?password=S3cret`` ->
    ``?password=***``) wherever it occurs in ``text``.

    Storage and tracking URLs appear in messages, log lines, MLflow tags and study attributes; none of
    them may show a password or token.
    """
    text = _PASSWORD_IN_URL.sub(lambda m: f"{m['head']}***{m['tail']}", str(text))
    return _SECRET_IN_QUERY.sub(lambda m: f"{m['head']}***", text)


class ArchsearchError(Exception):
    """Base class for errors caused by input (files, YAML, names, values), not by archsearch itself."""

    #: The command line's exit status for it: 2, bad input.
    exit_code = 2


class ConfigError(ArchsearchError, ValueError):
    """A value or key in a spec, space or experiment file is wrong; ``key`` is its full path."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}" if key else message)

    def under(self, prefix: str) -> "ConfigError":
        """The same error seen from a parent: ``width`` becomes ``stages[2].width``."""
        if not prefix:
            return self
        if not self.key:
            return ConfigError(prefix, self.message)
        sep = "" if self.key.startswith("[") else "."
        return ConfigError(f"{prefix}{sep}{self.key}", self.message)


class InvalidSample(ArchsearchError):
    """A point drawn from a search space breaks one of the space's rules; ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class MeasurementError(ArchsearchError):
    """A measurement produced no usable number (a NaN: a training that diverged, a timing that failed); it is
    neither cached nor stored, and a search fails the trial with this message."""


class NothingToReport(ArchsearchError):
    """A report or a front of a study that has no complete trial: nothing is written (exit 1, as for a search
    run that completed no trial)."""

    exit_code = 1
