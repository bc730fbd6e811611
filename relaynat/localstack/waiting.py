"""
Waiting, with a bound, on the reactor: the one polling helper of the demo and
the tests, and the HTTP GET the demo and the tests poll with.
"""

from __future__ import annotations

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
    deadline = reactor.seconds() + timeout
    while True:
        if guard is not None:
            guard()
        try:
            return await attempt()
        except LocalStackError:
            raise
        except Exception as e:  # not yet: try again
            if reactor.seconds() > deadline:
                raise LocalStackError(f"{what}: not within {timeout:g} s: {e}") from e
        await deferLater(reactor, step, lambda: None)


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


async def fetchPage(reactor: Any, port: int, timeout: float = 10.0) -> bytes:
    """
    The body of C{GET /} from 127.0.0.1:C{port}; a L{ValueError} unless the
    answer is a 200.
    """
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=timeout)
    get = await connectProtocol(endpoint, HttpGet(f"127.0.0.1:{port}"))
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
        raise ValueError(f"expected a 200 answer, got {status[:80]!r}")
    return body


