"""
The flags C{relaynat list} and C{relaynat connect} log in to the relay
with, as C{twistd client} spells them (L{relaynat.tap.access}): a client's
configuration file, and the flags laid over it.
"""

from __future__ import annotations

from argparse import ArgumentParser, Namespace
from typing import Any

from relaynat.config import readToml
from relaynat.scripts.command import absolutePath
from relaynat.tap.access import ACCESS_PARAMETERS

#: What each of the access flags takes, for the usage text.
_VALUES = {
    "relay-key": "KEY",
    "relay-verify": "HOW",
    "relay-ca": "FILE",
    "relay-name": "NAME",
    "user": "NAME",
    "password-file": "FILE",
}


def defineAccess(parser: ArgumentParser) -> None:
    """Add C{--config}, C{--relay} and the client's access flags to C{parser}."""
    parser.add_argument(
        "-c", "--config", metavar="FILE", help="the client's TOML configuration file (flags override it)"
    )
    parser.add_argument("--relay", metavar="ENDPOINT", help="the relay's client endpoint (port X)")
    # The names and their help are twistd client's own, so the two agree.
    for name, _short, _default, doc in ACCESS_PARAMETERS:
        parser.add_argument(f"--{name}", metavar=_VALUES.get(name, "VALUE"), help=doc)


def clientDocument(args: Namespace) -> tuple[dict[str, Any], str]:
    """The client file C{--config} names, parsed (empty without one), and what to call it in errors."""
    if args.config is None:
        return {}, "command line"
    return readToml(args.config), args.config


def clientFlags(args: Namespace) -> dict[str, Any]:
    """
    The C{[client]} keys the flags give (None for those not given), for
    L{relaynat.config.withFlags}; a file named by a flag is relative to
    where the command runs, not to the config file's folder.
    """
    relayKey = args.relay_key
    if relayKey is not None and not relayKey.lower().startswith("sha256:"):
        relayKey = absolutePath(relayKey)
    return {
        "relay": args.relay,
        "relay_key": relayKey,
        "relay_verify": args.relay_verify,
        "relay_ca": _path(args.relay_ca),
        "relay_name": args.relay_name,
        "user": args.user,
        "password_file": _path(args.password_file),
    }


def _path(value: str | None) -> str | None:
    return None if value is None else absolutePath(value)
