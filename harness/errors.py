"""Exceptions the harness raises on purpose, each with a message a user can act on."""

from __future__ import annotations


class HarnessError(Exception):
    """Base class: an error the CLI reports as one line, without a traceback."""


class UnknownNameError(HarnessError, KeyError):
    """A task or method name is not registered; the message suggests close matches."""

    def __str__(self) -> str:  # KeyError quotes its message; we do not want that
        return str(self.args[0]) if self.args else ""


def did_you_mean(name: str, known) -> str:
    """``"; did you mean 'a', 'b'?"`` for the up to three names in ``known`` closest to ``name``, else ``""``."""
    import difflib

    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(map(repr, close))}?" if close else ""


class DuplicateNameError(HarnessError):
    """Two registrations used the same name."""


class InvalidOutputError(HarnessError):
    """A method returned an output of the wrong type, shape or value range."""


class InvalidMetricError(HarnessError):
    """A task produced a metric that is NaN, infinite or not a number."""


class RecordError(HarnessError):
    """A result record file is corrupt, foreign or fails schema validation."""


class ConfigError(HarnessError):
    """A task or method configuration is invalid."""
