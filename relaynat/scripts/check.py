"""
C{relaynat check --config FILE [--bind]}: check a relay's, a skeleton's or
a client's configuration and the files it names before the role runs on
it, as C{sshd -t} and C{nginx -t} do.

The file is read by the roles' one loader (L{relaynat.load}), so a file
that passes here is one the role accepts.  A file whose text is wrong stops
at its first problem (the loader stops there); once it is right, each named
file is read and every problem is said.
"""

from __future__ import annotations

from argparse import ArgumentParser, Namespace
from typing import Any, TextIO

import attrs
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol

from relaynat.config import ConfigError
from relaynat.load import LoadedClient, LoadedRelay, load, readConfig
from relaynat.scripts.command import Subcommand, UsageError

#: Listening endpoints C{--bind} tries: those that bind a port and nothing
#: else.  A C{unix:} one would leave or take over a socket file, a
#: C{systemd:} one exists only under systemd, an C{onion:} one starts Tor.
BINDABLE = ("tcp", "tcp6")


@attrs.frozen
class CheckOptions:
    """The role's file C{relaynat check} reads, and whether it also binds its ports."""

    config: str
    bind: bool = False


def define(parser: ArgumentParser) -> None:
    parser.add_argument("-c", "--config", metavar="FILE", help="the role's TOML configuration file")
    parser.add_argument(
        "--bind",
        action="store_true",
        help="also listen on each tcp: and tcp6: listening endpoint, and let go at once"
        " (fails while the role runs, since it holds them)",
    )


def read(args: Namespace) -> CheckOptions:
    if args.config is None:
        raise UsageError("give --config FILE: the configuration file to check")
    return CheckOptions(config=args.config, bind=args.bind)


async def checkCommand(reactor: Any, options: CheckOptions, out: TextIO, err: TextIO) -> int:
    """Run C{relaynat check}; its exit status."""
    path = options.config
    problems = await checkFile(reactor, path, options.bind)
    if problems:
        for problem in problems:
            err.write(f"{problem}\n")
        return 1
    out.write(f"{path}: ok\n")
    return 0


async def checkFile(reactor: Any, path: str, bind: bool = False) -> list[str]:
    """Every problem found with the role's file at C{path}, one line each."""
    try:
        loaded = load(*readConfig(path))
    except ConfigError as e:
        return e.lines
    listening: dict[str, str] = {}
    if isinstance(loaded, LoadedRelay):
        relay = loaded.config
        listening = {"relay.clients": relay.clients, "relay.skeletons": relay.skeletons}
        if relay.web is not None:
            listening["relay.web"] = relay.web
    elif isinstance(loaded, LoadedClient):
        listening = {f"tunnel[{i}].listen": t.listen for i, t in enumerate(loaded.config.tunnels)}
    problems = []
    if bind:
        for key, description in listening.items():
            problem = await tryListening(reactor, description)
            if problem is not None:
                problems.append(f"{path}: {key}: {problem}")
    return problems


async def tryListening(reactor: Any, description: str) -> str | None:
    """Listen on C{description} and stop at once; what went wrong, if anything."""
    if description.split(":", 1)[0] not in BINDABLE:
        return None
    try:
        port = await serverFromString(reactor, description).listen(Factory.forProtocol(Protocol))
    except Exception as e:
        return f"cannot listen on {description}: {e}"
    await port.stopListening()
    return None


SUBCOMMAND = Subcommand(
    name="check",
    summary="check a relay's, skeleton's or client's config and its files",
    synopsis="--config FILE [--bind]",
    description=(
        "Check a relay's, a skeleton's or a client's configuration FILE (told apart by"
        " its [relay], [skeleton] or [client] table) and the files it names: the"
        " relay's key against its certificate, the users file, the password and"
        " secret files (readable, and private). Prints 'FILE: ok', or one line per"
        " problem and exits with status 1."
    ),
    define=define,
    read=read,
    runInReactor=checkCommand,
)
