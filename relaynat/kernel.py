"""
Splicing in the kernel: two TCP connections joined with C{splice(2)}
through a pipe, so that their bytes never enter this process.

Twisted keeps owning both sockets: their transports stop reading and
writing, this module registers its own descriptors for the same file
numbers with the reactor while bytes flow, and gives the sockets back to
the transports at the end to be closed (orderly when both directions ended,
with a reset when either side was cut).  Flow control is the kernel's: a
direction reads only into an empty pipe and reads again only once the pipe
has drained into the other socket, so a stalled reader leaves the bytes in
socket buffers and at most one pipe per direction.  Pipes are taken from a
shared pool while bytes are in flight and given back once empty, so an idle
tunnel holds none.
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

#: What one pipe holds, and so what one splice moves at most.  Twice the
#: default 64 KiB: fewer system calls per byte, at 256 KiB of kernel memory
#: pinned per stalled tunnel (a full pipe each way).
PIPE_SIZE = 2**17

#: Idle pipes the pool keeps for reuse; more are closed when given back.
POOL_LIMIT = 64

_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK if hasattr(os, "splice") else 0

#: Errors that mean the connection was cut (by its peer or the network).
_CUT = {errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH}


def available(transport: object) -> bool:
    """Can this transport be spliced in the kernel? (A TCP socket on Linux.)"""
    if not hasattr(os, "splice") or not isinstance(transport, Connection):
        return False
    handle = transport.getHandle()
    return isinstance(handle, socket.socket) and handle.family in (socket.AF_INET, socket.AF_INET6)


class PipePool:
    """Pipes for splicing: made when needed, reused when empty, closed at the end."""

    def __init__(self, size: int = PIPE_SIZE, limit: int = POOL_LIMIT) -> None:
        self.size = size
        self.limit = limit
        self._idle: list[tuple[int, int]] = []
        #: Pipes taken and not given back.
        self.inUse = 0

    def take(self) -> tuple[int, int]:
        self.inUse += 1
        if self._idle:
            return self._idle.pop()
        read, write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, self.size)
        except OSError:
            # Past fs.pipe-user-pages-soft the kernel gives small pipes: slower, still right.
            pass
        return read, write

    def give(self, pipe: tuple[int, int], empty: bool = True) -> None:
        self.inUse -= 1
        if empty and len(self._idle) < self.limit:
            self._idle.append(pipe)
        else:
            os.close(pipe[0])
            os.close(pipe[1])

    def idle(self) -> int:
        return len(self._idle)

    def close(self) -> None:
        while self._idle:
            read, write = self._idle.pop()
            os.close(read)
            os.close(write)


_POOL: PipePool | None = None


def sharedPool() -> PipePool:
    """The process's pipe pool."""
    global _POOL
    if _POOL is None:
        _POOL = PipePool()
    return _POOL


class _Direction:
    """Bytes from one socket to the other."""

    def __init__(self, source: _End, sink: _End, pending: bytes) -> None:
        self.source, self.sink = source, sink
        self.pending = pending
        self.pipe: tuple[int, int] | None = None
        self.inPipe = 0
        self.carried = len(pending)
        self.sourceEnded = False
        self.done = False


@implementer(IReadWriteDescriptor)
class _End:
    """One spliced socket, as the reactor sees it while bytes flow."""

    def __init__(self, splice: KernelSplice, name: str, transport: Connection) -> None:
        self.splice = splice
        self.name = name
        self.transport = transport
        self.socket: socket.socket = transport.getHandle()
        self.fd = self.socket.fileno()
        #: The direction this socket feeds, and the one it is written by.
        self.outgoing: _Direction
        self.incoming: _Direction

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return f"splice {self.name}"

    def doRead(self) -> None:
        self.splice._fill(self.outgoing)

    def doWrite(self) -> None:
        self.splice._drain(self.incoming)

    def connectionLost(self, reason: Failure) -> None:
        # The reactor saw the socket hang up or fail while it was not being
        # read: the connection is gone.
        self.splice._cut(self, reason.getErrorMessage())


