"""
The relay's side of login: SCRAM-SHA-256-PLUS against the users file, bound
to the TLS channel; throttling of failed logins; and the sessions that
logins open, which the tickets of data connections belong to.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Iterable

import attrs
from scramp import ScramException, ScramMechanism
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from relaynat.users import ITERATIONS, User, UsersFileError, loadUsers

_log = Logger()

@attrs.define
class _Record:
    failures: int = 0
    last: float = 0.0
    lockedUntil: float = 0.0


class Throttle:
    """
    Failed logins, counted per source address and per user name: each
    failure is answered after a delay that doubles, and past C{lockAfter}
    failures the key is locked for C{lockFor} seconds.  Counts are forgotten
    C{forgetAfter} seconds after the last failure.
    """

    def __init__(
        self,
        clock: IReactorTime,
        baseDelay: float = 0.25,
        maxDelay: float = 8.0,
        lockAfter: int = 10,
        lockFor: float = 900.0,
        forgetAfter: float = 900.0,
    ) -> None:
        self.clock = clock
        self.baseDelay, self.maxDelay = baseDelay, maxDelay
        self.lockAfter, self.lockFor, self.forgetAfter = lockAfter, lockFor, forgetAfter
        self._records: dict[str, _Record] = {}

    def _record(self, key: str) -> _Record:
        now = self.clock.seconds()
        record = self._records.get(key)
        if record is None or (
            now - record.last > self.forgetAfter and record.lockedUntil <= now
        ):
            record = self._records[key] = _Record()
        return record

    def lockedFor(self, keys: Iterable[str]) -> float:
        """Seconds until every one of C{keys} may try again (0: now)."""
        now = self.clock.seconds()
        return max([self._record(k).lockedUntil - now for k in keys] + [0.0])

    def failed(self, keys: Iterable[str]) -> float:
        """Count a failure; return the delay before answering it."""
        now = self.clock.seconds()
        delay = 0.0
        for key in keys:
            record = self._record(key)
            record.failures += 1
            record.last = now
            if record.failures >= self.lockAfter:
                record.lockedUntil = now + self.lockFor
            delay = max(delay, min(self.maxDelay, self.baseDelay * 2 ** (record.failures - 1)))
        self._prune(now)
        return delay

    def succeeded(self, key: str) -> None:
        self._records.pop(key, None)

    def _prune(self, now: float) -> None:
        if len(self._records) > 100_000:
            for key, record in list(self._records.items()):
                if now - record.last > self.forgetAfter and record.lockedUntil <= now:
                    del self._records[key]


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
    """The users file, reloadable: a bad file keeps the users already loaded."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.users: dict[str, User] = loadUsers(path)

    def reload(self) -> bool:
        try:
            users = loadUsers(self.path)
        except UsersFileError as e:
            _log.error("users file not reloaded, keeping the old one: {why}", why=str(e))
            return False
        self.users = users
        _log.info("users file reloaded: {count} users", count=len(users))
        return True

    def get(self, name: str) -> User | None:
        return self.users.get(name)


class ScramLogin:
    """
    One login attempt on one connection: SCRAM-SHA-256-PLUS with the relay's
    tls-server-end-point binding, so a transcript is worthless on another
    connection or at another relay.  Unknown users get a verifier made up
    from a secret pepper, so they fail exactly where a wrong password does.
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
        return made(b"salt")[:16], made(b"stored"), made(b"server"), ITERATIONS

    def first(self, clientFirst: str) -> str:
        """The server-first message; raises L{ScramException}."""
        self._server.set_client_first(clientFirst)
        return str(self._server.get_server_first())

    def final(self, clientFinal: str) -> str:
        """The server-final message if the proof is right; else raises."""
        self._server.set_client_final(clientFinal)
        if self.user is None or self._users.get(self.user) is None:
            raise ScramException("unknown user")
        return str(self._server.get_server_final())


__all__ = ["ScramException", "ScramLogin", "Session", "Sessions", "Throttle", "Users"]
