"""
Waiting, with a bound: the one polling helper of the demo, the tests and
C{bench/}, on the reactor (L{pollUntil}) or, for a program without one,
blocking (L{pollUntilBlocking}); and the HTTP GET the demo and the tests poll
with.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from relaynat.localstack.errors import LocalStackError

T = TypeVar("T")

# Waiting, with a bound.


class _Bound:
    """
    How long a wait may last, on C{clock}, and what it says when that has
    passed: the part both ways of waiting share.
    """

    def __init__(self, clock: Callable[[], float], timeout: float, what: str) -> None:
        self.clock, self.timeout, self.what = clock, timeout, what
        self.deadline = clock() + timeout

    def check(self, error: Exception) -> None:
        """Raise L{LocalStackError} if the time is up; C{error} is the last try's."""
        if self.clock() > self.deadline:
            raise LocalStackError(f"{self.what}: not within {self.timeout:g} s: {error}") from error


async def pollUntil(
    reactor: Any,
    attempt: Callable[[], Awaitable[T]],
    timeout: float,
    what: str,
    step: float = 0.1,
    guard: Callable[[], None] | None = None,
) -> T:
    """
    Call C{attempt} until it returns without raising, every C{step} seconds
    for at most C{timeout} seconds; C{guard} may raise to give up early.
    """
    bound = _Bound(reactor.seconds, timeout, what)
    while True:
        if guard is not None:
            guard()
        try:
            return await attempt()
        except LocalStackError:
            raise
        except Exception as e:  # not yet: try again
            bound.check(e)
        await deferLater(reactor, step, lambda: None)


def pollUntilBlocking(
    attempt: Callable[[], T],
    timeout: float,
    what: str,
    step: float = 0.1,
    guard: Callable[[], None] | None = None,
) -> T:
    """
    L{pollUntil} for a program with no reactor (C{bench/}, which measures
    with plain sockets and processes): the same tries, bound and message,
    sleeping this thread C{step} seconds between tries.
    """
    bound = _Bound(time.monotonic, timeout, what)
    while True:
        if guard is not None:
            guard()
        try:
            return attempt()
        except LocalStackError:
            raise
        except Exception as e:  # not yet: try again
            bound.check(e)
        time.sleep(step)


class HttpGet(Protocol):
    """
    A plain HTTP/1.0 GET: sends the request, keeps every byte until the
    server closes, and fires C{done} then, when the socket is gone.
    """

    def __init__(self, host: str, path: str = "/") -> None:
        self.request = (
            f"GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        ).encode("ascii")
        self.received: list[bytes] = []
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if not self.done.called:  # else it timed out
            self.done.callback(b"".join(self.received))


async def fetchPage(
    reactor: Any, port: int, path: str = "/", timeout: float = 10.0
) -> bytes:
    """
    The body of C{GET path} from 127.0.0.1:C{port}; a L{ValueError} unless
    the answer is a 200.
    """
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=timeout)
    get = await connectProtocol(endpoint, HttpGet(f"127.0.0.1:{port}", path))
    d = get.done
    d.addTimeout(timeout, reactor)
    try:
        answer = await d
    finally:
        if get.transport is not None:
            get.transport.abortConnection()
    head, _, body = answer.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if not status.startswith(b"HTTP/1.") or status.split(b" ")[1:2] != [b"200"]:
        raise ValueError(f"GET {path}: expected a 200 answer, got {status[:80]!r}")
    return body


