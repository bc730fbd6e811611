"""
The C{relaynat} command: tools around the three twistd roles, one
subcommand per module of L{relaynat.scripts}, parsed with argparse (so
options may come before or after the arguments, and C{--} ends them).

  relaynat list [--config client.toml] [--relay ENDPOINT --relay-key KEY
                 --user NAME --password-file FILE] [--json] [--timeout SECONDS]
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
1, each with one line on stderr (a usage error after the usage it broke).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, NoReturn, TextIO

import attrs
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import react

from relaynat import __version__
from relaynat.config import ConfigError
from relaynat.scripts import check, connect, fingerprint, keygen, passwd, secret, trust
from relaynat.scripts import list as list_
from relaynat.scripts.command import FAILURES, Subcommand, UsageError

#: Every subcommand, in the order C{relaynat --help} lists them.
SUBCOMMANDS: tuple[Subcommand[Any], ...] = (
    list_.SUBCOMMAND,
    keygen.SUBCOMMAND,
    fingerprint.SUBCOMMAND,
    trust.SUBCOMMAND,
    passwd.SUBCOMMAND,
    secret.SUBCOMMAND,
    check.SUBCOMMAND,
    connect.SUBCOMMAND,
)

_BY_NAME = {subcommand.name: subcommand for subcommand in SUBCOMMANDS}

_VERSION = f"relaynat {__version__}"


class _Parser(argparse.ArgumentParser):
    """
    A parser whose errors are raised as L{UsageError}, naming the command
    and carrying its usage, rather than printed before exiting: L{main}
    says every problem the same way, and tests can catch them.
    """

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.prog, self.format_usage())


@attrs.frozen
class Invocation:
    """A parsed command line: the subcommand, and its checked options."""

    subcommand: Subcommand[Any]
    options: Any

    @property
    def name(self) -> str:
        return self.subcommand.name


def parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The C{relaynat} parser, and each subcommand's parser by name."""
    top = _Parser(
        prog="relaynat",
        usage="relaynat SUBCOMMAND [options]",
        description="Tools around relaynat's three twistd roles (relay, skeleton, client).",
        epilog="'relaynat SUBCOMMAND --help' describes a subcommand's options.",
    )
    _addVersion(top)
    choices = top.add_subparsers(
        dest="subcommand",
        title="subcommands",
        metavar="SUBCOMMAND",
        prog="relaynat",
        parser_class=_Parser,
    )
    subparsers: dict[str, argparse.ArgumentParser] = {}
    for subcommand in SUBCOMMANDS:
        parser = choices.add_parser(
            subcommand.name,
            help=subcommand.summary,
            usage=f"relaynat {subcommand.name} {subcommand.synopsis}",
            description=subcommand.description,
        )
        _addVersion(parser)
        subcommand.define(parser)
        subparsers[subcommand.name] = parser
    return top, subparsers


def _addVersion(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--version", action="version", version=_VERSION, help="print relaynat's version and exit"
    )


def parse(argv: Sequence[str]) -> Invocation:
    """
    Parse a C{relaynat} command line (without the program's name); a
    L{UsageError} if it is wrong, a L{ConfigError} if a configuration file
    or flag it names is.  C{--help} and C{--version} print and exit.
    """
    top, subparsers = parsers()
    args, unknown = top.parse_known_args(list(argv))
    if args.subcommand is None:
        if unknown:
            top.error(f"unrecognized arguments: {' '.join(unknown)}")
        top.error(f"name a subcommand: {', '.join(_BY_NAME)}")
    parser = subparsers[args.subcommand]
    if unknown:
        # argparse leaves these for the top-level parser to refuse, whose
        # usage would not be the subcommand's.
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    subcommand = _BY_NAME[args.subcommand]
    try:
        return Invocation(subcommand, subcommand.read(args))
    except UsageError as e:
        raise UsageError(str(e), parser.prog, parser.format_usage()) from None


def runLocal(command: str, options: Any, out: TextIO, err: TextIO) -> int:
    """Run the subcommand C{command}, one that needs no reactor, with its C{options}; its exit status."""
    run = _BY_NAME[command].run
    assert run is not None, f"relaynat {command} runs in the reactor"
    try:
        run(options, out, err)
    except FAILURES as e:
        err.write(f"relaynat {command}: {e}\n")
        return 1
    except KeyboardInterrupt:
        err.write(f"\nrelaynat {command}: interrupted\n")
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    try:
        invocation = parse(sys.argv[1:] if argv is None else argv)
    except UsageError as e:
        sys.stderr.write(f"{e.usage}{e.command}: {e}\n")
        sys.exit(2)
    except ConfigError as e:
        # A configuration problem is said alone, one line for each: the
        # usage would not help.
        sys.stderr.write("".join(f"relaynat: {line}\n" for line in e.lines))
        sys.exit(2)
    subcommand = invocation.subcommand
    if subcommand.runInReactor is None:
        sys.exit(runLocal(subcommand.name, invocation.options, sys.stdout, sys.stderr))
    react(_inReactor, [subcommand.runInReactor, invocation.options])


def _inReactor(reactor: Any, run: Callable[..., Coroutine[Any, Any, int]], options: Any) -> Any:
    async def running() -> None:
        code = await run(reactor, options, sys.stdout, sys.stderr)
        if code:
            raise SystemExit(code)

    return ensureDeferred(running())


