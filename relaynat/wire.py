"""
The wire format shared by relay, skeleton and client: every AMP command, its
arguments and its errors, and the AMP base class that all three roles speak.

Every connection starts as AMP.  Control connections stay AMP; data
connections switch to raw bytes with a L{ProtocolSwitchCommand} once they
are joined, so a tunnel carries the application's bytes untouched.

Port Y (skeletons):
  - skeleton -> relay: L{Register} on the control connection, L{Offer} as the
    first command of every data connection.
  - relay -> skeleton: L{OpenConnection} on the control connection, L{Join}
    on an offered data connection.
Port X (clients):
  - client -> relay: L{ListServers} on a control connection, L{Tunnel} as
    the only command of a data connection.
Both: L{Ping}, to keep idle connections honest.

Every first command carries a C{session} or is answered with one, so that a
login step can come first on any connection without reshaping the rest.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.interfaces import (
    IFileDescriptorReceiver,
    IHalfCloseableProtocol,
    IHandshakeListener,
    ISSLTransport,
    ITCPTransport,
)
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.main import CONNECTION_DONE
from twisted.protocols import amp
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import classImplementsOnly, implementedBy

_log = Logger()
_CLEAN_CLOSE = Failure(CONNECTION_DONE)

#: Seconds between heartbeats: a skeleton pings its control connection this
#: often, and the relay probes idle pooled connections as often.  NAT
#: mappings and stateful firewalls forget silent connections; these keep
#: them alive, and find the dead ones.
HEARTBEAT = 30.0

#: Seconds a ping may go unanswered before its connection is dropped.
PING_TIMEOUT = 15.0

#: A skeleton's control connection silent this long is dropped by the relay,
#: so that a skeleton that moved (new address, new route) can register again.
SILENCE_LIMIT = 3 * HEARTBEAT

#: A server id: short, printable, safe in logs, file names and URLs.
SERVER_ID = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")


class RelaynatError(Exception):
    """
    An error that crosses the wire: its message is meant for the user at the
    far end and must say what went wrong and what to do.
    """


class UnknownServer(RelaynatError):
    """The relay has never seen a server with this id."""


class ServerOffline(RelaynatError):
    """The server was registered, but its skeleton is not connected now."""


class DuplicateServer(RelaynatError):
    """Another skeleton already registered this server id."""


class TargetRefused(RelaynatError):
    """The skeleton could not connect to the server it fronts."""


class JoinTimeout(RelaynatError):
    """The skeleton did not provide a connection in time."""


class SkeletonGone(RelaynatError):
    """The skeleton went away while a tunnel was being set up."""


class BadRequest(RelaynatError):
    """The request is malformed (a bad server id, an empty registration)."""


class LoginFailed(RelaynatError):
    """Unknown user, wrong password, or too many failures: one error for all."""


class SessionRefused(RelaynatError):
    """A connection's session proof is wrong, or its session expired."""


class PermissionDenied(RelaynatError):
    """The user may not do this (register that server id, say)."""


class SecretMismatch(RelaynatError):
    """The client's proof of the server's secret is wrong."""


class LoginRequired(RelaynatError):
    """A command that needs a login or a session proof came before it."""


_ERRORS: dict[type[Exception], bytes] = {
    UnknownServer: b"UNKNOWN_SERVER",
    ServerOffline: b"SERVER_OFFLINE",
    DuplicateServer: b"DUPLICATE_SERVER",
    TargetRefused: b"TARGET_REFUSED",
    JoinTimeout: b"JOIN_TIMEOUT",
    SkeletonGone: b"SKELETON_GONE",
    BadRequest: b"BAD_REQUEST",
    LoginFailed: b"LOGIN_FAILED",
    SessionRefused: b"SESSION_REFUSED",
    PermissionDenied: b"PERMISSION_DENIED",
    SecretMismatch: b"SECRET_MISMATCH",
    LoginRequired: b"LOGIN_REQUIRED",
}


# Commands with no arguments or no answer values share this empty list.
_NOTHING: list[tuple[bytes, amp.Argument]] = []


def _errors(*kinds: type[Exception]) -> dict[type[Exception], bytes]:
    return {kind: _ERRORS[kind] for kind in kinds}


class Login(amp.Command):
    """
    The first step of SCRAM-SHA-256-PLUS (tls-server-end-point binding) on a
    control connection: the client-first message; answered server-first.
    """

    arguments = [(b"message", amp.Unicode())]
    response = [(b"message", amp.Unicode())]
    errors = _errors(LoginFailed, BadRequest)


