"""
What every C{relaynat} subcommand shares: its options' base class, the
failures that exit with status 1, and small helpers for arguments.
"""

from __future__ import annotations

import getopt
import sys

from twisted.python import usage

from relaynat import __version__
from relaynat.identity import (
    IdentityError,
)
from relaynat.secret import SecretFileError
from relaynat.users import (
    UsersFileError,
)


class CommandFailed(Exception):
    """A command could not do its work; the message says why and what to do."""


#: What the commands raise for a failure the user can act on (exit status 1).
FAILURES = (CommandFailed, IdentityError, UsersFileError, SecretFileError)


class Command(usage.Options):
    """
    A subcommand's options.  Its usage line names the subcommand itself
    (C{Usage: relaynat trust URL ...}), not the parent's synopsis with the
    subcommand pasted after it; and options may come after the arguments,
    as in C{relaynat keygen DIR --name NAME}, where stock L{usage.Options}
    would stop at the first argument (it reads with C{getopt.getopt}).
    """

    #: What follows C{relaynat NAME} in the usage line.
    synopsis = ""

    def getSynopsis(self) -> str:
        name = getattr(self.parent, "subCommand", None) or "COMMAND"
        return f"Usage: relaynat {name} {self.synopsis}".rstrip()

    def parseOptions(self, options: list[str] | None = None) -> None:
        argv = sys.argv[1:] if options is None else options
        if len(argv) > 1 and argv[-2] == "--_shell-completion":
            # The stock parser answers shell completion itself.
            return super().parseOptions(argv)
        try:
            pairs, args = getopt.gnu_getopt(argv, self.shortOpt, self.longOpt)
        except getopt.GetoptError as e:
            raise usage.UsageError(str(e)) from e
        # Put the options first, each value after its option and the
        # arguments after "--", for the stock parser to read as it always has.
        taking = {"--" + name[:-1] for name in self.longOpt if name.endswith("=")}
        taking |= {
            "-" + letter
            for letter in self.shortOpt.replace(":", "")
            if f"{letter}:" in self.shortOpt
        }
        ordered: list[str] = []
        for name, value in pairs:
            ordered += [name, value] if name in taking else [name]
        super().parseOptions([*ordered, "--", *args])

    def opt_version(self) -> None:
        """Print relaynat's version and exit."""
        print(f"relaynat {__version__}")
        raise SystemExit(0)


def arguments(args: tuple[str, ...], *names: str) -> tuple[str, ...]:
    """C{args}, if there is one for each of C{names}; a usage error naming them if not."""
    if len(args) != len(names):
        raise usage.UsageError(f"expected {' '.join(names)}, got {len(args)} argument(s)")
    return args


def describeOSError(error: OSError) -> str:
    """An C{OSError} as one line: the file, then what the system said."""
    return f"{error.filename}: {error.strerror}" if error.filename else str(error)
