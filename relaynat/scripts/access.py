"""
The flags C{relaynat list} and C{relaynat connect} log in to the relay
with, as C{twistd client} spells them (L{relaynat.tap.access}): a client's
configuration file, and the flags laid over it, loaded by the roles' one
loader.
"""

from __future__ import annotations

from argparse import ArgumentParser, Namespace
from collections.abc import Collection

from relaynat.load import Flags, LoadedClient, loadClient, readConfig
from relaynat.tap.access import ACCESS_PARAMETERS, accessFlags

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


def clientFlags(args: Namespace) -> Flags:
    """What the flags in C{args} lay over the client's file, as C{twistd client}'s do."""
    given = {name: getattr(args, name.replace("-", "_")) for name, *_ in ACCESS_PARAMETERS}
    return Flags({"relay": args.relay, **accessFlags(given)})


def loadedClient(args: Namespace, secretsOf: Collection[str] = ()) -> LoadedClient:
    """
    The client's file C{--config} names (none: the flags alone), loaded
    under the flags, with the secrets of the tunnels to C{secretsOf}.
    """
    return loadClient(
        *readConfig(args.config), clientFlags(args), needTunnels=False, secretsOf=secretsOf
    )