class LoginFinish(amp.Command):
    """
    The second step: client-final; answered server-final (which the client
    checks: the relay proves it knows the verifier), and a session whose key
    later connections of this login prove instead of the password.
    """

    arguments = [(b"message", amp.Unicode())]
    response = [
        (b"message", amp.Unicode()),
        (b"session", amp.Unicode()),
        (b"key", amp.String()),
        (b"expires", amp.Float()),
    ]
    errors = _errors(LoginFailed, BadRequest)


class Hello(amp.Command):
    """A fresh challenge, for the session proof of a data connection."""

    arguments = _NOTHING
    response = [(b"challenge", amp.String())]


class Register(amp.Command):
    """
    Sent by a logged-in skeleton on its control connection: who it is, which
    servers it fronts, and how many idle connections per server it keeps
    ready.
    """

    arguments = [
        (b"name", amp.Unicode()),
        (
            b"servers",
            amp.AmpList([(b"id", amp.Unicode()), (b"description", amp.Unicode())]),
        ),
        (b"pool", amp.Integer()),
    ]
    response = _NOTHING
    errors = _errors(
        DuplicateServer, BadRequest, PermissionDenied, LoginRequired, SessionRefused
    )


class Offer(amp.Command):
    """
    After L{Hello}, the command of a skeleton's data connection: this
    connection, of session C{session} (C{proof} answers the challenge), is
    ready to be joined to a client of C{server}.  C{nonce} is the skeleton's
    half of the per-server secret's challenge for that join.
    """

    arguments = [
        (b"session", amp.Unicode()),
        (b"proof", amp.String()),
        (b"server", amp.Unicode()),
        (b"nonce", amp.String()),
    ]
    response = _NOTHING
    errors = _errors(UnknownServer, BadRequest, SessionRefused, LoginRequired)


class OpenConnection(amp.Command):
    """
    Relay to skeleton: open one more data connection for C{server} and
    L{Offer} it.  Answered once the offer is accepted, or with an error.
    """

    arguments = [(b"server", amp.Unicode())]
    response = _NOTHING
    errors = _errors(UnknownServer, SkeletonGone)


class Join(amp.ProtocolSwitchCommand):
    """
    Relay to skeleton, on an offered data connection: check the client's
    C{proof} of the server's secret over its C{nonce}, the skeleton's nonce
    and the join id C{tunnel}; then connect to the server's target and, once
    connected, carry raw bytes from here on.
    """

    arguments = [
        (b"tunnel", amp.Unicode()),
        (b"nonce", amp.String()),
        (b"proof", amp.String()),
    ]
    response = _NOTHING
    errors = _errors(TargetRefused, UnknownServer, SkeletonGone, SecretMismatch)


class ListServers(amp.Command):
    """Client to relay, logged in: the servers this user may join now."""

    arguments = _NOTHING
    response = [
        (
            b"servers",
            amp.AmpList(
                [
                    (b"id", amp.Unicode()),
                    (b"description", amp.Unicode()),
                    (b"since", amp.Float()),
                    (b"idle", amp.Integer()),
                ]
            ),
        )
    ]
    errors = _errors(LoginRequired, SessionRefused)


class Prepare(amp.Command):
    """
    Client to relay, after L{Hello} on a data connection: this connection
    belongs to C{session} (C{proof} answers the challenge) and wants
    C{server}.  The relay sets a skeleton connection aside and answers with
    the join id and the skeleton's nonce, so that the client can prove the
    server's secret in L{Tunnel}.
    """

    arguments = [
        (b"session", amp.Unicode()),
        (b"proof", amp.String()),
        (b"server", amp.Unicode()),
        (b"nonce", amp.String()),
    ]
    response = [(b"join", amp.Unicode()), (b"nonce", amp.String())]
    errors = _errors(
        UnknownServer, ServerOffline, JoinTimeout, SkeletonGone, BadRequest,
        SessionRefused, LoginRequired,
    )


class Tunnel(amp.ProtocolSwitchCommand):
    """
    Client to relay, after L{Prepare} on the same connection: join me (with
    C{proof} of the server's secret) and carry raw bytes from here on.
    """

    arguments = [(b"join", amp.Unicode()), (b"proof", amp.String())]
    # A switch's answer carries no values (AMP sends a bare _SwitchBox).
    response = _NOTHING
    errors = _errors(
        UnknownServer, TargetRefused, SkeletonGone, BadRequest, SecretMismatch,
        JoinTimeout,
    )


class Ping(amp.Command):
    """Either way: are you still there?"""

    arguments = _NOTHING
    response = _NOTHING


def checkServerId(serverId: str) -> str:
    """
    Return C{serverId} if it is a valid server id, else raise L{BadRequest}.
    """
    if not SERVER_ID.match(serverId):
        raise BadRequest(
            f"bad server id {serverId!r}: use 1 to 64 letters, digits, '.', '_'"
            " or '-', starting with a letter or digit"
        )
    return serverId


