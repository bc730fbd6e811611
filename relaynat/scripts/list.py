"""
C{relaynat list [--config client.toml] [--relay ENDPOINT --relay-key KEY
--user NAME --password-file FILE] [--json]}: the servers a user may join.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, TextIO

from twisted.internet.defer import ensureDeferred

from relaynat.client import listServers
from relaynat.config import clientConfig, withFlags
from relaynat.link import linkFromConfig
from relaynat.scripts.command import Command
from relaynat.tap.access import ACCESS_PARAMETERS, AccessOptions
from relaynat.tap.options import ConfigOptions, number


class ListOptions(Command, AccessOptions):
    synopsis = "[--config client.toml] [--relay ENDPOINT --relay-key KEY --user NAME --password-file FILE] [--json]"
    longdesc = "Log in to the relay and print the servers this user may join."
    optFlags = [["json", None, "print JSON instead of a table"]]
    optParameters = ConfigOptions.optParameters + ACCESS_PARAMETERS + [
        ["relay", None, None, "the relay's client endpoint (port X)"],
        ["timeout", None, 10.0, "seconds to wait for the relay", number("timeout", float)],
    ]

    def build(self) -> None:
        document, source = self.document()
        flags = {"relay": self["relay"], **self.accessFlags()}
        # The tunnels' secrets are not needed to list.
        merged = {k: v for k, v in withFlags(document, "client", flags).items() if k != "tunnel"}
        self.client = clientConfig(merged, source, needTunnels=False)


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
    link = linkFromConfig(options.client.access, reactor)
    d = ensureDeferred(listServers(link))
    d.addTimeout(options["timeout"], reactor)
    try:
        servers = await d
    except Exception as e:
        err.write(f"relaynat list: cannot list servers: {e}\n")
        return 1
    out.write(formatJson(servers) if options["json"] else formatTable(servers))
    return 0
