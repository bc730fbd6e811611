"""
Real loopback sockets for tests: listening on a free port, connecting to a
listener, and waiting with a bound instead of sleeping.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.internet import reactor as _reactor
from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.defer import ensureDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory

from relaynat import kernel, localstack

reactor: Any = _reactor


async def listen(factory: Factory[Any]) -> IListeningPort:
    return await TCP4ServerEndpoint(reactor, 0, backlog=1024, interface="127.0.0.1").listen(factory)


def endpointOf(port: IListeningPort) -> TCP4ClientEndpoint:
    return TCP4ClientEndpoint(reactor, "127.0.0.1", cast(IPv4Address, port.getHost()).port)


async def pollUntil(
    condition: Callable[[], object], timeout: float = 10.0, step: float = 0.01
) -> None:
    """
    Wait for C{condition} to hold, at most C{timeout} seconds: the local
    stack's one bounded polling helper, for a plain true-or-false check.  A
    timeout is an L{AssertionError}, so that trial counts it as a failure.
    """

    async def holds() -> None:
        if not condition():
            raise ValueError("not yet")

    try:
        await localstack.pollUntil(reactor, holds, timeout, "condition not met", step=step)
    except localstack.LocalStackError as e:
        raise AssertionError(str(e)) from None


async def waitStalled(sender: Any) -> None:
    """Wait until a L{streams.Bulk} C{sender} is paused by flow control and makes no progress."""
    last = [-1]

    def settled() -> bool:
        stuck = sender.paused and sender.sentBytes == last[0]
        last[0] = sender.sentBytes
        return stuck

    await pollUntil(settled, timeout=30, step=0.25)


def openConnections() -> set[tcp.Connection]:
    """
    Every TCP connection the reactor still has, whatever its role: those
    spliced in the kernel are watched through their splice's descriptors.
    """
    selectables = reactor.getReaders() + reactor.getWriters()
    found = {s for s in selectables if isinstance(s, tcp.Connection)}
    found |= {s.transport for s in selectables if isinstance(s, kernel.SplicedSocket)}
    return found


def runAsync(f):  # type: ignore[no-untyped-def]
    """Decorate an async test method so trial waits on it."""

    def wrapper(self, *a, **kw):  # type: ignore[no-untyped-def]
        return ensureDeferred(f(self, *a, **kw))

    wrapper.__name__ = f.__name__
    wrapper.__doc__ = f.__doc__
    return wrapper
