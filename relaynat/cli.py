"""
The C{relaynat} command: tools around the three twistd roles, one
subcommand per module of L{relaynat.scripts}.

  relaynat list [--config client.toml] [--relay ENDPOINT --relay-key KEY
                 --user NAME --password-file FILE] [--json]
  relaynat keygen DIR --name NAME [--name NAME]... [--force]
  relaynat fingerprint FILE
  relaynat trust URL --out FILE [--expect FINGERPRINT] [--force] [--timeout SECONDS]
  relaynat passwd FILE USER [--register IDS] [--join IDS]
                            [--password-file F | --keep-password]
  relaynat passwd FILE USER --delete
  relaynat secret FILE [--force]
  relaynat check --config FILE [--bind]
  relaynat connect [--config client.toml] [--secret FILE] SERVER

A usage or configuration error exits with status 2, a failure with status
1, each with one line on stderr.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Coroutine
from typing import Any, TextIO

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import react
from twisted.python import usage

from relaynat import __version__
from relaynat.config import ConfigError
from relaynat.scripts.check import CheckOptions, checkCommand
from relaynat.scripts.command import FAILURES
from relaynat.scripts.connect import ConnectOptions, connectCommand
from relaynat.scripts.fingerprint import FingerprintOptions, printFingerprint
from relaynat.scripts.keygen import KeygenOptions, keygen
from relaynat.scripts.list import ListOptions, listCommand
from relaynat.scripts.passwd import PasswdOptions, passwd
from relaynat.scripts.secret import SecretOptions, secret
from relaynat.scripts.trust import TrustOptions, trustCommand

#: The commands that need no reactor, by name: each raises one of
#: L{FAILURES} when it cannot do its work.
LOCAL_COMMANDS: dict[str, Callable[[Any, TextIO, TextIO], None]] = {
    "keygen": keygen,
    "fingerprint": printFingerprint,
    "passwd": passwd,
    "secret": secret,
}

#: The commands that run in the reactor, by name: each returns its exit status.
REACTOR_COMMANDS: dict[str, Callable[[Any, Any, TextIO, TextIO], Coroutine[Any, Any, int]]] = {
    "list": listCommand,
    "trust": trustCommand,
    "check": checkCommand,
    "connect": connectCommand,
}


class Options(usage.Options):
    synopsis = "Usage: relaynat COMMAND [options]"
    subCommands: list[list[Any]] = [
        ["list", None, ListOptions, "print the servers the relay has available"],
        ["keygen", None, KeygenOptions, "create the relay's key and certificate"],
        ["fingerprint", None, FingerprintOptions, "print the fingerprint of a key or certificate"],
        ["trust", None, TrustOptions, "download, check and save the relay's certificate"],
        ["passwd", None, PasswdOptions, "add, change or delete a user of the relay"],
        ["secret", None, SecretOptions, "create a secret file for one server"],
        ["check", None, CheckOptions, "check a relay's, skeleton's or client's config and its files"],
        ["connect", None, ConnectOptions, "carry stdin and stdout through one tunnel (ssh ProxyCommand)"],
    ]

    def opt_version(self) -> None:
        """Print the version and exit."""
        print(f"relaynat {__version__}")
        sys.exit(0)

    def postOptions(self) -> None:
        if self.subCommand is None:
            names = ", ".join(command[0] for command in self.subCommands)
            raise usage.UsageError(f"name a command: {names}")


def runLocal(command: str, options: usage.Options, out: TextIO, err: TextIO) -> int:
    """Run one of the commands that need no reactor; its exit status."""
    try:
        LOCAL_COMMANDS[command](options, out, err)
    except FAILURES as e:
        err.write(f"relaynat {command}: {e}\n")
        return 1
    except KeyboardInterrupt:
        err.write(f"\nrelaynat {command}: interrupted\n")
        return 1
    return 0


def main(argv: list[str] | None = None) -> None:
    options = Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except (usage.UsageError, ConfigError) as e:
        # A configuration problem is said alone; the usage text only helps
        # when the command line itself is wrong.
        configProblem = isinstance(e, ConfigError) or isinstance(e.__cause__, ConfigError)
        shown = options.subOptions if getattr(options, "subOptions", None) else options
        sys.stderr.write(("" if configProblem else f"{shown}\n") + f"relaynat: {e}\n")
        sys.exit(2)

    command = options.subCommand
    assert command is not None
    if command in LOCAL_COMMANDS:
        sys.exit(runLocal(command, options.subOptions, sys.stdout, sys.stderr))
    react(_inReactor, [REACTOR_COMMANDS[command], options.subOptions])


def _inReactor(reactor: Any, run: Callable[..., Coroutine[Any, Any, int]], options: Any) -> Any:
    async def running() -> None:
        code = await run(reactor, options, sys.stdout, sys.stderr)
        if code:
            raise SystemExit(code)

    return ensureDeferred(running())
