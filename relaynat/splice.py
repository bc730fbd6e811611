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

from twisted.internet.abstract import FileDescriptor
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from zope.interface import implementer

from relaynat.wire import setNoDelay

_log = Logger()


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
    transports' own buffers (L{READ_SIZE} each) holds bytes in between.
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
        readLarge(self.transport)
        if self.peer.connected and self.peer.lost is None:
            _link(self.peer, self)
        elif self.peer.lost is not None:
            self.transport.loseConnection()
        else:
            # Hold the bytes back in the kernel, not here, until the peer
            # exists to take them.
            self.transport.pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        if not self.linked:
            self._early.append(data)
            return
        self.received += len(data)
        self.peer.deliver(data)

    def deliver(self, data: bytes) -> None:
        """Write C{data}, read by the peer, to this half's connection."""
        self.transport.write(data)

    def deliverEnd(self) -> None:
        """The peer read its end-of-stream: pass it on after what is buffered."""
        # Nothing more will be read there, so this transport no longer
        # consumes from the peer's.
        self.transport.unregisterProducer()
        self.transport.loseWriteConnection()

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
        self.peer.deliverEnd()

    def _closeIfDone(self) -> None:
        if self.readClosed and self.writeClosed:
            self.transport.loseConnection()


#: Bytes a tunnel's connection reads at a time, and buffers for writing
#: before it pauses its peer (Twisted's default is 64 KiB for both).  Each
#: read costs a reactor turn and a pass through TLS in Python, so larger
#: reads carry bulk data for less CPU; beyond 256 KiB the bench showed no
#: more speed, only more memory held when a reader stalls.
READ_SIZE = 2**18


def readLarge(transport: object) -> None:
    """Give the TCP connection under C{transport} (TLS or not) L{READ_SIZE}."""
    while isinstance(transport, ProtocolWrapper):
        transport = transport.transport
    if isinstance(transport, FileDescriptor):
        transport.bufferSize = READ_SIZE


def _link(a: SpliceHalf, b: SpliceHalf) -> None:
    a.linked = b.linked = True
    a.transport.registerProducer(b.transport, True)
    b.transport.registerProducer(a.transport, True)
    for half in (a, b):
        early, half._early = half._early, []
        for data in early:
            half.dataReceived(data)
    for half in (a, b):
        if half.readClosed:
            half._forwardEnd()
        else:
            half.transport.resumeProducing()


class FramedHalf(SpliceHalf):
    """
    The relay-facing end of a tunnel at the client and at the skeleton.

    TLS as Twisted speaks it cannot shut one direction (there is no
    close_notify for the write side alone), yet a client that shuts its
    write side must still get the whole reply.  So the two ends frame the
    stream between them: a 4-byte big-endian length, then that many bytes;
    a length of zero is end-of-stream.  The relay splices the framed bytes
    untouched, and this end closes its connection once end-of-stream has
    passed both ways.
    """

    MAX_FRAME = 1 << 20

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._header = b""
        self._remaining = 0

    def deliver(self, data: bytes) -> None:
        # One frame per read from the plain side: at most READ_SIZE, well
        # under MAX_FRAME.
        self.transport.writeSequence([len(data).to_bytes(4, "big"), data])

    def deliverEnd(self) -> None:
        self.transport.unregisterProducer()
        self.transport.write(b"\0\0\0\0")
        self.writeConnectionLost()

    def dataReceived(self, data: bytes) -> None:
        if not self.linked:
            self._early.append(data)
            return
        self.received += len(data)
        position, size = 0, len(data)
        while position < size:
            if self.readClosed:
                self._violation("bytes after end-of-stream")
                return
            if self._remaining:
                take = min(self._remaining, size - position)
                whole = position == 0 and take == size
                self.peer.deliver(data if whole else data[position : position + take])
                position += take
                self._remaining -= take
                continue
            need = 4 - len(self._header)
            self._header += data[position : position + need]
            position += need
            if len(self._header) < 4:
                return
            length = int.from_bytes(self._header, "big")
            self._header = b""
            if length == 0:
                # The far end's end-of-stream, as a TCP FIN would be.
                self.readConnectionLost()
            elif length > self.MAX_FRAME:
                self._violation(f"a frame of {length} bytes")
                return
            else:
                self._remaining = length

    def _violation(self, what: str) -> None:
        _log.warn("tunnel stream broken ({what}): closing it", what=what)
        self.transport.abortConnection()


def splicePair(
    aName: str = "a",
    bName: str = "b",
    aClass: type[SpliceHalf] = SpliceHalf,
    bClass: type[SpliceHalf] = SpliceHalf,
) -> tuple[SpliceHalf, SpliceHalf]:
    """Two halves that will splice their connections once both are made."""
    a, b = aClass(aName), bClass(bName)
    a.peer, b.peer = b, a
    return a, b


class OneProtocolFactory(Factory):
    """
    A factory that hands out one protocol built in advance: how a splice half
    is given to a connection attempt or to a L{ProtocolSwitchCommand}.
    """

    # Made once per connection: Factory's start/stop lines would be two log
    # lines per tunnel.
    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return self._protocol

    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        """A switch that was refused leaves nothing to clean up here."""

    def clientConnectionLost(self, connector: object, reason: Failure) -> None:
        """The half itself hears of the loss through connectionLost."""
