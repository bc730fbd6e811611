"""
A relay, a skeleton and a client wired together on 127.0.0.1 in this
process, with real sockets, for the integration tests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from twisted.application.internet import ClientService
from twisted.internet import reactor as _reactor
from twisted.internet import tcp
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    connectProtocol,
)
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater

from relaynat.client import TunnelFactory
from relaynat.relay import Relay
from relaynat.skeleton import FrontedServer, Skeleton

reactor = _reactor


async def listen(factory: Factory) -> IListeningPort:
    return await TCP4ServerEndpoint(reactor, 0, backlog=1024, interface="127.0.0.1").listen(factory)


def endpointOf(port: IListeningPort) -> TCP4ClientEndpoint:
    return TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)


async def pollUntil(
    condition: Callable[[], bool], timeout: float = 10.0, step: float = 0.01
) -> None:
    """Wait for C{condition} to hold, at most C{timeout} seconds."""
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await deferLater(reactor, step, lambda: None)


class Stack:
    """
    One relay, one skeleton fronting C{targets} (id to server factory), and
    a client with a local listener per target.  C{stop} tears all down.
    """

    def __init__(self) -> None:
        self.ports: list[IListeningPort] = []
        self.services: list[ClientService] = []
        self.locals: dict[str, IListeningPort] = {}
        self.targetPorts: dict[str, IListeningPort] = {}

    async def start(
        self,
        targets: dict[str, Factory | int],
        pool: int = 1,
        joinTimeout: float = 10.0,
        heartbeat: float = 30.0,
    ) -> Stack:
        self.relay = Relay(reactor, joinTimeout=joinTimeout)
        self.clientPort = await listen(self.relay.clientFactory())
        self.skeletonPort = await listen(self.relay.skeletonFactory())
        self.ports += [self.clientPort, self.skeletonPort]
        fronted = {}
        for serverId, target in targets.items():
            if isinstance(target, int):
                # A port number: a target nobody listens on.
                endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", target)
            else:
                port = await listen(target)
                self.ports.append(port)
                self.targetPorts[serverId] = port
                endpoint = endpointOf(port)
            fronted[serverId] = FrontedServer(serverId, f"test {serverId}", endpoint)
        self.skeleton = Skeleton(
            endpointOf(self.skeletonPort),
            "test",
            fronted,
            pool,
            clock=reactor,
            heartbeat=heartbeat,
            pingTimeout=heartbeat,
        )
        await self.startSkeleton()
        for serverId in targets:
            port = await listen(TunnelFactory(endpointOf(self.clientPort), serverId))
            self.ports.append(port)
            self.locals[serverId] = port
        await pollUntil(lambda: self.relay.registry.counts()["idle"] >= pool * len(targets))
        return self

    async def startSkeleton(self) -> None:
        service = ClientService(
            endpointOf(self.skeletonPort),
            self.skeleton.controlFactory(),
            prepareConnection=self.skeleton.register,
        )
        service.startService()
        self.services.append(service)
        await service.whenConnected(failAfterFailures=1)

    async def stopSkeleton(self) -> None:
        service = self.services.pop()
        await service.stopService()

    def connect(self, serverId: str, protocol: Protocol) -> Deferred[Protocol]:
        """Connect C{protocol} to the client's local listener for C{serverId}."""
        return connectProtocol(endpointOf(self.locals[serverId]), protocol)

    async def stop(self) -> None:
        """
        Stop the skeleton and every listener, then wait until every
        connection is closed: the relay drops a skeleton's pool when its
        control connection goes, and each side closes at the other's end.
        """
        await DeferredList([s.stopService() for s in self.services])
        await DeferredList([p.stopListening() for p in self.ports])
        await pollUntil(lambda: not openConnections())


def openConnections() -> set[tcp.Connection]:
    """Every TCP connection the reactor still has, whatever its role."""
    selectables = reactor.getReaders() + reactor.getWriters()
    return {s for s in selectables if isinstance(s, tcp.Connection)}


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def runAsync(f):  # type: ignore[no-untyped-def]
    """Decorate an async test method so trial waits on it."""

    def wrapper(self, *a, **kw):  # type: ignore[no-untyped-def]
        return ensureDeferred(f(self, *a, **kw))

    wrapper.__name__ = f.__name__
    wrapper.__doc__ = f.__doc__
    return wrapper
