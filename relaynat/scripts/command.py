"""
What every C{relaynat} subcommand shares: how it is described to the
command line (L{Subcommand}), the errors that end it, and small checks of
the values it is given.
"""

from __future__ import annotations

import math
from argparse import ArgumentParser, Namespace
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TextIO, TypeVar

import attrs

from relaynat.identity import IdentityError
from relaynat.secret import SecretFileError
from relaynat.users import UsersFileError

OptionsT = TypeVar("OptionsT")


class UsageError(Exception):
    """
    The command line is wrong (exit status 2); the message says how.  The
    parser fills in the command it was given to (C{relaynat keygen}) and
    that command's usage, for the message to be shown with.
    """

    def __init__(self, message: str, command: str = "relaynat", usage: str = "") -> None:
        super().__init__(message)
        self.command = command
        self.usage = usage


class CommandFailed(Exception):
    """A command could not do its work; the message says why and what to do."""


#: What the commands raise for a failure the user can act on (exit status 1).
FAILURES = (CommandFailed, IdentityError, UsersFileError, SecretFileError)


@attrs.frozen
class Subcommand(Generic[OptionsT]):
    """
    One subcommand of C{relaynat}, as its module describes it: C{define}
    adds its arguments to its own parser, C{read} turns what was parsed
    into its checked options (raising L{UsageError}, or L{ConfigError} for
    a configuration file or flag that is wrong), and exactly one of C{run}
    (needs no reactor; raises one of L{FAILURES}) and C{runInReactor}
    (returns its exit status) does the work.
    """

    name: str
    #: One line for C{relaynat --help}.
    summary: str
    #: What follows C{relaynat NAME} in its usage line.
    synopsis: str
    description: str
    define: Callable[[ArgumentParser], None]
    read: Callable[[Namespace], OptionsT]
    run: Callable[[OptionsT, TextIO, TextIO], None] | None = None
    runInReactor: Callable[[Any, OptionsT, TextIO, TextIO], Coroutine[Any, Any, int]] | None = None

    def __attrs_post_init__(self) -> None:
        if (self.run is None) == (self.runInReactor is None):
            raise TypeError(f"subcommand {self.name}: give one of run and runInReactor")


def seconds(flag: str, value: str) -> float:
    """C{value}, the text of C{flag}, as a positive, finite number of seconds."""
    try:
        number = float(value)
    except ValueError:
        raise UsageError(f"{flag} must be a number, not {value!r}") from None
    if not (math.isfinite(number) and number > 0):
        raise UsageError(f"{flag} must be a positive number of seconds")
    return number


def describeOSError(error: OSError) -> str:
    """An C{OSError} as one line: the file, then what the system said."""
    return f"{error.filename}: {error.strerror}" if error.filename else str(error)
