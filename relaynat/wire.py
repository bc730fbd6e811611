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
    ITCPTransport,
)
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


class UnknownSession(RelaynatError):
    """A data connection named a session the relay does not know."""


class BadRequest(RelaynatError):
    """The request is malformed (a bad server id, an empty registration)."""


_ERRORS: dict[type[Exception], bytes] = {
    UnknownServer: b"UNKNOWN_SERVER",
    ServerOffline: b"SERVER_OFFLINE",
    DuplicateServer: b"DUPLICATE_SERVER",
    TargetRefused: b"TARGET_REFUSED",
    JoinTimeout: b"JOIN_TIMEOUT",
    SkeletonGone: b"SKELETON_GONE",
    UnknownSession: b"UNKNOWN_SESSION",
    BadRequest: b"BAD_REQUEST",
}


# Commands with no arguments or no answer values share this empty list.
_NOTHING: list[tuple[bytes, amp.Argument]] = []


def _errors(*kinds: type[Exception]) -> dict[type[Exception], bytes]:
    return {kind: _ERRORS[kind] for kind in kinds}


class Register(amp.Command):
    """
    Sent by a skeleton as the first command of its control connection: who it
    is, which servers it fronts, and how many idle connections per server it
    keeps ready.  The answer is the session that its data connections name.
    """

    arguments = [
        (b"name", amp.Unicode()),
        (
            b"servers",
            amp.AmpList([(b"id", amp.Unicode()), (b"description", amp.Unicode())]),
        ),
        (b"pool", amp.Integer()),
    ]
    response = [(b"session", amp.Unicode())]
    errors = _errors(DuplicateServer, BadRequest)


class Offer(amp.Command):
    """
    The first command of a skeleton's data connection: this connection is
    ready to be joined to a client of C{server}.
    """

    arguments = [(b"session", amp.Unicode()), (b"server", amp.Unicode())]
    response = _NOTHING
    errors = _errors(UnknownSession, UnknownServer, BadRequest)


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
    Relay to skeleton, on an offered data connection: connect to the server's
    target and, once connected, carry raw bytes from here on.
    """

    arguments = [(b"tunnel", amp.Unicode())]
    response = _NOTHING
    errors = _errors(TargetRefused, UnknownServer, SkeletonGone)


class ListServers(amp.Command):
    """Client to relay: the servers that can be joined now."""

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


class Tunnel(amp.ProtocolSwitchCommand):
    """
    Client to relay, the only command of a client's data connection: join me
    to C{server}, then carry raw bytes from here on.
    """

    arguments = [(b"server", amp.Unicode())]
    # A switch's answer carries no values (AMP sends a bare _SwitchBox).
    response = _NOTHING
    errors = _errors(
        UnknownServer, ServerOffline, TargetRefused, JoinTimeout, SkeletonGone,
        BadRequest,
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

    def connectionMade(self) -> None:
        # AMP's own makeConnection does not set this, as Protocol's does.
        self.connected = True
        setNoDelay(self.transport)
        super().connectionMade()

    def connectionLost(self, reason: Failure = _CLEAN_CLOSE) -> None:
        self.connected = False
        super().connectionLost(reason)

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


# Twisted's client endpoints wrap the protocol and copy its interfaces one
# at a time with directlyProvides, which replaces rather than adds: AMP's
# IFileDescriptorReceiver (which no channel here uses) would erase
# IHalfCloseableProtocol, and every client-side tunnel would lose half-close.
classImplementsOnly(
    Channel,
    IHalfCloseableProtocol,
    *[i for i in implementedBy(amp.AMP) if i is not IFileDescriptorReceiver],
)
