"""
The C{relaynat} command: tools around the three twistd roles.

  relaynat list [--config client.toml] [--relay ENDPOINT] [--json]
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

from twisted.internet.defer import ensureDeferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.task import react
from twisted.python import usage

from relaynat import __version__
from relaynat.client import listServers
from relaynat.config import ConfigError, clientConfig, withFlags
from relaynat.tap.options import ConfigOptions, number


class ListOptions(ConfigOptions):
    synopsis = "[--config client.toml] [--relay ENDPOINT] [--json]"
    longdesc = "Print the servers the relay has available."
    optFlags = [["json", None, "print JSON instead of a table"]]
    optParameters = ConfigOptions.optParameters + [
        ["relay", None, None, "the relay's client endpoint (port X)"],
        ["timeout", None, 10.0, "seconds to wait for the relay", number("timeout", float)],
    ]

    def build(self) -> None:
        document, source = self.document()
        merged = withFlags(document, "client", {"relay": self["relay"]})
        self.client = clientConfig(merged, source, needTunnels=False)


class Options(usage.Options):
    synopsis = "relaynat COMMAND [options]"
    subCommands = [["list", None, ListOptions, "print the servers the relay has available"]]

    def opt_version(self) -> None:
        """Print the version and exit."""
        print(f"relaynat {__version__}")
        sys.exit(0)

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("name a command: list")


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
    return json.dumps(
        [{**s, "since_utc": _utc(s["since"])} for s in servers], indent=2
    ) + "\n"


def _printable(text: str) -> str:
    # A relay this version did not write may pass on anything.
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


async def _list(reactor: Any, options: ListOptions, out: TextIO) -> None:
    relay = clientFromString(reactor, options.client.relay)
    d = ensureDeferred(listServers(relay))
    d.addTimeout(options["timeout"], reactor)
    servers = await d
    out.write(formatJson(servers) if options["json"] else formatTable(servers))


def main(argv: list[str] | None = None) -> None:
    options = Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except (usage.UsageError, ConfigError) as e:
        sys.stderr.write(f"{options}\nrelaynat: {e}\n")
        sys.exit(2)

    def run(reactor: Any) -> Any:
        d = ensureDeferred(_list(reactor, options.subOptions, sys.stdout))

        def failed(f: Any) -> None:
            sys.stderr.write(f"relaynat list: cannot list servers: {f.getErrorMessage()}\n")
            raise SystemExit(1)

        return d.addErrback(failed)

    react(run)
