"""
The C{relaynat} command: tools around the three twistd roles.

  relaynat list [--config client.toml] [--relay ENDPOINT --relay-key KEY
                 --user NAME --password-file FILE] [--json]
  relaynat keygen DIR --name NAME [--name NAME]... [--force]
  relaynat fingerprint FILE
  relaynat trust URL --out FILE [--expect FINGERPRINT] [--force] [--timeout SECONDS]
  relaynat passwd FILE USER [--register IDS] [--join IDS]
                            [--password-file F | --keep-password]
  relaynat passwd FILE USER --delete
  relaynat secret FILE [--force]

The commands but C{list} live in L{relaynat.tools}.  A usage error exits
with status 2, a failure with status 1, each with one line on stderr.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import react
from twisted.python import usage

from relaynat import __version__
from relaynat.client import listServers
from relaynat.config import ConfigError, clientConfig, withFlags
from relaynat.link import linkFromConfig
from relaynat.tap.access import ACCESS_PARAMETERS, AccessOptions
from relaynat.tap.options import ConfigOptions, number
from relaynat.tools import (
    FAILURES,
    LOCAL_COMMANDS,
    FingerprintOptions,
    KeygenOptions,
    PasswdOptions,
    SecretOptions,
    TrustOptions,
    trust,
)


class ListOptions(AccessOptions):
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


class Options(usage.Options):
    synopsis = "relaynat COMMAND [options]"
    subCommands: list[list[Any]] = [
        ["list", None, ListOptions, "print the servers the relay has available"],
        ["keygen", None, KeygenOptions, "create the relay's key and certificate"],
        ["fingerprint", None, FingerprintOptions, "print the fingerprint of a key or certificate"],
        ["trust", None, TrustOptions, "download, check and save the relay's certificate"],
        ["passwd", None, PasswdOptions, "add, change or delete a user of the relay"],
        ["secret", None, SecretOptions, "create a secret file for one server"],
    ]

    def opt_version(self) -> None:
        """Print the version and exit."""
        print(f"relaynat {__version__}")
        sys.exit(0)

    def postOptions(self) -> None:
        if self.subCommand is None:
            names = ", ".join(command[0] for command in self.subCommands)
            raise usage.UsageError(f"name a command: {names}")


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
    link = linkFromConfig(options.client.access, reactor)
    d = ensureDeferred(listServers(link))
    d.addTimeout(options["timeout"], reactor)
    servers = await d
    out.write(formatJson(servers) if options["json"] else formatTable(servers))


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


async def runTrust(
    reactor: Any, options: TrustOptions, out: TextIO, err: TextIO, terminal: TextIO | None = None
) -> int:
    """Run C{relaynat trust}, asking at C{terminal} if it is given; its exit status."""
    try:
        await trust(reactor, options, out, err, terminal)
    except FAILURES as e:
        err.write(f"relaynat trust: {e}\n")
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
        sys.stderr.write(("" if configProblem else f"{options}\n") + f"relaynat: {e}\n")
        sys.exit(2)

    command = options.subCommand
    if command in LOCAL_COMMANDS:
        sys.exit(runLocal(command, options.subOptions, sys.stdout, sys.stderr))
    react(_trusting if command == "trust" else _listing, [options.subOptions])


def _trusting(reactor: Any, options: TrustOptions) -> Any:
    async def trusting() -> None:
        terminal = sys.stdin if sys.stdin is not None and sys.stdin.isatty() else None
        code = await runTrust(reactor, options, sys.stdout, sys.stderr, terminal)
        if code:
            raise SystemExit(code)

    return ensureDeferred(trusting())


def _listing(reactor: Any, options: ListOptions) -> Any:
    d = ensureDeferred(_list(reactor, options, sys.stdout))

    def failed(f: Any) -> None:
        sys.stderr.write(f"relaynat list: cannot list servers: {f.getErrorMessage()}\n")
        raise SystemExit(1)

    return d.addErrback(failed)
