"""
A question asked at the terminal and answered without blocking the reactor.
"""

from __future__ import annotations

import os
import termios
from typing import IO, TextIO

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorFDSet, IReadDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

from relaynat.scripts.command import CommandFailed


def ask(reactor: IReactorFDSet, terminal: IO[str], out: TextIO, question: str) -> Deferred[str]:
    """
    Write C{question} to C{out} and read the line typed in answer at
    C{terminal}, when the reactor sees it come: a blocking read would keep
    the reactor from handling Ctrl-C.  What was typed before the question
    is dropped, so that a key pressed too early does not answer it.
    """
    fd = terminal.fileno()
    try:
        termios.tcflush(fd, termios.TCIFLUSH)
    except termios.error:
        # Not a terminal after all (a pipe in a test): nothing to drop.
        pass
    out.write(question)
    out.flush()
    reader = _LineReader(reactor, fd)
    reactor.addReader(reader)

    def endLine(result: object) -> object:
        # Ctrl-C and Ctrl-D echo no line end; what follows needs its own line.
        if not reader.complete:
            out.write("\n")
        return result

    return reader.line.addBoth(endLine)


@implementer(IReadDescriptor)
class _LineReader:
    """Reads one line (or up to the end of input) from a descriptor."""

    def __init__(self, reactor: IReactorFDSet, fd: int) -> None:
        self.reactor, self.fd = reactor, fd
        self.parts: list[bytes] = []
        #: Whether the line ended with a line end, as typed lines do.
        self.complete = False
        self.line: Deferred[str] = Deferred(lambda d: self.reactor.removeReader(self))

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "terminal"

    def doRead(self) -> None:
        try:
            # The reactor saw it readable: this read returns at once.
            data = os.read(self.fd, 1024)
        except OSError:
            # A terminal that hung up (EIO) has nothing more to say.
            data = b""
        self.parts.append(data)
        self.complete = b"\n" in data
        if not data or self.complete:
            self.reactor.removeReader(self)
            text = b"".join(self.parts).split(b"\n", 1)[0]
            self.line.callback(text.decode("utf-8", "replace"))

    def connectionLost(self, reason: Failure) -> None:
        if self.line.called:
            return
        if reason.check(ConnectionDone):
            # Hung up, or the end of a pipe's input: no answer is a no.
            self.line.callback(b"".join(self.parts).decode("utf-8", "replace"))
        else:
            # The reactor is stopping (Ctrl-C) before a line came.
            self.line.errback(CommandFailed("interrupted; nothing was saved"))
