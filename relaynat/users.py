"""
The relay's users file: one user a line, with a salted SCRAM-SHA-256
verifier (never the password) and what the user may do.

    # name  verifier                                          rights
    alice   SCRAM-SHA-256$4096:SALT$STOREDKEY:SERVERKEY       register=web,mail join=*
    bob     SCRAM-SHA-256$4096:SALT$STOREDKEY:SERVERKEY       join=web

The verifier is PostgreSQL's format (base64 fields).  C{register=} lists the
server ids the user's skeletons may register, C{join=} those the user may
list and join; C{*} means any.  A right not given is not granted.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import stat
import tempfile
from collections.abc import Iterable, Mapping

import attrs
from scramp import ScramMechanism

from relaynat.names import checkServerId
from relaynat.private import PrivateFileError, readPrivate
from relaynat.wire import BadRequest

ITERATIONS = 4096
#: The salt's length in every verifier made here (scramp's default), and in
#: the made-up verifiers of unknown users, which must look the same.
SALT_BYTES = 32
ANY = "*"


class UsersFileError(Exception):
    """The users file cannot be used: names the file, the line and why."""


@attrs.frozen
class Rights:
    """Server ids a user may register and join; C{None} means any."""

    register: frozenset[str] | None = frozenset()
    join: frozenset[str] | None = frozenset()

    def mayRegister(self, serverId: str) -> bool:
        return self.register is None or serverId in self.register

    def mayJoin(self, serverId: str) -> bool:
        return self.join is None or serverId in self.join


@attrs.frozen
class User:
    """A user as the relay knows it: a SCRAM verifier and rights."""

    name: str
    salt: bytes = attrs.field(repr=False)
    storedKey: bytes = attrs.field(repr=False)
    serverKey: bytes = attrs.field(repr=False)
    iterations: int
    rights: Rights

    @classmethod
    def create(cls, name: str, password: str, rights: Rights) -> User:
        """A new user with a fresh salt; the password is not kept."""
        checkUserName(name)
        if not password:
            raise UsersFileError("the password is empty")
        salt, stored, server, iterations = ScramMechanism("SCRAM-SHA-256").make_auth_info(
            password, iteration_count=ITERATIONS, salt=secrets.token_bytes(SALT_BYTES)
        )
        return cls(name, salt, stored, server, iterations, rights)

    def verifier(self) -> str:
        b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
        return (
            f"SCRAM-SHA-256${self.iterations}:{b64(self.salt)}"
            f"${b64(self.storedKey)}:{b64(self.serverKey)}"
        )

    def line(self) -> str:
        """This user as a line of the users file."""
        return " ".join([self.name, self.verifier(), *formatRights(self.rights)])


def checkUserName(name: str) -> str:
    try:
        return checkServerId(name)
    except BadRequest:
        raise UsersFileError(
            f"bad user name {name!r}: use 1 to 64 letters, digits, '.', '_' or '-'"
        ) from None


def parseRights(words: Iterable[str], where: str) -> Rights:
    values: dict[str, frozenset[str] | None] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or key not in ("register", "join"):
            raise UsersFileError(f"{where}: {word!r}: expected register=IDS or join=IDS")
        if key in values:
            raise UsersFileError(f"{where}: {key}= given twice")
        values[key] = parseIds(value, where)
    return Rights(**values)  # type: ignore[arg-type]


def parseIds(value: str, where: str) -> frozenset[str] | None:
    """C{*} (any) or a comma-separated list of server ids."""
    if value == ANY:
        return None
    ids = [v for v in value.split(",") if v]
    for serverId in ids:
        try:
            checkServerId(serverId)
        except BadRequest as e:
            raise UsersFileError(f"{where}: {e}") from None
    return frozenset(ids)


def formatRights(rights: Rights) -> list[str]:
    words = []
    for key, ids in (("register", rights.register), ("join", rights.join)):
        if ids is None:
            words.append(f"{key}={ANY}")
        elif ids:
            words.append(f"{key}={','.join(sorted(ids))}")
    return words


def parseVerifier(text: str, where: str) -> tuple[bytes, bytes, bytes, int]:
    try:
        mechanism, rest = text.split("$", 1)
        head, keys = rest.split("$", 1)
        iterations, salt = head.split(":", 1)
        stored, server = keys.split(":", 1)
        if mechanism != "SCRAM-SHA-256":
            raise ValueError(mechanism)
        decoded = [base64.b64decode(x, validate=True) for x in (salt, stored, server)]
        count = int(iterations)
    except (ValueError, binascii.Error):
        raise UsersFileError(
            f"{where}: not a SCRAM-SHA-256 verifier (use 'relaynat passwd' to make one)"
        ) from None
    if count < ITERATIONS or len(decoded[1]) != 32 or len(decoded[2]) != 32:
        raise UsersFileError(f"{where}: verifier too weak or malformed")
    return decoded[0], decoded[1], decoded[2], count


def parseUsers(text: str, source: str) -> dict[str, User]:
    """The users in a users file's text; raises L{UsersFileError}."""
    users: dict[str, User] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source}, line {number}"
        words = line.split()
        if len(words) < 2:
            raise UsersFileError(f"{where}: expected NAME VERIFIER [RIGHTS]")
        name = words[0]
        try:
            checkUserName(name)
        except UsersFileError as e:
            raise UsersFileError(f"{where}: {e}") from None
        if name in users:
            raise UsersFileError(f"{where}: user {name} appears twice")
        salt, stored, server, iterations = parseVerifier(words[1], where)
        users[name] = User(name, salt, stored, server, iterations, parseRights(words[2:], where))
    return users


def loadUsers(path: str) -> dict[str, User]:
    """The users in C{path}, a private file (L{relaynat.private})."""
    try:
        text = readPrivate(path).decode("utf-8")
    except PrivateFileError as e:
        raise UsersFileError(str(e)) from e
    except UnicodeDecodeError as e:
        raise UsersFileError(f"{path}: {e}") from e
    return parseUsers(text, path)


def saveUsers(path: str, users: Mapping[str, User]) -> None:
    """
    Write the users file atomically (a reader never sees half a file) and
    private: the verifiers are not passwords, but a stolen one can be
    attacked offline.  A new file is readable by its owner only (0600); one
    that replaces a file keeps that file's owner and group, and its group's
    read bit, so a relay that reads it as its service group still can.
    """
    text = "# relaynat users: name, SCRAM-SHA-256 verifier, rights (relaynat passwd)\n"
    text += "".join(user.line() + "\n" for user in sorted(users.values(), key=lambda u: u.name))
    try:
        old: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        old = None
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".users-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(fd, _replacementMode(fd, old))
            f.write(text)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _replacementMode(fd: int, old: os.stat_result | None) -> int:
    """
    Give the new file C{fd} the owner and group of the file it replaces, as
    far as this process may; its mode: 0600, or 0640 where the old file was
    group-readable and the group could be kept (the group bit would
    otherwise go to a group nobody chose).
    """
    if old is None:
        return 0o600
    for owner in (old.st_uid, -1):
        try:
            os.fchown(fd, owner, old.st_gid)
            break
        except PermissionError:
            # Only root may give a file away; anyone may pick among their groups.
            continue
    if os.fstat(fd).st_gid != old.st_gid:
        return 0o600
    return 0o600 | (old.st_mode & stat.S_IRGRP)
