"""
Splicing: two connections joined so that what one reads the other writes,
with flow control, half-close and resets passed on, in both directions.

A connection to be spliced runs a L{SpliceHalf} (or a subclass that does
its own setup first); until it is spliced, what it reads is kept and its
transport paused.  L{splice} joins two halves: in the kernel
(L{relaynat.kernel}) when both are TCP sockets on Linux and their bytes pass
unchanged, else here with producers (L{ProtocolSplice}), which can also seal
the bytes between one side and the other (L{relaynat.seal}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.abstract import FileDescriptor
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from zope.interface import implementer

from relaynat import kernel
from relaynat.seal import BEGIN, DATA, END, REFUSED, TARGET_REFUSED, SealBroken, Sealed
from relaynat.sealedsplice import sealedSplice
from relaynat.channel import setNoDelay

_log = Logger()

#: How a splice ended (see L{kernel.Outcome}).
Outcome = kernel.Outcome
Finished = Callable[[Any, Outcome], None]

#: Bytes a spliced connection reads at a time, and buffers for writing
#: before it pauses its peer (Twisted's default is 64 KiB for both): each
#: read costs a reactor turn, so larger reads carry bulk data for less CPU.
READ_SIZE = 2**18


def readLarge(transport: object) -> None:
    """Give the TCP connection under C{transport} (TLS or not) L{READ_SIZE}."""
    while isinstance(transport, ProtocolWrapper):
        transport = transport.transport
    if isinstance(transport, FileDescriptor):
        transport.bufferSize = READ_SIZE


@implementer(IHalfCloseableProtocol)
class SpliceHalf(Protocol):
    """
    One connection of a splice.  Before L{splice} joins it, bytes it reads
    are kept (L{keep}) and its end-of-stream noted; after, they go to the
    splice.
    """

    # A TCP transport: also a consumer, a push producer, abortable.
    transport: Any
    splice: Any = None

    def __init__(self, name: str) -> None:
        self.name = name
        self.early: list[bytes] = []
        self.earlyEnd = False
        self.lost: Failure | None = None

    def connectionMade(self) -> None:
        setNoDelay(self.transport)
        readLarge(self.transport)

    def taken(self) -> tuple[str, Any, bytes]:
        """This half for the descriptor engine: its name, transport and what it kept."""
        early, self.early = b"".join(self.early), []
        return self.name, self.transport, early

    def keep(self, data: bytes) -> None:
        """Hold C{data} for the splice, and hold further bytes back in the kernel."""
        if data:
            self.early.append(data)
        self.transport.pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.splice is not None:
            self.splice.received(self, data)
        else:
            self.keep(data)

    def readConnectionLost(self) -> None:
        if self.splice is not None:
            self.splice.readEnded(self)
        else:
            self.earlyEnd = True

    def writeConnectionLost(self) -> None:
        if self.splice is not None:
            self.splice.writeEnded(self)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.connected = False
        self.lost = reason
        if self.splice is not None:
            self.splice.lost(self, reason)
        else:
            self.lostBeforeSplice(reason)

    def lostBeforeSplice(self, reason: Failure) -> None:
        """The connection ended before it was spliced."""


def splice(
    reactor: Any,
    a: SpliceHalf,
    b: SpliceHalf,
    finished: Finished,
    seal: Sealed | None = None,
    expectBegin: bool = False,
    ended: Callable[[str], None] | None = None,
    first: Callable[[bytes], bytes | None] | None = None,
) -> Any:
    """
    Join C{a} and C{b}; with C{seal}, C{a} is plain and C{b} carries its
    bytes as sealed records (this end's L{BEGIN} first; the far end's
    first record must be L{BEGIN} when C{expectBegin}).  Without, C{first}
    reads the start of what C{b} sends (see L{kernel.FirstRecordDirection}).
    C{finished} is told how it ended, once, when both connections are
    closed or being closed; C{ended} the name of each side whose stream ends
    in order.
    """
    if seal is None and kernel.available(a.transport) and kernel.available(b.transport):
        joined: Any = _DescriptorHalves(
            a, b, finished,
            lambda done: kernel.kernelSplice(
                reactor, a.taken(), b.taken(), done, ended=ended, first=first
            ),
        )
    elif seal is not None and kernel.takeable(a.transport) and kernel.takeable(b.transport):
        joined = _DescriptorHalves(
            a, b, finished,
            lambda done: sealedSplice(
                reactor, a.taken(), b.taken(), seal, done, expectBegin, ended=ended
            ),
        )
    else:
        joined = ProtocolSplice(a, b, finished, seal, expectBegin, ended, first)
    joined.start()
    return joined


class _DescriptorHalves:
    """
    Two halves whose sockets the descriptor engine takes over (in the
    kernel, or sealed), once their protocols are done reading.
    """

    def __init__(
        self,
        a: SpliceHalf,
        b: SpliceHalf,
        finished: Finished,
        build: Callable[[Callable[[Any, Outcome], None]], kernel.DescriptorSplice],
    ) -> None:
        self.a, self.b = a, b
        self._finished = finished
        self.engine = build(lambda _, outcome: self._finished(self, outcome))

    def start(self) -> None:
        self.a.splice = self.b.splice = self
        self.engine.start()

    def carried(self, name: str) -> int:
        return self.engine.carried(name)

    def lost(self, half: SpliceHalf, reason: Failure) -> None:
        """The engine handed the socket back and it closed (or was closed under it)."""
        if not self.engine.over:
            self.engine.cut(half.name, reason.getErrorMessage())

    def cut(self, half: SpliceHalf, why: str) -> None:
        """End both connections with a reset: C{half} failed, for C{why}."""
        self.engine.cut(half.name, why)

    def received(self, half: SpliceHalf, data: bytes) -> None:
        raise AssertionError("a transport taken over does not read")

    def readEnded(self, half: SpliceHalf) -> None:
        """The engine reads the end-of-stream itself."""

    def writeEnded(self, half: SpliceHalf) -> None:
        """The engine ends the write side itself."""


class ProtocolSplice:
    """
    Two halves spliced by their protocols: each transport is the other's
    producer, so a slow reader on one side pauses reading on the other, and
    nothing but the transports' buffers holds bytes in between.  With a
    seal, C{b}'s bytes are records: L{DATA} carries, L{END} is the
    end-of-stream, and a stream that stops without L{END}, or a record the
    seal refuses, cuts the tunnel.
    """

    def __init__(
        self,
        a: SpliceHalf,
        b: SpliceHalf,
        finished: Finished,
        seal: Sealed | None = None,
        expectBegin: bool = False,
        ended: Callable[[str], None] | None = None,
        first: Callable[[bytes], bytes | None] | None = None,
    ) -> None:
        self.a, self.b = a, b
        self._first = first
        self.seal = seal
        self._expectBegin = expectBegin and seal is not None
        self._finished = finished
        self._ended = ended
        self._carried = {a.name: 0, b.name: 0}
        #: Directions whose end has been passed on, by source name.
        self._endsPassed: set[str] = set()
        self._writeClosed: set[str] = set()
        self._reported = False
        self._outcome: Outcome = None
        self.over = False

    def carried(self, name: str) -> int:
        return self._carried[name]

    def other(self, half: SpliceHalf) -> SpliceHalf:
        return self.b if half is self.a else self.a

    def start(self) -> None:
        a, b = self.a, self.b
        a.splice = b.splice = self
        a.transport.registerProducer(b.transport, True)
        b.transport.registerProducer(a.transport, True)
        if self.seal is not None:
            b.transport.write(self.seal.writer.record(BEGIN))
        for half in (a, b):
            early, half.early = half.early, []
            for data in early:
                if not self.over:
                    self.received(half, data)
        for half in (a, b):
            if self.over:
                return
            if half.earlyEnd:
                self.readEnded(half)
            else:
                half.transport.resumeProducing()

    def received(self, half: SpliceHalf, data: bytes) -> None:
        if self.over:
            return
        self._carried[half.name] += len(data)
        if half is self.b and self._first is not None:
            try:
                rest = self._first(data)
            except Exception as e:
                self.cut(self.b, str(e))
                return
            if rest is None:
                return
            self._first = None
            data = rest
        if self.seal is None:
            self.other(half).transport.write(data)
        elif half is self.a:
            self.b.transport.writeSequence(self.seal.writer.data(data))
        else:
            self._open(data)

    def _open(self, data: bytes) -> None:
        assert self.seal is not None
        try:
            records = self.seal.reader.feed(data)
        except SealBroken as e:
            self.cut(self.b, str(e))
            return
        for kind, body in records:
            if self._expectBegin:
                self._expectBegin = False
                if kind == REFUSED:
                    self.cut(self.b, TARGET_REFUSED)
                    return
                if kind != BEGIN:
                    self.cut(self.b, "the tunnel did not start with its first record")
                    return
            elif kind == DATA:
                self.a.transport.write(body)
            elif kind == END:
                self._passEnd(self.b)
            else:
                self.cut(self.b, "a record out of place")
                return

    def readEnded(self, half: SpliceHalf) -> None:
        if self.over:
            return
        if half is self.b and self._first is not None:
            self.cut(self.b, "the stream ended before the far end's first record")
            return
        if self.seal is not None and half is self.b:
            if not self.seal.reader.ended:
                # Only the far end's authenticated end record ends the
                # stream: a bare FIN may come from anyone on the way.
                self.cut(self.b, "the tunnel's stream stopped without its end record")
            return
        self._passEnd(half)

    def _passEnd(self, source: SpliceHalf) -> None:
        if source.name in self._endsPassed:
            return
        self._endsPassed.add(source.name)
        if self._ended is not None:
            self._ended(source.name)
        sink = self.other(source)
        # Nothing more comes from the source, so the sink no longer
        # consumes from it.
        sink.transport.unregisterProducer()
        if self.seal is not None and sink is self.b:
            sink.transport.write(self.seal.writer.record(END))
            self._writeClosed.add(sink.name)
        else:
            sink.transport.loseWriteConnection()
        self._closeIfDone()

    def writeEnded(self, half: SpliceHalf) -> None:
        self._writeClosed.add(half.name)
        self._closeIfDone()

    def _closeIfDone(self) -> None:
        if len(self._endsPassed) == 2 and len(self._writeClosed) == 2:
            for half in (self.a, self.b):
                half.transport.loseConnection()

    def cut(self, half: SpliceHalf, why: str) -> None:
        """End both connections with a reset: C{half} failed, for C{why}."""
        if self._outcome is None:
            self._outcome = (half.name, why)
        self.over = True
        for each in (self.a, self.b):
            if each.lost is None:
                each.transport.abortConnection()

    def lost(self, half: SpliceHalf, reason: Failure) -> None:
        if not self.over:
            clean = reason.check(ConnectionDone) is not None
            if self.seal is not None and half is self.b and len(self._endsPassed) < 2:
                # The sealed stream closed before both ends were said: cut.
                self.cut(half, reason.getErrorMessage() if not clean else "the tunnel's stream stopped without its end record")
            elif clean:
                # A peer that closed: what is buffered for the other side is
                # still written before that closes too.
                other = self.other(half)
                other.transport.unregisterProducer()
                if other.lost is None:
                    other.transport.loseConnection()
            else:
                self.cut(half, reason.getErrorMessage())
        # Closing one side may close the other at once, in a nested call:
        # the last of the two reports.
        if self.a.lost is not None and self.b.lost is not None and not self._reported:
            self._reported = True
            self._finished(self, self._outcome)


class OneProtocolFactory(Factory):
    """
    A factory that hands out one protocol built in advance: how a splice half
    is given to a connection attempt.
    """

    # Made once per connection: Factory's start/stop lines would be two log
    # lines per tunnel.
    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return self._protocol

    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        """A connection that failed leaves nothing to clean up here."""

    def clientConnectionLost(self, connector: object, reason: Failure) -> None:
        """The half itself hears of the loss through connectionLost."""
