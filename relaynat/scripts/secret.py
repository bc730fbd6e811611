"""
C{relaynat secret FILE [--force]}: a new secret for one server.
"""

from __future__ import annotations

import os
from argparse import ArgumentParser, Namespace
from typing import TextIO

import attrs

from relaynat.scripts.command import CommandFailed, Subcommand
from relaynat.secret import generateSecret


@attrs.frozen
class SecretOptions:
    """Where C{relaynat secret} writes, and whether it may replace a file there."""

    file: str
    force: bool = False


def define(parser: ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="where to write the secret")
    parser.add_argument("--force", action="store_true", help="replace an existing secret file")


def read(args: Namespace) -> SecretOptions:
    return SecretOptions(file=args.file, force=args.force)


def secret(options: SecretOptions, out: TextIO, err: TextIO) -> None:
    path = options.file
    if os.path.lexists(path) and not options.force:
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


SUBCOMMAND = Subcommand(
    name="secret",
    summary="create a secret file for one server",
    synopsis="FILE [--force]",
    description=(
        "Write a new random secret for one server to FILE, readable by its owner"
        " only, for that server's skeleton and the clients allowed to reach it."
    ),
    define=define,
    read=read,
    run=secret,
)