def checkText(what: str, text: str, limit: int = 200) -> str:
    """
    Return C{text} if it is short and printable, else raise L{BadRequest}:
    names and descriptions end up on other people's terminals and in logs.
    """
    if len(text) > limit or not text.isprintable():
        raise BadRequest(
            f"bad {what} {text[:40]!r}: use at most {limit} printable characters"
        )
    return text


def setNoDelay(transport: object) -> None:
    """
    Turn Nagle off where the transport is TCP: a relay hop must not hold
    small writes back (an interactive ssh session through three hops would
    otherwise wait on delayed ACKs at each).
    """
    tcp = ITCPTransport(transport, None)
    if tcp is not None:
        tcp.setTcpNoDelay(True)


class Channel(amp.AMP):
    """
    AMP that keeps half-close working after a protocol switch.

    Stock AMP does not provide L{IHalfCloseableProtocol}, so the transport
    closes the whole connection at the peer's end-of-stream, and a tunnel
    could not deliver a reply after the client shut its write side.
    """

    # A TCP or TLS transport: also a consumer, a push producer, and
    # abortable, which ITransport alone does not say.
    transport: Any

    def __init__(self) -> None:
        super().__init__()
        self._secure: bool | Failure = False
        self._waiting: list[Deferred[None]] = []

    def whenSecure(self) -> Deferred[None]:
        """
        Fires when TLS is established (at once without TLS), or fails with
        the reason the connection was lost before that.
        """
        if self._secure is True:
            return succeed(None)
        if isinstance(self._secure, Failure):
            return fail(self._secure)
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        return d

    def handshakeCompleted(self) -> None:
        self._settle(True)

    def _settle(self, outcome: bool | Failure) -> None:
        if self._secure is not False:
            return
        self._secure = outcome
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            if isinstance(outcome, Failure):
                d.errback(outcome)
            else:
                d.callback(None)

    def connectionMade(self) -> None:
        # AMP's own makeConnection does not set this, as Protocol's does.
        self.connected = True
        setNoDelay(self.transport)
        if ISSLTransport(self.transport, None) is None:
            self.handshakeCompleted()
        super().connectionMade()

    def makeConnection(self, transport: Any) -> None:
        # AMP's own makeConnection logs two lines per connection (made and
        # lost); a relay makes several connections per tunnel and logs each
        # tunnel itself, so those lines cost time and bury the useful ones.
        amp.BinaryBoxProtocol.makeConnection(self, transport)

    def connectionLost(self, reason: Failure = _CLEAN_CLOSE) -> None:
        self.connected = False
        self._settle(reason)
        amp.BinaryBoxProtocol.connectionLost(self, reason)

    def dataReceived(self, data: bytes) -> None:
        if self.innerProtocol is not None:
            self.innerProtocol.dataReceived(data)
            return
        try:
            super().dataReceived(data)
        except Exception as e:
            # Stock AMP lets some malformed boxes raise (an empty box, an
            # answer to no question, a command name that is not UTF-8); a
            # peer sending garbage is dropped with one line, not a traceback.
            _log.warn(
                "dropping {peer}: malformed AMP: {error}",
                peer=self.transport.getPeer(),
                error=repr(e),
            )
            self.transport.abortConnection()

    def _inner(self) -> IHalfCloseableProtocol | None:
        if self.innerProtocol is None:
            return None
        return IHalfCloseableProtocol(self.innerProtocol, None)

    def readConnectionLost(self) -> None:
        inner = self._inner()
        if inner is not None:
            inner.readConnectionLost()
        else:
            # A control channel whose peer stopped sending is finished.
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        inner = self._inner()
        if inner is not None:
            inner.writeConnectionLost()

    @Ping.responder
    def _ping(self) -> dict[str, object]:
        return {}

    def locateResponder(self, name: bytes) -> Any:
        # Stock AMP answers StartTLS; TLS here is set up by the endpoints,
        # and a peer must not be able to start it again mid-connection.
        if name == amp.StartTLS.commandName:
            return None
        return super().locateResponder(name)


# Twisted's client endpoints wrap the protocol and copy its interfaces one
# at a time with directlyProvides, which replaces rather than adds: AMP's
# IFileDescriptorReceiver (which no channel here uses) would erase
# IHalfCloseableProtocol, and every client-side tunnel would lose half-close.
classImplementsOnly(
    Channel,
    IHalfCloseableProtocol,
    IHandshakeListener,
    *[i for i in implementedBy(amp.AMP) if i is not IFileDescriptorReceiver],
)
