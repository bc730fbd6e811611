"""
C{relaynat secret FILE [--force]}: a new secret for one server.
"""

from __future__ import annotations

import os
from typing import TextIO


from relaynat.secret import generateSecret
from relaynat.scripts.command import Command, CommandFailed, arguments


class SecretOptions(Command):
    synopsis = "FILE [--force]"
    longdesc = (
        "Write a new random secret for one server to FILE, readable by its owner"
        " only, for that server's skeleton and the clients allowed to reach it."
    )
    optFlags = [["force", None, "replace an existing secret file"]]

    def parseArgs(self, *args: str) -> None:
        (self["file"],) = arguments(args, "FILE")


def secret(options: SecretOptions, out: TextIO, err: TextIO) -> None:
    path = options["file"]
    if os.path.lexists(path) and not options["force"]:
        raise CommandFailed(
            f"{path} already exists; use --force to replace it (the skeleton and"
            " every client sharing the old secret then need the new one)"
        )
    try:
        generateSecret(path)
    except OSError as e:
        raise CommandFailed(f"cannot write {path}: {e.strerror}") from e
    out.write(
        f"wrote a new secret to {path}; copy it privately to the server's skeleton"
        " and to each client allowed to reach the server\n"
    )
