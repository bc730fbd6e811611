"""
Splicing in the kernel: two TCP connections joined with C{splice(2)}
through a pipe, so that their bytes never enter this process; and the
engine it runs on, which moves bytes between two sockets taken over from
their Twisted transports (L{relaynat.sealedsplice} runs on it too).

Twisted keeps owning both sockets: their transports stop reading and
writing, the engine registers its own descriptors for the same file numbers
with the reactor while bytes flow, and gives the sockets back to the
transports at the end to be closed (orderly when both directions ended,
with a reset when either side was cut).  Flow control is the kernel's: a
direction reads only once what it read before is written, so a stalled
reader leaves the bytes in socket buffers and at most one pipe (or buffer)
per direction.  Pipes are taken from a shared pool while bytes are in
flight and given back once empty, so an idle tunnel holds none.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReadWriteDescriptor
from twisted.internet.tcp import Connection
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

_log = Logger()

#: What one pipe holds, and so what one splice moves at most: 1 MiB, the
#: kernel's pipe-max-size.  Measured (bench/run.py --quick, two runs each):
#: not sealed, 952/1047 and 1022/1044 MB/s with 128 KiB pipes, 1349/1426
#: and 1381/1488 with 1 MiB, as fast as haproxy forced to splice.
PIPE_SIZE = 2**20

#: Kernel memory the pool's large pipes may take in all; pipes made past it
#: keep the kernel's default size (64 KiB).  A user's pipes may take
#: fs.pipe-user-pages-soft (64 MiB here) before the kernel gives one-page
#: pipes, slow but right: this keeps a relay below that, large pipes going
#: to the tunnels that start moving bytes first.
PIPE_BUDGET = 32 * 2**20

#: The default size of a pipe, which costs nothing to ask for.
DEFAULT_PIPE = 2**16

#: Idle pipes the pool keeps for reuse; more are closed when given back.
POOL_LIMIT = 16

_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK if hasattr(os, "splice") else 0

#: Errors that mean the connection was cut (by its peer or the network).
_CUT = {errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH}


def _socketOf(transport: object) -> socket.socket | None:
    if not isinstance(transport, Connection):
        return None
    handle = transport.getHandle()
    return handle if isinstance(handle, socket.socket) else None


def available(transport: object) -> bool:
    """Can this transport be spliced in the kernel? (A TCP socket on Linux.)"""
    handle = _socketOf(transport)
    return (
        hasattr(os, "splice")
        and handle is not None
        and handle.family in (socket.AF_INET, socket.AF_INET6)
    )


def takeable(transport: object) -> bool:
    """Can the engine take this transport's socket over? (Any stream socket.)"""
    return _socketOf(transport) is not None


def describe(error: BaseException) -> str:
    """What a failed socket call says, as a log line."""
    if isinstance(error, OSError) and error.errno in _CUT:
        return os.strerror(error.errno)
    return str(error)


class Pipe:
    """A pipe's two ends and how much it holds."""

    __slots__ = ("read", "write", "size")

    def __init__(self, read: int, write: int, size: int) -> None:
        self.read, self.write, self.size = read, write, size


class PipePool:
    """
    Pipes for splicing: made when needed, reused when empty, closed at the
    end; large (C{size}) while their memory stays under C{budget}.
    """

    def __init__(
        self, size: int = PIPE_SIZE, limit: int = POOL_LIMIT, budget: int = PIPE_BUDGET
    ) -> None:
        self.size = size
        self.limit = limit
        self.budget = budget
        self._idle: list[Pipe] = []
        #: Pipes taken and not given back.
        self.inUse = 0
        #: Kernel memory of the pipes made and not closed, large ones only.
        self._large = 0

    def take(self) -> Pipe:
        self.inUse += 1
        if self._idle:
            return self._idle.pop()
        read, write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        size = DEFAULT_PIPE
        if self._large + self.size <= self.budget:
            try:
                size = fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, self.size)
            except OSError:
                # Past fs.pipe-user-pages-soft: the kernel's own size.
                size = fcntl.fcntl(write, fcntl.F_GETPIPE_SZ)
            if size > DEFAULT_PIPE:
                self._large += size
        return Pipe(read, write, size)

    def give(self, pipe: Pipe, empty: bool = True) -> None:
        self.inUse -= 1
        if empty and len(self._idle) < self.limit:
            self._idle.append(pipe)
        else:
            self._close(pipe)

    def _close(self, pipe: Pipe) -> None:
        if pipe.size > DEFAULT_PIPE:
            self._large -= pipe.size
        os.close(pipe.read)
        os.close(pipe.write)

    def idle(self) -> int:
        return len(self._idle)

    def close(self) -> None:
        while self._idle:
            self._close(self._idle.pop())


