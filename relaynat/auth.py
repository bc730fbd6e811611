"""
The relay's side of login: SCRAM-SHA-256-PLUS against the users file, bound
to the TLS channel, and the sessions that logins open, which the tickets of
data connections belong to.  (Failed logins are throttled by
L{relaynat.throttle}.)
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from typing import Any

import attrs
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from OpenSSL import crypto
from scramp import ScramException, ScramMechanism
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from relaynat.users import ITERATIONS, SALT_BYTES, User, UsersFileError, loadUsers

_log = Logger()

@attrs.define(eq=False)
class Session:
    """A login: its id, its user, and when it stops being valid."""

    id: str
    user: str
    expires: float


class Sessions:
    """Issued sessions, looked up by their id and revoked with their login."""

    def __init__(self, clock: IReactorTime, lifetime: float) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def issue(self, user: str) -> Session:
        session = Session(secrets.token_urlsafe(18), user, self.clock.seconds() + self.lifetime)
        self._sessions[session.id] = session
        return session

    def revoke(self, session: Session) -> None:
        self._sessions.pop(session.id, None)

    def get(self, sessionId: str) -> Session | None:
        """The session C{sessionId} if it is issued and has not expired."""
        session = self._sessions.get(sessionId)
        if session is None:
            return None
        if session.expires <= self.clock.seconds():
            self.revoke(session)
            return None
        return session


class Users:
    """
    The users file, reloadable: a bad file keeps the users already loaded.
    C{watchers} are told of every reload that took, with the users before
    and after, so that what the old file allowed can be taken back.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.users: dict[str, User] = loadUsers(path)
        self.watchers: list[Callable[[dict[str, User], dict[str, User]], object]] = []

    def reload(self) -> bool:
        try:
            users = loadUsers(self.path)
        except UsersFileError as e:
            _log.error("users file not reloaded, keeping the old one: {why}", why=str(e))
            return False
        previous, self.users = self.users, users
        _log.info("users file reloaded: {count} users", count=len(users))
        for watcher in list(self.watchers):
            watcher(previous, users)
        return True

    def get(self, name: str) -> User | None:
        return self.users.get(name)


def pepperFromKey(key: Any) -> bytes:
    """
    The secret that unknown users' made-up verifiers come from, derived
    from the relay's private key (HKDF-SHA256, RFC 5869): the same across
    restarts, so that asking twice for an unknown name gets the same salt
    as asking twice for a known one, and secret as long as the key is.
    """
    der = crypto.dump_privatekey(crypto.FILETYPE_ASN1, key)
    return HKDF(hashes.SHA256(), 32, salt=None, info=b"relaynat unknown-user pepper 1").derive(
        der
    )


#: The longest client-first message taken, and the longest user name in it
#: (escaped, so three characters may stand for one): checked before SASLprep,
#: whose cost grows with the name.  No user name is longer than 64.
MAX_LOGIN_MESSAGE = 1024
MAX_ESCAPED_NAME = 3 * 64


class ScramLogin:
    """
    One login attempt on one connection: SCRAM-SHA-256-PLUS with the relay's
    tls-server-end-point binding, so a transcript is worthless on another
    connection or at another relay.  Unknown users get a verifier made up
    from a secret pepper, with a salt as long as real ones and the same from
    one attempt (and one restart) to the next, so they fail exactly where and
    as a wrong password does.
    """

    def __init__(self, users: Users, channelBinding: bytes, pepper: bytes) -> None:
        self.user: str | None = None
        self._users = users
        self._pepper = pepper
        self._server = ScramMechanism("SCRAM-SHA-256-PLUS").make_server(
            self._verifier, channel_binding=("tls-server-end-point", channelBinding)
        )

    def _verifier(self, name: str) -> tuple[bytes, bytes, bytes, int]:
        self.user = name
        user = self._users.get(name)
        if user is not None:
            return user.salt, user.storedKey, user.serverKey, user.iterations
        made: Callable[[bytes], bytes] = lambda label: hmac.new(  # noqa: E731
            self._pepper, label + name.encode("utf-8"), hashlib.sha256
        ).digest()
        return made(b"salt")[:SALT_BYTES], made(b"stored"), made(b"server"), ITERATIONS

    def first(self, clientFirst: str) -> str:
        """The server-first message; raises L{ScramException}."""
        checkClientFirst(clientFirst)
        self._server.set_client_first(clientFirst)
        return str(self._server.get_server_first())

    def final(self, clientFinal: str) -> str:
        """The server-final message if the proof is right; else raises."""
        if len(clientFinal) > MAX_LOGIN_MESSAGE:
            raise ScramException("the login message is too long")
        self._server.set_client_final(clientFinal)
        if self.user is None or self._users.get(self.user) is None:
            raise ScramException("unknown user")
        return str(self._server.get_server_final())


def checkClientFirst(message: str) -> None:
    """
    Refuse a client-first message too long to be honest, before any of it
    is parsed: gs2-header (two fields), then the user name (RFC 5802, 7).
    """
    if len(message) > MAX_LOGIN_MESSAGE:
        raise ScramException("the login message is too long")
    fields = message.split(",", 4)
    name = next((f for f in fields[2:] if f.startswith("n=")), None)
    if name is not None and len(name) - 2 > MAX_ESCAPED_NAME:
        raise ScramException("the user name is too long")


__all__ = ["ScramException", "ScramLogin", "Session", "Sessions", "Users", "pepperFromKey"]
