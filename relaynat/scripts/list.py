"""
C{relaynat list [--config client.toml] [--relay ENDPOINT --relay-key KEY
--user NAME --password-file FILE] [--json] [--timeout SECONDS]}: the
servers a user may join.
"""

from __future__ import annotations

import json
from argparse import ArgumentParser, Namespace
from datetime import datetime, timezone
from typing import Any, TextIO

import attrs
from twisted.internet.defer import ensureDeferred

from relaynat.client import listServers
from relaynat.load import LoadedAccess
from relaynat.scripts.access import defineAccess, loadedClient
from relaynat.scripts.command import Subcommand, seconds


@attrs.frozen
class ListOptions:
    """What C{relaynat list} was told: how to log in, and how to print."""

    access: LoadedAccess
    json: bool = False
    timeout: float = 10.0


def define(parser: ArgumentParser) -> None:
    defineAccess(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        default="10",
        help="seconds to wait for the relay (default: %(default)s)",
    )


def read(args: Namespace) -> ListOptions:
    return ListOptions(
        access=loadedClient(args).access,
        json=args.json,
        timeout=seconds("--timeout", args.timeout),
    )


def formatTable(servers: list[dict[str, Any]]) -> str:
    """The server list as an aligned text table."""
    rows = [("ID", "DESCRIPTION", "ONLINE SINCE (UTC)", "IDLE")]
    for s in servers:
        rows.append((_printable(s["id"]), _printable(s["description"]), _utc(s["since"]), str(s["idle"])))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    if not servers:
        lines.append("(no servers are available)")
    return "\n".join(lines) + "\n"


def formatJson(servers: list[dict[str, Any]]) -> str:
    """The server list as JSON, each server's time also in UTC."""
    return json.dumps(
        [{**s, "since_utc": _utc(s["since"])} for s in servers], indent=2
    ) + "\n"


def _printable(text: str) -> str:
    # A relay this version did not write may pass on anything.
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


async def listCommand(reactor: Any, options: ListOptions, out: TextIO, err: TextIO) -> int:
    """Run C{relaynat list}; its exit status."""
    link = options.access.link(reactor)
    d = ensureDeferred(listServers(link))
    d.addTimeout(options.timeout, reactor)
    try:
        servers = await d
    except Exception as e:
        err.write(f"relaynat list: cannot list servers: {e}\n")
        return 1
    out.write(formatJson(servers) if options.json else formatTable(servers))
    return 0


SUBCOMMAND = Subcommand(
    name="list",
    summary="print the servers the relay has available",
    synopsis=(
        "[--config client.toml] [--relay ENDPOINT --relay-key KEY --user NAME"
        " --password-file FILE] [--json] [--timeout SECONDS]"
    ),
    description="Log in to the relay and print the servers this user may join.",
    define=define,
    read=read,
    runInReactor=listCommand,
)
