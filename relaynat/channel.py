"""
The AMP base class that every control connection speaks, and the socket
settings every tunnel connection gets.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IConsumer, IHandshakeListener, ISSLTransport, ITCPTransport
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


#: Seconds a control connection closed by this end may wait for its peer's
#: TLS close_notify: past them it is aborted.  A peer that never answers
#: (gone, or hostile) must not hold a descriptor.
CLOSE_GRACE = 2.0


def setNoDelay(transport: object) -> None:
    """
    Turn Nagle off where the transport is TCP: a relay hop must not hold
    small writes back (an interactive ssh session through three hops would
    otherwise wait on delayed ACKs at each).
    """
    tcp = ITCPTransport(transport, None)
    if tcp is not None:
        tcp.setTcpNoDelay(True)


#: The most keys in one AMP box: no command here has more than six, with
#: AMP's own three.  With AMP's limit of 64 KiB a value, this and
#: L{Channel.boxLimit} bound what a peer can make a box cost.
MAX_BOX_KEYS = 16

#: The most bytes of one box (keys, values and their lengths), by default.
MAX_BOX_BYTES = 256 * 1024


@implementer(IHandshakeListener)
class Channel(amp.AMP):
    """
    A control connection: AMP over TLS (or plain TCP in tests), that says
    when its TLS is up, drops a peer that sends garbage with one log line,
    answers pings and never starts TLS again mid-connection.

    What a peer sends is bounded: a box of more than L{MAX_BOX_KEYS} keys or
    L{boxLimit} bytes drops the connection, and while the answers already
    written wait for a peer that does not read them, no more of its commands
    are read (the channel is the producer of its TCP connection, whose send
    buffer pauses it), so neither grows without bound.
    """

    # A TCP or TLS transport: also a consumer, a push producer, and
    # abortable, which ITransport alone does not say.
    transport: Any

    def __init__(self) -> None:
        super().__init__()
        self._secure: bool | Failure = False
        self._waiting: list[Deferred[None]] = []
        self._boxKeys = 0
        self._boxBytes = 0
        self._dropped = False
        self._closeTimer: Any = None

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
        self._produceFor(self.transport)
        super().connectionMade()

    def _produceFor(self, transport: Any) -> None:
        # Registered with the TCP connection under TLS, not with TLS: TLS
        # would hold its close_notify back until the producer unregisters,
        # and its own buffer is only ever one reactor turn of writes.
        if ISSLTransport(transport, None) is not None:
            transport = getattr(transport, "transport", None)
        if IConsumer(transport, None) is not None and getattr(transport, "producer", None) is None:
            transport.registerProducer(self, True)

    def boxLimit(self) -> int:
        """The most bytes one box from the peer may have now."""
        return MAX_BOX_BYTES

    def proto_init(self, string: bytes) -> str:
        self._boxKeys = self._boxBytes = 0
        return super().proto_init(string)  # type: ignore[no-any-return]

    def proto_key(self, string: bytes) -> str:
        if string:
            self._boxKeys += 1
            if self._boxKeys > MAX_BOX_KEYS:
                return self._tooBig(f"more than {MAX_BOX_KEYS} keys")
        return self._countBox(string, super().proto_key)

    def proto_value(self, string: bytes) -> str:
        return self._countBox(string, super().proto_value)

    def _countBox(self, string: bytes, parse: Any) -> str:
        self._boxBytes += 2 + len(string)
        if self._boxBytes > self.boxLimit():
            return self._tooBig(f"more than {self.boxLimit()} bytes")
        state: str = parse(string)
        if state == "init":
            self._boxKeys = self._boxBytes = 0
        return state

    def warnPeer(self, kind: str, format: str, **fields: Any) -> None:
        """
        Warn of what the peer did wrong (C{kind} of mistake, the line's
        C{format} and fields).  Here a plain warning; the relay's channels,
        whose peers are anyone on the Internet, bound them by C{kind}
        (L{relaynat.lograte}).
        """
        _log.warn(format, **fields)

    def _tooBig(self, why: str) -> str:
        self.warnPeer(
            "AMP boxes too big",
            "dropping {peer}: an AMP box of {why}",
            peer=self.transport.getPeer(),
            why=why,
        )
        self._drop()
        return "dropped"

    def proto_dropped(self, string: bytes) -> str:
        return "dropped"

    def _drop(self) -> None:
        self._dropped = True
        # Stops the parse of what is already buffered, box by box.
        self.paused = True
        self.transport.abortConnection()

    def makeConnection(self, transport: Any) -> None:
        # AMP's own makeConnection logs two lines per connection (made and
        # lost), which bury the useful ones.
        amp.BinaryBoxProtocol.makeConnection(self, transport)

    def closeSoon(self, clock: Any, grace: float = CLOSE_GRACE) -> None:
        """
        Close: TLS says goodbye, and the connection is aborted if the peer
        has not answered in C{grace} seconds.
        """
        if not self.connected or self._closeTimer is not None:
            return
        self.transport.loseConnection()
        self._closeTimer = clock.callLater(grace, self.transport.abortConnection)

    def connectionLost(self, reason: Failure = _CLEAN_CLOSE) -> None:
        if self._closeTimer is not None and self._closeTimer.active():
            self._closeTimer.cancel()
        self.connected = False
        self._settle(reason)
        amp.BinaryBoxProtocol.connectionLost(self, reason)

    def dataReceived(self, data: bytes) -> None:
        if self._dropped:
            return
        try:
            super().dataReceived(data)
        except Exception as e:
            # Stock AMP lets some malformed boxes raise (an empty box, an
            # answer to no question, a command name that is not UTF-8); a
            # peer sending garbage is dropped with one line, not a traceback.
            self.warnPeer(
                "malformed AMP",
                "dropping {peer}: malformed AMP: {error}",
                peer=self.transport.getPeer(),
                error=repr(e)[:200],
            )
            self._drop()

    def resumeProducing(self) -> None:
        if not self._dropped:
            super().resumeProducing()

    def unhandledError(self, failure: Failure) -> None:
        # A command the peer sent without asking for an answer, which failed
        # (nobody handles it, its arguments do not parse): the peer's
        # mistake, one line; anything else is this program's, a traceback.
        if failure.check(amp.RemoteAmpError):
            self.warnPeer(
                "commands that failed unanswered",
                "dropping {peer}: {why}",
                peer=self.transport.getPeer(),
                why=failure.getErrorMessage()[:200],
            )
            self._drop()
            return
        super().unhandledError(failure)

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
            self.warnPeer(
                "malformed commands",
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
