"""Errors a user can cause and fix.

The CLI catches :class:`ReslabError` at the edge and prints it as one line on stderr with exit
code 2; anything else is an internal bug and keeps its traceback.
"""

from __future__ import annotations


class ReslabError(Exception):
    """A problem with the user's input; the message says what is wrong and what to do."""


class ModelError(ReslabError, ValueError):
    """Unknown model name, invalid depth or option."""


class ConfigError(ReslabError, ValueError):
    """An invalid configuration value, config file or command-line flag."""


class DataError(ReslabError):
    """Missing, truncated or malformed data, or a failed checksum."""


class CheckpointError(ReslabError):
    """A weights or checkpoint file that cannot be read or does not fit the model."""


class UnsafePickleError(CheckpointError, DataError):
    """A pickle that asks to import or call something other than plain data."""


class ArgumentError(ReslabError, TypeError):
    """A function of the Python API was called with an argument of the wrong type or kind."""
