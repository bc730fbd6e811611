"""
A relay, a skeleton and a client wired together on 127.0.0.1 in this
process, with real sockets, for the integration tests.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from typing import cast

import attrs
from twisted.application.internet import ClientService
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
)
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol

from relaynat.auth import Users
from relaynat.client import ClientControl, TunnelFactory
from relaynat.identity import CERT_FILE, KEY_FILE, PinnedRelay, RelayIdentity, generate, writePrivate
from relaynat.link import Credentials, RelayLink
from relaynat.relay import Relay
from relaynat.skeleton import FrontedServer, Skeleton, SkeletonControl
from relaynat.splice import OneProtocolFactory
from relaynat.tap.access import controlService
from relaynat.test.net import endpointOf, listen, openConnections, pollUntil, reactor
from relaynat.caps import Limits
from relaynat.users import Rights, User, saveUsers

PASSWORD = "correct horse battery staple"
_IDENTITY: tuple[bytes, bytes] | None = None


def relayIdentity(directory: str, names: tuple[str, ...] = ("127.0.0.1",)) -> RelayIdentity:
    """A relay key and certificate in C{directory} (made once per process)."""
    global _IDENTITY
    if _IDENTITY is None or names != ("127.0.0.1",):
        made = generate(list(names))
        if names != ("127.0.0.1",):
            key, cert = made
        else:
            _IDENTITY = made
    if names == ("127.0.0.1",):
        assert _IDENTITY is not None
        key, cert = _IDENTITY
    writePrivate(os.path.join(directory, KEY_FILE), key)
    writePrivate(os.path.join(directory, CERT_FILE), cert)
    return RelayIdentity.load(os.path.join(directory, KEY_FILE), os.path.join(directory, CERT_FILE))


def writeUsers(path: str, users: dict[str, Rights]) -> Users:
    """A users file with these users, all with L{PASSWORD}."""
    saveUsers(path, {name: User.create(name, PASSWORD, rights) for name, rights in users.items()})
    return Users(path)


def rewriteUsers(users: Users, changed: dict[str, Rights | None], reload: bool = True) -> bool:
    """
    Rewrite C{users}' file with the C{changed} users' rights (C{None}:
    deleted; a new name: added with L{PASSWORD}), every other user and
    every password kept, and reload it (unless told not to: a SIGHUP will).
    """
    after: dict[str, User] = dict(users.users)
    for name, rights in changed.items():
        if rights is None:
            after.pop(name, None)
        elif name in after:
            after[name] = attrs.evolve(after[name], rights=rights)
        else:
            after[name] = User.create(name, PASSWORD, rights)
    saveUsers(users.path, after)
    return users.reload() if reload else True


ANYTHING = Rights(register=None, join=None)


class Stack:
    """
    One relay (TLS, a users file), one skeleton fronting C{targets} (id to
    server factory, or a port number nobody listens on), and a client with a
    local listener per target, both logged in as C{user}.  C{stop} tears all
    down.
    """

    def __init__(self) -> None:
        self.ports: list[IListeningPort] = []
        self.services: list[ClientService] = []
        self.locals: dict[str, IListeningPort] = {}
        self.targetPorts: dict[str, IListeningPort] = {}
        self.tunnelFactories: dict[str, TunnelFactory] = {}
        self.directory = tempfile.mkdtemp(prefix="relaynat-test-")

    async def start(
        self,
        targets: dict[str, Factory | int],
        pool: int = 1,
        joinTimeout: float = 10.0,
        heartbeat: float = 30.0,
        users: dict[str, Rights] | None = None,
        user: str = "alice",
        sealed: bool = True,
        limits: Limits | None = None,
        clientUser: str | None = None,
    ) -> Stack:
        self.identity = relayIdentity(self.directory)
        self.users = writeUsers(
            os.path.join(self.directory, "users"), users if users is not None else {user: ANYTHING}
        )
        self.relay = Relay(
            reactor, self.identity, self.users, joinTimeout=joinTimeout, limits=limits
        )
        self.clientPort = await listen(self.relay.clientFactory())
        self.skeletonPort = await listen(self.relay.skeletonFactory())
        self.ports += [self.clientPort, self.skeletonPort]
        self.secrets: dict[str, bytes] = {}
        fronted = {}
        for serverId, target in targets.items():
            if isinstance(target, int):
                endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", target)
            else:
                port = await listen(target)
                self.ports.append(port)
                self.targetPorts[serverId] = port
                endpoint = endpointOf(port)
            self.secrets[serverId] = secrets.token_bytes(32)
            fronted[serverId] = FrontedServer(
                serverId, f"test {serverId}", endpoint, self.secrets[serverId], sealed
            )
        self.heartbeat = heartbeat
        self.skeletonLink = self.link(self.skeletonPort, user)
        self.skeleton = Skeleton(
            self.skeletonLink, "test", fronted, pool, heartbeat=heartbeat, pingTimeout=heartbeat
        )
        await self.startSkeleton()
        self.clientLink = self.link(self.clientPort, clientUser or user)
        await self.startClient()
        for serverId in targets:
            factory = TunnelFactory(self.clientLink, serverId, self.secrets[serverId])
            self.tunnelFactories[serverId] = factory
            port = await listen(factory)
            self.ports.append(port)
            self.locals[serverId] = port
        await pollUntil(lambda: self.relay.registry.counts()["idle"] >= pool * len(targets))
        await pollUntil(
            lambda: all(f.readyNow() == f.readyCount for f in self.tunnelFactories.values())
        )
        return self

    def link(
        self, port: IListeningPort, user: str, password: str = PASSWORD, source: str | None = None
    ) -> RelayLink:
        """
        A way to the relay's C{port}, pinning its key, as C{user}; from the
        loopback address C{source} if given (127.0.0.1 otherwise), as
        another host would come.
        """
        endpoint = endpointOf(port)
        if source is not None:
            endpoint = TCP4ClientEndpoint(
                reactor, "127.0.0.1", cast(IPv4Address, port.getHost()).port,
                bindAddress=(source, 0),
            )
        return RelayLink(
            endpoint,
            PinnedRelay(self.identity.fingerprint),
            Credentials(user, password),
            reactor,
        )

    async def startSkeleton(self) -> None:
        # The roles' own service: a login or registration refused on a
        # reconnect is dropped and retried, where a ClientService with a
        # prepareConnection meets the loss with no transition for it.
        skeleton = self.skeleton
        service = controlService(self.skeletonLink, lambda: SkeletonControl(skeleton), reactor)
        service.startService()
        self.services.append(service)
        await service.whenConnected(failAfterFailures=1)

    async def startClient(self) -> None:
        link, heartbeat = self.clientLink, self.heartbeat
        service = controlService(link, lambda: ClientControl(link, heartbeat, heartbeat), reactor)
        service.startService()
        self.services.insert(0, service)
        await service.whenConnected(failAfterFailures=1)
        await self.clientLink.loggedIn()

    async def stopSkeleton(self) -> None:
        service = self.services.pop()
        await service.stopService()

    def connect(self, serverId: str, protocol: Protocol) -> Deferred[Protocol]:
        """Connect C{protocol} to the client's local listener for C{serverId}."""
        d = endpointOf(self.locals[serverId]).connect(OneProtocolFactory(protocol))
        return d.addCallback(lambda _: protocol)

    async def stop(self) -> None:
        """
        Stop the skeleton, the client and every listener, then wait until
        every connection is closed: the relay drops a skeleton's pool when
        its control connection goes, and each side closes at the other's end.
        """
        await DeferredList([s.stopService() for s in self.services])
        await DeferredList([cast(Deferred[None], p.stopListening()) for p in self.ports])
        await pollUntil(lambda: not openConnections())
        shutil.rmtree(self.directory, ignore_errors=True)


