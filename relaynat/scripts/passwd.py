"""
C{relaynat passwd FILE USER [--register IDS] [--join IDS]
[--password-file F | --keep-password]}, or C{--delete}: the relay's users.
"""

from __future__ import annotations

import hmac
import os
from argparse import ArgumentParser, Namespace
from getpass import getpass
from typing import TextIO

import attrs

from relaynat.private import PrivateFileError, readPrivate
from relaynat.scripts.command import CommandFailed, Subcommand, UsageError
from relaynat.users import (
    Rights,
    User,
    UsersFileError,
    checkUserName,
    formatRights,
    loadUsers,
    parseIds,
    saveUsers,
)


@attrs.frozen
class PasswdOptions:
    """The users file, the user, and what C{relaynat passwd} changes of them."""

    file: str
    user: str
    #: The rights given on the command line, by name (C{register}, C{join}).
    rights: dict[str, frozenset[str] | None] = attrs.field(factory=dict)
    password_file: str | None = None
    keep_password: bool = False
    delete: bool = False


def define(parser: ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="the relay's users file")
    parser.add_argument("user", metavar="USER", help="the user to add, change or delete")
    parser.add_argument(
        "--register", metavar="IDS", help="server ids the user's skeletons may register"
    )
    parser.add_argument("--join", metavar="IDS", help="server ids the user may list and join")
    parser.add_argument(
        "--password-file", metavar="F", help="read the password from the first line of this file"
    )
    parser.add_argument(
        "--keep-password", action="store_true", help="change an existing user's rights only"
    )
    parser.add_argument("--delete", action="store_true", help="remove the user")


def read(args: Namespace) -> PasswdOptions:
    try:
        checkUserName(args.user)
        rights = {
            key: parseIds(getattr(args, key), f"--{key}")
            for key in ("register", "join")
            if getattr(args, key) is not None
        }
    except UsersFileError as e:
        raise UsageError(str(e)) from e
    given = [
        f"--{flag.replace('_', '-')}"
        for flag in ("register", "join", "password_file", "keep_password")
        if getattr(args, flag)
    ]
    if args.delete and given:
        raise UsageError(f"--delete cannot go with {', '.join(given)}")
    if args.keep_password and args.password_file:
        raise UsageError("--keep-password cannot go with --password-file")
    return PasswdOptions(
        file=args.file,
        user=args.user,
        rights=rights,
        password_file=args.password_file,
        keep_password=args.keep_password,
        delete=args.delete,
    )


def passwd(options: PasswdOptions, out: TextIO, err: TextIO) -> None:
    path, name = options.file, options.user
    users = loadUsers(path) if os.path.exists(path) else {}
    existing = users.get(name)
    if options.delete:
        if existing is None:
            raise CommandFailed(f"{path} has no user {name}")
        del users[name]
        _save(path, users)
        out.write(f"deleted user {name} from {path}\n")
        return
    if existing is None:
        rights = Rights(**options.rights)
    else:
        rights = attrs.evolve(existing.rights, **options.rights)
    if options.keep_password:
        if existing is None:
            raise CommandFailed(f"{path} has no user {name} yet; a new user needs a password")
        user = attrs.evolve(existing, rights=rights)
    else:
        user = User.create(name, readPassword(options), rights)
    users[name] = user
    _save(path, users)
    done = f"changed user {name} in" if existing else f"added user {name} to"
    out.write(f"{done} {path}: {' '.join(formatRights(rights)) or 'no rights'}\n")
    if rights.register == frozenset() and rights.join == frozenset():
        err.write(
            f"note: {name} may neither register nor join a server; give --register or --join\n"
        )


def readPassword(options: PasswdOptions) -> str:
    """
    The new password: from C{--password-file}, a private file like every
    password file (L{relaynat.private}), or asked twice.
    """
    source = options.password_file
    if source is not None:
        try:
            lines = readPrivate(source).decode("utf-8").splitlines()
        except PrivateFileError as e:
            raise CommandFailed(f"cannot read the password: {e}") from e
        except UnicodeDecodeError:
            raise CommandFailed(f"cannot read the password: {source} is not UTF-8 text") from None
        password = lines[0] if lines else ""
    else:
        try:
            password = getpass(f"New password for {options.user}: ")
            again = getpass("The same password again: ")
        except EOFError:
            raise CommandFailed("no password was typed; use --password-file F to give one") from None
        if not hmac.compare_digest(password.encode(), again.encode()):
            raise CommandFailed("the two passwords differ; nothing was changed")
    if not password:
        raise CommandFailed("the password is empty; nothing was changed")
    return password


def _save(path: str, users: dict[str, User]) -> None:
    try:
        saveUsers(path, users)
    except OSError as e:
        raise CommandFailed(f"cannot save {path}: {e.strerror}") from e


SUBCOMMAND = Subcommand(
    name="passwd",
    summary="add, change or delete a user of the relay",
    synopsis=(
        "FILE USER [--register IDS] [--join IDS] [--password-file F | --keep-password]"
        " | FILE USER --delete"
    ),
    description=(
        "Add a user to the relay's users file FILE (created if missing) or change"
        " one: the password is asked twice, or read from the first line of F."
        " IDS is a comma-separated list of server ids, or * for any; an existing"
        " user keeps the rights not given."
    ),
    define=define,
    read=read,
    run=passwd,
)
