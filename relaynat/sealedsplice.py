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
from relaynat.seal import BEGIN, DATA, END, MAX_BODY, REFUSED, TARGET_REFUSED, SealBroken, Sealed

#: The most a record's frame takes on the wire.
_MAX_FRAME = 2 + 1 + MAX_BODY + TAGLEN

#: Records read from the sealed side at a time, at most.
_FRAMES_PER_READ = 8


class _Scratch:
    """
    The buffers every tunnel of this process reads, seals and opens in: the
    reactor runs one direction at a time, and a direction whose sink cannot
    take all it made keeps a copy of the rest.  So a tunnel holds no buffer
    while its bytes flow, and at most one read's worth while its reader
    stalls.
    """

    def __init__(self) -> None:
        # One read fills several records' bodies (recvmsg_into scatters),
        # each after its kind byte, and one send takes their frames.
        self.plains = [bytearray(1 + MAX_BODY) for _ in range(_FRAMES_PER_READ)]
        for plain in self.plains:
            plain[0] = DATA
        self.plainViews = [memoryview(p) for p in self.plains]
        self.bodies = [v[1:] for v in self.plainViews]
        self.frames = bytearray(_FRAMES_PER_READ * _MAX_FRAME)
        self.framesView = memoryview(self.frames)
        self.sealed = bytearray(_FRAMES_PER_READ * _MAX_FRAME)
        self.sealedView = memoryview(self.sealed)
        self.opened = bytearray(_FRAMES_PER_READ * _MAX_FRAME)
        self.openedView = memoryview(self.opened)


_SCRATCH: _Scratch | None = None


def _scratch() -> _Scratch:
    global _SCRATCH
    if _SCRATCH is None:
        _SCRATCH = _Scratch()
    return _SCRATCH


class _Sending(Direction):
    """Sends what it made in the scratch buffers, and keeps a copy of what the sink does not take."""

    def __init__(self, source: SplicedSocket, sink: SplicedSocket) -> None:
        super().__init__(source, sink)
        self._pending: list[memoryview | bytes] = []

    def write(self) -> bool:
        pending = self._pending
        sendmsg = self.sink.socket.sendmsg
        try:
            while pending:
                # All that is held in one system call.
                sent = sendmsg(pending)
                while sent and sent >= len(pending[0]):
                    sent -= len(pending.pop(0))
                if sent:
                    pending[0] = pending[0][sent:]
        except BlockingIOError:
            # Out of the scratch buffers, which the next tunnel will use.
            self._pending = [bytes(p) for p in pending]
            return False
        return True


class SealDirection(_Sending):
    """Plain bytes in, sealed L{DATA} records out (up to eight per read); L{END} at the end."""

    def __init__(
        self, source: SplicedSocket, sink: SplicedSocket, cipher: CipherState, early: bytes
    ) -> None:
        super().__init__(source, sink)
        self._cipher = cipher
        scratch = _scratch()
        # This end's BEGIN first, then what the plain side's protocol read.
        self._pending.append(self._record(BEGIN))
        view, batch = memoryview(early), _FRAMES_PER_READ * MAX_BODY
        for i in range(0, len(early), batch):
            chunk = view[i : i + batch]
            for j, body in enumerate(scratch.bodies):
                part = chunk[j * MAX_BODY : (j + 1) * MAX_BODY]
                body[: len(part)] = part
            self._pending.append(bytes(self._seal(scratch, len(chunk))))

    def _record(self, kind: int) -> bytes:
        """A record with no body, as a new bytes object."""
        frame = bytearray(2 + 1 + TAGLEN)
        frame[0:2] = (1 + TAGLEN).to_bytes(2, "big")
        self._cipher.encryptInto(memoryview(bytes([kind])), memoryview(frame)[2:])
        return bytes(frame)

    def _seal(self, scratch: _Scratch, n: int) -> memoryview:
        """The DATA records of the C{n} bytes in the scratch bodies, framed, in the frames buffer."""
        frames, out, position = scratch.frames, scratch.framesView, 0
        for plain in scratch.plainViews:
            size = min(n, MAX_BODY)
            length = 1 + size + TAGLEN
            frames[position] = length >> 8
            frames[position + 1] = length & 0xFF
            self._cipher.encryptInto(plain[: 1 + size], out[position + 2 : position + 2 + length])
            position += 2 + length
            n -= size
            if not n:
                break
        return out[:position]

    def read(self) -> None:
        scratch = _scratch()
        n = self.source.socket.recvmsg_into(scratch.bodies)[0]
        if n == 0:
            self.sourceEnded = True
            self._pending.append(self._record(END))
            return
        self.carried += n
        self._pending.append(self._seal(scratch, n))

    def finish(self) -> None:
        """The end went as a record: the sealed socket stays open until both ends have."""


class OpenDirection(_Sending):
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
        #: The start of a record not yet whole, kept between reads.
        self._tail = b""
        self._ended = False
        if early:
            scratch = _scratch()
            scratch.sealedView[: len(early)] = early
            self._open(scratch, len(early))
            self._keep()

    def read(self) -> None:
        scratch = _scratch()
        tail = len(self._tail)
        if tail:
            scratch.sealedView[:tail] = self._tail
        n = self.source.socket.recv_into(scratch.sealedView[tail:], len(scratch.sealed) - tail)
        if n == 0:
            raise SealBroken("the tunnel's stream stopped without its end record")
        self.carried += n
        self._open(scratch, tail + n)

    def _keep(self) -> None:
        # Made at construction, before the engine runs: out of the scratch now.
        self._pending = [bytes(p) for p in self._pending]

    def _open(self, scratch: _Scratch, have: int) -> None:
        buffer, view, out = scratch.sealed, scratch.sealedView, scratch.openedView
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
            plain = out[written : written + size]
            try:
                self._cipher.decryptInto(view[position + 2 : position + 2 + length], plain)
            except NoiseError:
                raise SealBroken("a record failed to authenticate") from None
            position += 2 + length
            kind = plain[0]
            if self._expectBegin:
                self._expectBegin = False
                if kind == REFUSED:
                    raise SealBroken(TARGET_REFUSED)
                if kind != BEGIN:
                    raise SealBroken("the tunnel did not start with its first record")
            elif kind == DATA:
                if size > 1:
                    self._pending.append(plain[1:])
                    written += size
            elif kind == END:
                self._ended = True
                self.sourceEnded = True
            else:
                raise SealBroken("a record out of place")
        if self._ended and position != have:
            raise SealBroken("bytes after the end of the stream")
        self._tail = bytes(view[position:have])


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
