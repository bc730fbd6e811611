"""
C{relaynat fingerprint FILE}: the fingerprint of a key or certificate.
"""

from __future__ import annotations

from typing import TextIO


from relaynat.identity import (
    fingerprintOfFile,
)
from relaynat.scripts.command import Command, arguments


class FingerprintOptions(Command):
    synopsis = "FILE"
    longdesc = (
        "Print the fingerprint (SHA-256 of the public key) of the relay's"
        " certificate or private key FILE."
    )

    def parseArgs(self, *args: str) -> None:
        (self["file"],) = arguments(args, "FILE")


def printFingerprint(options: FingerprintOptions, out: TextIO, err: TextIO) -> None:
    out.write(fingerprintOfFile(options["file"]) + "\n")
