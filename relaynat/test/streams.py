"""
Test peers that send and check byte streams: a bulk sender-receiver that
hashes both directions, an echo server, and a reader that can be paused.
"""

from __future__ import annotations

import hashlib
import random
from typing import cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableProtocol,
    IPushProducer,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer


@implementer(IHalfCloseableProtocol, IPushProducer)
class Bulk(Protocol):
    """
    Sends C{size} pseudo-random bytes (from C{seed}) as fast as flow control
    lets it, then shuts its write side; hashes what it sends and receives.
    C{finished} fires with this protocol when the connection is gone.
    """

    def __init__(self, size: int, seed: int, chunk: int = 65536) -> None:
        self.toSend = size
        self.rng = random.Random(seed)
        self.chunk = chunk
        self.sentHash = hashlib.sha256()
        self.gotHash = hashlib.sha256()
        self.sentBytes = 0
        self.gotBytes = 0
        self.paused = False
        self.eof = False
        self.writeClosed = False
        self.reason: Failure | None = None
        self.finished: Deferred[Bulk] = Deferred()

    def connectionMade(self) -> None:
        cast(IConsumer, self.transport).registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self) -> None:
        assert self.transport is not None
        self.paused = False
        while not self.paused and self.toSend > 0:
            n = min(self.chunk, self.toSend)
            data = self.rng.randbytes(n)
            self.sentHash.update(data)
            self.toSend -= n
            self.sentBytes += n
            self.transport.write(data)
        if self.toSend == 0 and not self.writeClosed:
            self.writeClosed = True
            cast(IConsumer, self.transport).unregisterProducer()
            cast(ITCPTransport, self.transport).loseWriteConnection()

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.paused = True
        self.toSend = 0

    def dataReceived(self, data: bytes) -> None:
        self.gotHash.update(data)
        self.gotBytes += len(data)

    def readConnectionLost(self) -> None:
        self.eof = True
        self._closeIfDone()

    def writeConnectionLost(self) -> None:
        self._closeIfDone()

    def _closeIfDone(self) -> None:
        if self.eof and self.writeClosed and self.toSend == 0:
            assert self.transport is not None
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.reason = reason
        self.finished.callback(self)


def expectedDigest(size: int, seed: int, chunk: int = 65536) -> str:
    """The sha256 of what C{Bulk(size, seed, chunk)} sends."""
    rng, h = random.Random(seed), hashlib.sha256()
    while size > 0:
        n = min(chunk, size)
        h.update(rng.randbytes(n))
        size -= n
    return h.hexdigest()


class BulkFactory(Factory):
    """Serves a L{Bulk} per connection and keeps them for the test to check."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed = size, seed
        self.made: list[Bulk] = []

    def buildProtocol(self, addr: object) -> Bulk:
        bulk = Bulk(self.size, self.seed)
        self.made.append(bulk)
        return bulk


@implementer(IHalfCloseableProtocol)
class Echo(Protocol):
    """Echoes everything; passes the peer's end-of-stream back."""

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def readConnectionLost(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


class Collect(Protocol):
    """
    Sends C{message} on connect (and shuts its write side if C{halfClose}),
    collects everything back; C{finished} fires with the bytes at close.
    """

    def __init__(self, message: bytes = b"", halfClose: bool = False) -> None:
        self.message = message
        self.halfClose = halfClose
        self.received: list[bytes] = []
        self.reason: Failure | None = None
        self.finished: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        if self.message:
            cast(ITCPTransport, self.transport).write(self.message)
        if self.halfClose:
            cast(ITCPTransport, self.transport).loseWriteConnection()

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.reason = reason
        self.finished.callback(b"".join(self.received))


@implementer(IHalfCloseableProtocol)
class ReplyAtEnd(Protocol):
    """
    Reads until the peer shuts its write side, then answers with the length
    of what it read and C{replySize} bytes, and closes: a server that only
    works if half-close is carried through.
    """

    def __init__(self, replySize: int) -> None:
        self.replySize = replySize
        self.got = 0

    def dataReceived(self, data: bytes) -> None:
        self.got += len(data)

    def readConnectionLost(self) -> None:
        assert self.transport is not None
        self.transport.write(b"%d\n" % self.got)
        self.transport.write(b"r" * self.replySize)
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


@implementer(IHalfCloseableProtocol)
class Stalled(Protocol):
    """
    A peer that stops reading as soon as it is connected, until the test
    calls L{resume}; it hashes what it reads and closes at end-of-stream.
    """

    factory: StalledFactory

    def connectionMade(self) -> None:
        self.got = 0
        self.gotHash = hashlib.sha256()
        self.finished: Deferred[None] = Deferred()
        cast(IPushProducer, self.transport).pauseProducing()
        self.factory.made.append(self)

    def resume(self) -> None:
        cast(IPushProducer, self.transport).resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        self.got += len(data)
        self.gotHash.update(data)

    def readConnectionLost(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.finished.callback(None)


class StalledFactory(Factory[Stalled]):
    protocol = Stalled

    def __init__(self) -> None:
        self.made: list[Stalled] = []
