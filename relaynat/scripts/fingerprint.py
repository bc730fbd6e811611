"""
C{relaynat fingerprint FILE}: the fingerprint of a key or certificate.
"""

from __future__ import annotations

from argparse import ArgumentParser, Namespace
from typing import TextIO

import attrs

from relaynat.identity import fingerprintOfFile
from relaynat.scripts.command import Subcommand


@attrs.frozen
class FingerprintOptions:
    """The file C{relaynat fingerprint} reads."""

    file: str


def define(parser: ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="the relay's certificate or private key")


def read(args: Namespace) -> FingerprintOptions:
    return FingerprintOptions(file=args.file)


def printFingerprint(options: FingerprintOptions, out: TextIO, err: TextIO) -> None:
    out.write(fingerprintOfFile(options.file) + "\n")


SUBCOMMAND = Subcommand(
    name="fingerprint",
    summary="print the fingerprint of a key or certificate",
    synopsis="FILE",
    description=(
        "Print the fingerprint (SHA-256 of the public key) of the relay's"
        " certificate or private key FILE."
    ),
    define=define,
    read=read,
    run=printFingerprint,
)