class KernelSplice:
    """
    Two connected TCP transports spliced both ways in the kernel.
    C{pending} holds bytes their protocols already read, to be written to
    the other side first.  C{finished} is called once, when both sockets
    are handed back for closing, with the error that cut the tunnel (the
    name of the side it came from and its message) or None.
    """

    def __init__(
        self,
        reactor: Any,
        a: tuple[str, Connection, bytes],
        b: tuple[str, Connection, bytes],
        finished: Callable[[KernelSplice, tuple[str, str] | None], None],
        pool: PipePool | None = None,
        ended: Callable[[str], None] | None = None,
    ) -> None:
        self.reactor = reactor
        self.pool = pool if pool is not None else sharedPool()
        self._finished = finished
        self._ended = ended
        self.a = _End(self, a[0], a[1])
        self.b = _End(self, b[0], b[1])
        # What one side's protocol read goes to the other side first.
        ab = _Direction(self.a, self.b, a[2])
        ba = _Direction(self.b, self.a, b[2])
        self.a.outgoing = self.b.incoming = ab
        self.b.outgoing = self.a.incoming = ba
        self.over = False

    def carried(self, name: str) -> int:
        """Bytes read from side C{name} and written to the other."""
        end = self.a if name == self.a.name else self.b
        return end.outgoing.carried

    def start(self) -> None:
        for end in (self.a, self.b):
            end.transport.stopReading()
            end.transport.stopWriting()
        for direction in (self.a.outgoing, self.b.outgoing):
            if direction.pending:
                self._drain(direction)
            else:
                self.reactor.addReader(direction.source)

    def _fill(self, d: _Direction) -> None:
        if self.over or d.sourceEnded:
            return
        if d.pipe is None:
            d.pipe = self.pool.take()
        try:
            n = os.splice(d.source.fd, d.pipe[1], self.pool.size - d.inPipe, flags=_FLAGS)
        except BlockingIOError:
            self._releaseIfEmpty(d)
            return
        except OSError as e:
            self._releaseIfEmpty(d)
            self._cut(d.source, os.strerror(e.errno or 0) if e.errno in _CUT else str(e))
            return
        if n == 0:
            d.sourceEnded = True
            self.reactor.removeReader(d.source)
            if self._ended is not None:
                self._ended(d.source.name)
        else:
            d.inPipe += n
            d.carried += n
        self._drain(d)

    def _drain(self, d: _Direction) -> None:
        if self.over:
            return
        try:
            while d.pending:
                sent = d.sink.socket.send(d.pending)
                d.pending = d.pending[sent:]
            while d.inPipe:
                assert d.pipe is not None
                d.inPipe -= os.splice(d.pipe[0], d.sink.fd, d.inPipe, flags=_FLAGS)
        except BlockingIOError:
            # The sink is full: stop reading the source until it drains.
            self.reactor.removeReader(d.source)
            self.reactor.addWriter(d.sink)
            return
        except OSError as e:
            self._cut(d.sink, os.strerror(e.errno or 0) if e.errno in _CUT else str(e))
            return
        self.reactor.removeWriter(d.sink)
        self._releaseIfEmpty(d)
        if d.sourceEnded:
            self._endDirection(d)
        else:
            self.reactor.addReader(d.source)

    def _releaseIfEmpty(self, d: _Direction) -> None:
        if d.pipe is not None and d.inPipe == 0:
            self.pool.give(d.pipe)
            d.pipe = None

    def _endDirection(self, d: _Direction) -> None:
        if d.done:
            return
        d.done = True
        try:
            d.sink.socket.shutdown(socket.SHUT_WR)
        except OSError as e:
            self._cut(d.sink, str(e))
            return
        if self.a.outgoing.done and self.b.outgoing.done:
            self._finish(None)

    def _cut(self, end: _End, why: str) -> None:
        self._finish((end.name, why))

    def cut(self, name: str, why: str) -> None:
        """End the splice with a reset on both sides: side C{name} failed."""
        self._finish((name, why))

    def _finish(self, error: tuple[str, str] | None) -> None:
        if self.over:
            return
        self.over = True
        for end in (self.a, self.b):
            self.reactor.removeReader(end)
            self.reactor.removeWriter(end)
        for d in (self.a.outgoing, self.b.outgoing):
            if d.pipe is not None:
                self.pool.give(d.pipe, empty=d.inPipe == 0)
                d.pipe = None
        self._finished(self, error)
        for end in (self.a, self.b):
            if error is None:
                end.transport.loseConnection()
            else:
                # A cut passes on as a reset, never as a clean end.
                end.transport.abortConnection()
