"""
C{relaynat keygen DIR --name NAME [--name NAME]... [--force]}: the relay's
key and self-signed certificate.
"""

from __future__ import annotations

import ipaddress
import os
import re
from argparse import ArgumentParser, Namespace
from typing import TextIO

import attrs

from relaynat.identity import (
    CERT_FILE,
    KEY_FILE,
    fingerprint,
    generate,
    loadCertificate,
    writePrivate,
)
from relaynat.scripts.command import CommandFailed, Subcommand, UsageError, describeOSError


_LABEL = re.compile(r"\A(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")


def checkName(name: str) -> str:
    """Return C{name} if it is an IP address or an ASCII host name."""
    try:
        ipaddress.ip_address(name)
        return name
    except ValueError:
        pass
    if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise UsageError(
            f"--name {name!r}: not a host name or IP address"
            " (give a non-ASCII name in its xn-- form)"
        )
    return name


@attrs.frozen
class KeygenOptions:
    """Where C{relaynat keygen} writes, and the names the certificate carries."""

    directory: str
    names: tuple[str, ...]
    force: bool = False


def define(parser: ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", help="where to write the key and certificate")
    parser.add_argument(
        "--name",
        dest="names",
        metavar="NAME",
        action="append",
        help="a host name or IP address of the relay (repeat for several)",
    )
    parser.add_argument(
        "--force", action="store_true", help="replace an existing key and certificate"
    )


def read(args: Namespace) -> KeygenOptions:
    if not args.names:
        raise UsageError("give at least one --name: a host name or IP address of the relay")
    return KeygenOptions(
        directory=args.directory,
        names=tuple(checkName(name) for name in args.names),
        force=args.force,
    )


def keygen(options: KeygenOptions, out: TextIO, err: TextIO) -> None:
    directory = options.directory
    keyPath = os.path.join(directory, KEY_FILE)
    certPath = os.path.join(directory, CERT_FILE)
    if not options.force:
        existing = [path for path in (keyPath, certPath) if os.path.lexists(path)]
        if existing:
            raise CommandFailed(
                f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''};"
                " use --force to replace the relay's key (every user must then trust it again)"
            )
    keyPem, certPem = generate(list(options.names))
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        writePrivate(keyPath, keyPem)
        writePrivate(certPath, certPem)
    except OSError as e:
        raise CommandFailed(f"cannot write the key and certificate: {describeOSError(e)}") from e
    out.write(
        f"private key: {keyPath}\n"
        f"certificate: {certPath}\n"
        f"fingerprint: {fingerprint(loadCertificate(certPem, certPath))}\n"
    )


SUBCOMMAND = Subcommand(
    name="keygen",
    summary="create the relay's key and certificate",
    synopsis="DIR --name NAME [--name NAME]... [--force]",
    description=(
        f"Create the relay's private key (DIR/{KEY_FILE}) and a self-signed certificate"
        f" (DIR/{CERT_FILE}) for the names clients and skeletons reach it by, both"
        " readable by their owner only, and print the key's fingerprint."
    ),
    define=define,
    read=read,
    run=keygen,
)
