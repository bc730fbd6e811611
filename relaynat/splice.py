"""
Splicing: two connections joined so that bytes read from one are written to
the other, with flow control and half-close in both directions.

Each role builds a pair with L{splicePair} before either connection is ready
(a local connection and the relay connection at the client, the client's and
the skeleton's connections at the relay, the relay connection and the target
at the skeleton); whichever half connects first waits, paused, for the other.
"""

from __future__ import annotations

from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from relaynat.wire import setNoDelay


class SpliceObserver(TypingProtocol):
    """Told how a splice ends, for accounting and logs."""

    def ended(self, half: SpliceHalf) -> None:
        """C{half} will read no more: end-of-stream, or its connection lost."""

    def lost(self, half: SpliceHalf, reason: Failure) -> None:
        """C{half}'s connection is gone."""


@implementer(IHalfCloseableProtocol)
class SpliceHalf(Protocol):
    """
    One end of a splice: what its transport reads goes to C{peer}'s
    transport.  The peer's transport is registered as a streaming producer on
    ours, so a slow reader here pauses reading there, and nothing but the
    transports' own buffers (64 KiB each) holds bytes in between.
    """

    peer: SpliceHalf
    observer: SpliceObserver | None = None
    # A TCP or TLS transport: also a consumer, a push producer, abortable.
    transport: Any

    def __init__(self, name: str) -> None:
        self.name = name
        self.received = 0
        self.ended = False
        self.linked = False
        self.readClosed = False
        self.writeClosed = False
        self.lost: Failure | None = None
        self._early: list[bytes] = []

    def abandon(self) -> None:
        """
        Close this half's connection because its peer will never come: the
        join failed after this side was connected.
        """
        if self.transport is not None and self.lost is None:
            self.transport.loseConnection()

    def connectionMade(self) -> None:
        setNoDelay(self.transport)
        if self.peer.connected and self.peer.lost is None:
            _link(self.peer, self)
        elif self.peer.lost is not None:
            self.transport.loseConnection()
        else:
            # Hold the bytes back in the kernel, not here, until the peer
            # exists to take them.
            self.transport.pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if self.linked:
            self.peer.transport.write(data)
        else:
            self._early.append(data)

    def readConnectionLost(self) -> None:
        self.readClosed = True
        self._end()
        if self.linked:
            self._forwardEnd()
        self._closeIfDone()

    def writeConnectionLost(self) -> None:
        self.writeClosed = True
        self._closeIfDone()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.connected = False
        self.lost = reason
        self._end()
        if self.peer.connected:
            peer = self.peer.transport
            if self.linked:
                peer.unregisterProducer()
            if reason.check(ConnectionDone):
                # Pending bytes are written before the peer's socket closes.
                peer.loseConnection()
            else:
                # A reset passes on as a reset, as it would without a relay in
                # between; waiting to flush could wait on a reader forever.
                peer.abortConnection()
        if self.observer is not None:
            self.observer.lost(self, reason)

    def _end(self) -> None:
        if not self.ended:
            self.ended = True
            if self.observer is not None:
                self.observer.ended(self)

    def _forwardEnd(self) -> None:
        # Nothing more will be read here, so the peer's transport no longer
        # consumes from ours; shutting its write side passes the end on after
        # whatever it still buffers.
        peer = self.peer.transport
        peer.unregisterProducer()
        peer.loseWriteConnection()

    def _closeIfDone(self) -> None:
        if self.readClosed and self.writeClosed:
            self.transport.loseConnection()


def _link(a: SpliceHalf, b: SpliceHalf) -> None:
    a.linked = b.linked = True
    a.transport.registerProducer(b.transport, True)
    b.transport.registerProducer(a.transport, True)
    for half in (a, b):
        early, half._early = half._early, []
        if early:
            half.peer.transport.write(b"".join(early))
    for half in (a, b):
        if half.readClosed:
            half._forwardEnd()
        else:
            half.transport.resumeProducing()


def splicePair(
    aName: str = "a", bName: str = "b", aClass: type[SpliceHalf] = SpliceHalf
) -> tuple[SpliceHalf, SpliceHalf]:
    """Two halves that will splice their connections once both are made."""
    a, b = aClass(aName), SpliceHalf(bName)
    a.peer, b.peer = b, a
    return a, b


class OneProtocolFactory(Factory):
    """
    A factory that hands out one protocol built in advance: how a splice half
    is given to a connection attempt or to a L{ProtocolSwitchCommand}.
    """

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return self._protocol

    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        """A switch that was refused leaves nothing to clean up here."""

    def clientConnectionLost(self, connector: object, reason: Failure) -> None:
        """The half itself hears of the loss through connectionLost."""
