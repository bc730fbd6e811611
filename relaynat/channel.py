"""
The AMP base class that every control connection speaks, and the socket
settings every tunnel connection gets.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IHandshakeListener, ISSLTransport, ITCPTransport
from twisted.internet.main import CONNECTION_DONE
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from relaynat.wire import BadRequest, Ping

_log = Logger()
_CLEAN_CLOSE = Failure(CONNECTION_DONE)

#: TCP keepalive on every tunnel connection (pooled, ready or carrying):
#: first probe after this many idle seconds, then every KEEPALIVE_INTERVAL,
#: given up after KEEPALIVE_COUNT unanswered.  Nothing else can probe a
#: connection that carries (or waits to carry) a tunnel's bytes, and these
#: notice a NAT that dropped it within a minute, and keep it from doing so.
KEEPALIVE_IDLE = 20
KEEPALIVE_INTERVAL = 10
KEEPALIVE_COUNT = 3


def keepAlive(transport: object) -> None:
    """
    Probe C{transport}'s TCP connection when it is idle, so that a dead
    peer or a NAT that forgot it is noticed within a minute
    (L{KEEPALIVE_IDLE} + L{KEEPALIVE_COUNT} x L{KEEPALIVE_INTERVAL} s).
    """
    tcp = ITCPTransport(transport, None)
    if tcp is None:
        return
    tcp.setTcpKeepAlive(True)
    handle = getattr(tcp, "getHandle", lambda: None)()
    if isinstance(handle, socket.socket) and hasattr(socket, "TCP_KEEPIDLE"):
        handle.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
        handle.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
        handle.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)


def setNoDelay(transport: object) -> None:
    """
    Turn Nagle off where the transport is TCP: a relay hop must not hold
    small writes back (an interactive ssh session through three hops would
    otherwise wait on delayed ACKs at each).
    """
    tcp = ITCPTransport(transport, None)
    if tcp is not None:
        tcp.setTcpNoDelay(True)


@implementer(IHandshakeListener)
class Channel(amp.AMP):
    """
    A control connection: AMP over TLS (or plain TCP in tests), that says
    when its TLS is up, drops a peer that sends garbage with one log line,
    answers pings and never starts TLS again mid-connection.
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
        # lost), which bury the useful ones.
        amp.BinaryBoxProtocol.makeConnection(self, transport)

    def connectionLost(self, reason: Failure = _CLEAN_CLOSE) -> None:
        self.connected = False
        self._settle(reason)
        amp.BinaryBoxProtocol.connectionLost(self, reason)

    def dataReceived(self, data: bytes) -> None:
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

    @Ping.responder
    def _ping(self) -> dict[str, object]:
        return {}

    def dispatchCommand(self, box: amp.AmpBox) -> Deferred[Any]:
        # AMP parses a command's arguments before it attaches the errback
        # that turns the command's declared errors into answers: a
        # malformed argument (wire._Command raises BadRequest for it) would
        # otherwise be an unhandled error, a traceback in the log.
        return super().dispatchCommand(box).addErrback(self._malformed)

    def _malformed(self, failure: Failure) -> Failure:
        if failure.check(BadRequest):
            _log.warn(
                "{peer} sent a malformed command: {why}",
                peer=self.transport.getPeer(),
                why=failure.getErrorMessage(),
            )
            return Failure(
                amp.RemoteAmpError(b"BAD_REQUEST", failure.getErrorMessage(), local=failure)
            )
        return failure

    def locateResponder(self, name: bytes) -> Any:
        # Stock AMP answers StartTLS; TLS here is set up by the endpoints,
        # and a peer must not be able to start it again mid-connection.
        if name == amp.StartTLS.commandName:
            return None
        return super().locateResponder(name)