_POOL: PipePool | None = None


def sharedPool() -> PipePool:
    """The process's pipe pool."""
    global _POOL
    if _POOL is None:
        _POOL = PipePool()
    return _POOL


@implementer(IReadWriteDescriptor)
class SplicedSocket:
    """One socket taken over by the engine, as the reactor sees it while bytes flow."""

    def __init__(self, splice: DescriptorSplice, name: str, transport: Connection) -> None:
        self.splice = splice
        self.name = name
        self.transport = transport
        self.socket: socket.socket = transport.getHandle()
        self.fd = self.socket.fileno()
        #: The direction this socket feeds, and the one it is written by.
        self.outgoing: Direction
        self.incoming: Direction

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return f"splice {self.name}"

    def doRead(self) -> None:
        self.splice.fill(self.outgoing)

    def doWrite(self) -> None:
        self.splice.drain(self.incoming)

    def connectionLost(self, reason: Failure) -> None:
        # The reactor saw the socket hang up or fail while it was not being
        # read: the connection is gone.
        self.splice.cut(self.name, reason.getErrorMessage())


class Direction:
    """
    Bytes from one socket to the other.  The engine calls L{read} when the
    source is readable and nothing is held, then L{write} until all is
    written, then L{finish} once the source's stream has ended
    (C{sourceEnded}, set by L{read}) and all is written.
    """

    def __init__(self, source: SplicedSocket, sink: SplicedSocket) -> None:
        self.source, self.sink = source, sink
        self.sourceEnded = False
        self.done = False
        #: Bytes read from the source, as counted on the wire.
        self.carried = 0

    def read(self) -> None:
        """Read what is there (BlockingIOError if nothing); set C{sourceEnded} at its end."""
        raise NotImplementedError

    def write(self) -> bool:
        """Write what is held to the sink; True once all is written."""
        raise NotImplementedError

    def finish(self) -> None:
        """The source's stream ended and all is written: pass the end on."""
        self.sink.socket.shutdown(socket.SHUT_WR)

    def release(self) -> None:
        """The splice is over: give back what is held."""


class PipeDirection(Direction):
    """Through a pipe of the pool, with splice(2): the bytes stay in the kernel."""

    def __init__(
        self, source: SplicedSocket, sink: SplicedSocket, pool: PipePool, pending: bytes
    ) -> None:
        super().__init__(source, sink)
        self.pool = pool
        self.pipe: Pipe | None = None
        self.inPipe = 0
        #: What the source's protocol had read already: written first.
        self.pending = pending
        self.carried = len(pending)

    def read(self) -> None:
        if self.pipe is None:
            self.pipe = self.pool.take()
        try:
            n = os.splice(self.source.fd, self.pipe.write, self.pipe.size - self.inPipe, flags=_FLAGS)
        except BaseException:
            self._releaseIfEmpty()
            raise
        if n == 0:
            self.sourceEnded = True
        self.inPipe += n
        self.carried += n

    def write(self) -> bool:
        try:
            while self.pending:
                sent = self.sink.socket.send(self.pending)
                self.pending = self.pending[sent:]
            while self.inPipe:
                assert self.pipe is not None
                self.inPipe -= os.splice(self.pipe.read, self.sink.fd, self.inPipe, flags=_FLAGS)
        except BlockingIOError:
            return False
        self._releaseIfEmpty()
        return True

    def _releaseIfEmpty(self) -> None:
        if self.pipe is not None and self.inPipe == 0:
            self.pool.give(self.pipe)
            self.pipe = None

    def release(self) -> None:
        if self.pipe is not None:
            self.pool.give(self.pipe, empty=self.inPipe == 0)
            self.pipe = None


class FirstRecordDirection(PipeDirection):
    """
    A pipe direction that first reads the far end's first record itself,
    through C{first} (bytes in; None while the record is not whole, or the
    bytes after it; an exception if it says no): how a tunnel that is not
    sealed starts at the client, its bytes flowing out at once while the
    skeleton's answer is still on its way.
    """

    def __init__(
        self,
        source: SplicedSocket,
        sink: SplicedSocket,
        pool: PipePool,
        early: bytes,
        first: Callable[[bytes], bytes | None],
    ) -> None:
        super().__init__(source, sink, pool, b"")
        self._first: Callable[[bytes], bytes | None] | None = first
        if early:
            self._take(early)

    def _take(self, data: bytes) -> None:
        assert self._first is not None
        self.carried += len(data)
        rest = self._first(data)
        if rest is not None:
            self._first = None
            self.pending = rest

    def read(self) -> None:
        if self._first is None:
            super().read()
            return
        data = self.source.socket.recv(4096)
        if not data:
            raise ConnectionError("the stream ended before the far end's first record")
        self._take(data)


