"""
C{relaynat keygen DIR --name NAME [--name NAME]... [--force]}: the relay's
key and self-signed certificate.
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import TextIO

from twisted.python import usage

from relaynat.identity import (
    CERT_FILE,
    KEY_FILE,
    fingerprint,
    generate,
    loadCertificate,
    writePrivate,
)
from relaynat.scripts.command import Command, CommandFailed, arguments, describeOSError


_LABEL = re.compile(r"\A(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")


def checkName(name: str) -> str:
    """Return C{name} if it is an IP address or an ASCII host name."""
    try:
        ipaddress.ip_address(name)
        return name
    except ValueError:
        pass
    if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise usage.UsageError(
            f"--name {name!r}: not a host name or IP address"
            " (give a non-ASCII name in its xn-- form)"
        )
    return name


class KeygenOptions(Command):
    synopsis = "DIR --name NAME [--name NAME]... [--force]"
    longdesc = (
        f"Create the relay's private key (DIR/{KEY_FILE}) and a self-signed certificate"
        f" (DIR/{CERT_FILE}) for the names clients and skeletons reach it by, both"
        " readable by their owner only, and print the key's fingerprint."
    )
    optFlags = [["force", None, "replace an existing key and certificate"]]

    def __init__(self) -> None:
        super().__init__()
        self["names"] = []

    def opt_name(self, name: str) -> None:
        """a host name or IP address of the relay (repeat for several)"""
        self["names"].append(checkName(name))

    def parseArgs(self, *args: str) -> None:
        (self["directory"],) = arguments(args, "DIR")

    def postOptions(self) -> None:
        if not self["names"]:
            raise usage.UsageError(
                "give at least one --name: a host name or IP address of the relay"
            )


def keygen(options: KeygenOptions, out: TextIO, err: TextIO) -> None:
    directory = options["directory"]
    keyPath = os.path.join(directory, KEY_FILE)
    certPath = os.path.join(directory, CERT_FILE)
    if not options["force"]:
        existing = [path for path in (keyPath, certPath) if os.path.lexists(path)]
        if existing:
            raise CommandFailed(
                f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''};"
                " use --force to replace the relay's key (every user must then trust it again)"
            )
    keyPem, certPem = generate(options["names"])
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
