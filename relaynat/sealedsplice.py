"""
A sealed tunnel's end, moved by the descriptor engine of L{relaynat.kernel}:
plain bytes read from one socket are sealed into records
(L{relaynat.seal}) and sent on the other, and records read from that one
are opened and their bytes sent on the first, each read, encryption and
write into buffers made once, with no Twisted transport in between.

Where the sockets cannot be taken over (a TLS or SOCKS endpoint, another
reactor) L{relaynat.splice.ProtocolSplice} does the same through the
protocols.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.tcp import Connection

from relaynat.kernel import DescriptorSplice, Direction, Outcome, SplicedSocket
from relaynat.noise import TAGLEN, CipherState, NoiseError
from relaynat.seal import BEGIN, DATA, END, MAX_BODY, REFUSED, SealBroken, Sealed

#: The most a record's frame takes on the wire.
_MAX_FRAME = 2 + 1 + MAX_BODY + TAGLEN

#: Records read from the sealed side at a time, at most.
_FRAMES_PER_READ = 4


class SealDirection(Direction):
    """Plain bytes in, one sealed L{DATA} record per read out; L{END} at the end."""

    def __init__(
        self, source: SplicedSocket, sink: SplicedSocket, cipher: CipherState, early: bytes
    ) -> None:
        super().__init__(source, sink)
        self._cipher = cipher
        self._plain = bytearray(1 + MAX_BODY)
        self._plain[0] = DATA
        self._plainView = memoryview(self._plain)
        self._frame = bytearray(_MAX_FRAME)
        self._frameView = memoryview(self._frame)
        #: Sealed bytes not yet written; this end's BEGIN first, then what
        #: the plain side's protocol had already read.
        self._pending: list[memoryview] = [memoryview(self._record(BEGIN))]
        view = memoryview(early)
        for i in range(0, len(early), MAX_BODY):
            chunk = view[i : i + MAX_BODY]
            self._plainView[1 : 1 + len(chunk)] = chunk
            self._pending.append(memoryview(bytes(self._seal(len(chunk)))))

    def _record(self, kind: int) -> bytes:
        """A record with no body, as a new bytes object."""
        frame = bytearray(2 + 1 + TAGLEN)
        frame[0:2] = (1 + TAGLEN).to_bytes(2, "big")
        self._cipher.encryptInto(memoryview(bytes([kind])), memoryview(frame)[2:])
        return bytes(frame)

    def _seal(self, size: int) -> memoryview:
        """The DATA record of the C{size} bytes in the plain buffer, in the frame buffer."""
        length = 1 + size + TAGLEN
        self._frame[0] = length >> 8
        self._frame[1] = length & 0xFF
        self._cipher.encryptInto(self._plainView[: 1 + size], self._frameView[2 : 2 + length])
        return self._frameView[: 2 + length]

    def read(self) -> None:
        n = self.source.socket.recv_into(self._plainView[1:], MAX_BODY)
        if n == 0:
            self.sourceEnded = True
            self._pending.append(memoryview(self._record(END)))
            return
        self.carried += n
        self._pending.append(self._seal(n))

    def write(self) -> bool:
        pending = self._pending
        try:
            while pending:
                sent = self.sink.socket.send(pending[0])
                if sent == len(pending[0]):
                    pending.pop(0)
                else:
                    pending[0] = pending[0][sent:]
        except BlockingIOError:
            return False
        return True

    def finish(self) -> None:
        """The end went as a record: the sealed socket stays open until both ends have."""


class OpenDirection(Direction):
    """
    Records in, their bytes out.  The far end's first record must be
    L{BEGIN} when C{expectBegin}; L{REFUSED} there, a record the seal
    refuses, or the stream's end without L{END} cuts the tunnel.
    """

    def __init__(
        self,
        source: SplicedSocket,
        sink: SplicedSocket,
        cipher: CipherState,
        early: bytes,
        expectBegin: bool,
    ) -> None:
        super().__init__(source, sink)
        self._cipher = cipher
        self._expectBegin = expectBegin
        size = _FRAMES_PER_READ * _MAX_FRAME
        self._in = bytearray(size)
        self._inView = memoryview(self._in)
        self._have = 0
        self._out = bytearray(size)
        self._outView = memoryview(self._out)
        self._pending: list[memoryview] = []
        self._ended = False
        if early:
            self._inView[: len(early)] = early
            self._have = len(early)
            self._open()

    def read(self) -> None:
        n = self.source.socket.recv_into(self._inView[self._have :], len(self._in) - self._have)
        if n == 0:
            raise SealBroken("the tunnel's stream stopped without its end record")
        self.carried += n
        self._have += n
        self._open()

    def _open(self) -> None:
        buffer, view, have = self._in, self._inView, self._have
        position = written = 0
        while have - position >= 2:
            length = (buffer[position] << 8) | buffer[position + 1]
            if have - position - 2 < length:
                break
            if self._ended:
                raise SealBroken("bytes after the end of the stream")
            if length < 1 + TAGLEN:
                raise SealBroken("a record too short to be one")
            size = length - TAGLEN
            out = self._outView[written : written + size]
            try:
                self._cipher.decryptInto(view[position + 2 : position + 2 + length], out)
            except NoiseError:
                raise SealBroken("a record failed to authenticate") from None
            position += 2 + length
            kind = out[0]
            if self._expectBegin:
                self._expectBegin = False
                if kind == REFUSED:
                    raise SealBroken("the server's target refused the connection")
                if kind != BEGIN:
                    raise SealBroken("the tunnel did not start with its first record")
            elif kind == DATA:
                if size > 1:
                    self._pending.append(out[1:])
                    written += size
            elif kind == END:
                self._ended = True
                self.sourceEnded = True
            else:
                raise SealBroken("a record out of place")
        if self._ended and position != have:
            raise SealBroken("bytes after the end of the stream")
        # What is left is the start of a record: to the front.
        rest = have - position
        if rest and position:
            self._inView[:rest] = self._inView[position:have]
        self._have = rest

    def write(self) -> bool:
        pending = self._pending
        try:
            while pending:
                sent = self.sink.socket.send(pending[0])
                if sent == len(pending[0]):
                    pending.pop(0)
                else:
                    pending[0] = pending[0][sent:]
        except BlockingIOError:
            return False
        return True


def sealedSplice(
    reactor: Any,
    plain: tuple[str, Connection, bytes],
    sealed: tuple[str, Connection, bytes],
    seal: Sealed,
    finished: Callable[[DescriptorSplice, Outcome], None],
    expectBegin: bool = False,
    ended: Callable[[str], None] | None = None,
) -> DescriptorSplice:
    """
    The plain connection's bytes sealed onto the sealed one, and back; the
    bytes each side's protocol read already (the third of each triple) are
    handled first.
    """
    writer, reader = seal.writer, seal.reader

    def directions(p: SplicedSocket, s: SplicedSocket) -> tuple[Direction, Direction]:
        return (
            SealDirection(p, s, writer.cipher, plain[2]),
            OpenDirection(s, p, reader.cipher, sealed[2], expectBegin),
        )

    return DescriptorSplice(reactor, plain[:2], sealed[:2], directions, finished, ended)  # type: ignore[arg-type]