#: How a splice ended: None when both directions ended in order, else the
#: side whose connection failed (or sent what the seal refuses) and why.
Outcome = tuple[str, str] | None


class DescriptorSplice:
    """
    Two connected transports whose sockets this takes over, with a
    L{Direction} each way made by C{directions}.  C{finished} is called
    once, when both sockets are handed back for closing, with the error that
    cut the tunnel (the name of the side it came from and its message) or
    None; C{ended} with the name of each side whose stream ended in order.
    """

    def __init__(
        self,
        reactor: Any,
        a: tuple[str, Connection],
        b: tuple[str, Connection],
        directions: Callable[[SplicedSocket, SplicedSocket], tuple[Direction, Direction]],
        finished: Callable[[DescriptorSplice, Outcome], None],
        ended: Callable[[str], None] | None = None,
    ) -> None:
        self.reactor = reactor
        self._finished = finished
        self._ended = ended
        self.a = SplicedSocket(self, a[0], a[1])
        self.b = SplicedSocket(self, b[0], b[1])
        ab, ba = directions(self.a, self.b)
        self.a.outgoing = self.b.incoming = ab
        self.b.outgoing = self.a.incoming = ba
        self.over = False

    def carried(self, name: str) -> int:
        """Bytes read from side C{name}, on the wire."""
        end = self.a if name == self.a.name else self.b
        return end.outgoing.carried

    def start(self) -> None:
        for end in (self.a, self.b):
            end.transport.stopReading()
            end.transport.stopWriting()
        for direction in (self.a.outgoing, self.b.outgoing):
            self.drain(direction)

    def fill(self, d: Direction) -> None:
        """The source of C{d} is readable."""
        if self.over or d.sourceEnded:
            return
        try:
            d.read()
        except BlockingIOError:
            return
        except Exception as e:
            self.cut(d.source.name, describe(e))
            return
        if d.sourceEnded:
            self.reactor.removeReader(d.source)
            if self._ended is not None:
                self._ended(d.source.name)
        self.drain(d)

    def drain(self, d: Direction) -> None:
        """Write what C{d} holds, then read again, or pass its end on."""
        if self.over:
            return
        try:
            complete = d.write()
        except Exception as e:
            self.cut(d.sink.name, describe(e))
            return
        if not complete:
            # The sink is full: stop reading the source until it drains.
            self.reactor.removeReader(d.source)
            self.reactor.addWriter(d.sink)
            return
        self.reactor.removeWriter(d.sink)
        if d.sourceEnded:
            self._endDirection(d)
        else:
            self.reactor.addReader(d.source)

    def _endDirection(self, d: Direction) -> None:
        if d.done:
            return
        d.done = True
        try:
            d.finish()
        except OSError as e:
            self.cut(d.sink.name, describe(e))
            return
        if self.a.outgoing.done and self.b.outgoing.done:
            self._finish(None)

    def cut(self, name: str, why: str) -> None:
        """End the splice with a reset on both sides: side C{name} failed, for C{why}."""
        self._finish((name, why))

    def _finish(self, outcome: Outcome) -> None:
        if self.over:
            return
        self.over = True
        for end in (self.a, self.b):
            self.reactor.removeReader(end)
            self.reactor.removeWriter(end)
        for d in (self.a.outgoing, self.b.outgoing):
            d.release()
        self._finished(self, outcome)
        for end in (self.a, self.b):
            if outcome is None:
                end.transport.loseConnection()
            else:
                # A cut passes on as a reset, never as a clean end.
                end.transport.abortConnection()


def kernelSplice(
    reactor: Any,
    a: tuple[str, Connection, bytes],
    b: tuple[str, Connection, bytes],
    finished: Callable[[DescriptorSplice, Outcome], None],
    pool: PipePool | None = None,
    ended: Callable[[str], None] | None = None,
    first: Callable[[bytes], bytes | None] | None = None,
) -> DescriptorSplice:
    """
    C{a} and C{b} spliced both ways in the kernel; the bytes their protocols
    read already (the third of each triple) go to the other side first.
    With C{first}, what C{b} sends starts with a record for it to read
    (L{FirstRecordDirection}).
    """
    pipes = pool if pool is not None else sharedPool()

    def directions(x: SplicedSocket, y: SplicedSocket) -> tuple[Direction, Direction]:
        back: Direction
        if first is None:
            back = PipeDirection(y, x, pipes, b[2])
        else:
            back = FirstRecordDirection(y, x, pipes, b[2], first)
        return PipeDirection(x, y, pipes, a[2]), back

    return DescriptorSplice(reactor, a[:2], b[:2], directions, finished, ended)  # type: ignore[arg-type]
