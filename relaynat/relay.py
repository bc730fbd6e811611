"""
The relay's protocols: skeletons on port Y, clients on port X, and the
joining of one to the other.
"""

from __future__ import annotations

import itertools
import secrets

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from relaynat.registry import PooledConnection, Registry
from relaynat.splice import OneProtocolFactory, SpliceHalf, splicePair
from relaynat.wire import (
    BadRequest,
    Channel,
    Join,
    ListServers,
    Offer,
    OpenConnection,
    Ping,
    PING_TIMEOUT,
    Register,
    SILENCE_LIMIT,
    SkeletonGone,
    TargetRefused,
    Tunnel,
    UnknownServer,
    UnknownSession,
    checkServerId,
    checkText,
)

_log = Logger()


class Relay:
    """
    One relay: the registry of servers, the skeletons' sessions, and the
    tunnels in flight.  Builds the factories for ports X and Y.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        joinTimeout: float = 10.0,
        maxPool: int = 64,
        silenceLimit: float = SILENCE_LIMIT,
        pingTimeout: float = PING_TIMEOUT,
    ) -> None:
        self.reactor = reactor
        self.registry = Registry(reactor, joinTimeout, maxPool)
        self.silenceLimit = silenceLimit
        self.pingTimeout = pingTimeout
        self.sessions: dict[str, SkeletonChannel] = {}
        self.tunnels: set[TunnelRecord] = set()
        self._tunnelIds = itertools.count(1)

    def clientFactory(self) -> Factory:
        """The factory for port X."""
        return Factory.forProtocol(lambda: ClientChannel(self))

    def skeletonFactory(self) -> Factory:
        """The factory for port Y."""
        return Factory.forProtocol(lambda: SkeletonChannel(self))

    def newTunnelId(self) -> str:
        return f"t{next(self._tunnelIds)}"

    def heartbeat(self) -> None:
        """
        Drop skeletons whose control connection has been silent too long,
        and ping every idle pooled connection, dropping those that do not
        answer (the registry then asks for replacements).
        """
        now = self.reactor.seconds()
        for channel in list(self.sessions.values()):
            if now - channel.lastHeard > self.silenceLimit:
                _log.warn(
                    "skeleton {skeleton} silent for {seconds:.0f} s: dropping it",
                    skeleton=channel.describe(),
                    seconds=now - channel.lastHeard,
                )
                channel.transport.abortConnection()
        for connection in self.registry.idleConnections():
            assert isinstance(connection, SkeletonChannel)
            connection.probe()


class SkeletonChannel(Channel):
    """
    A connection from a skeleton: its control connection once it sends
    L{Register}, or one of its data connections once it sends L{Offer}.
    """

    def __init__(self, relay: Relay) -> None:
        super().__init__()
        self.relay = relay
        self.name = ""
        self.role: str | None = None
        self.session: str | None = None
        self.server: str | None = None
        self.lastHeard = relay.reactor.seconds()

    def dataReceived(self, data: bytes) -> None:
        if self.innerProtocol is None:
            self.lastHeard = self.relay.reactor.seconds()
        super().dataReceived(data)

    # As the control connection: the registry's SkeletonLink.

    def describe(self) -> str:
        # Only the name the skeleton gave: its address is not for clients
        # or other skeletons to see.
        return repr(self.name)

    def requestConnection(self, serverId: str) -> Deferred[None]:
        d = self.callRemote(OpenConnection, server=serverId)
        return d.addCallback(lambda _: None)

    @Register.responder
    def register(
        self, name: str, servers: list[dict[str, str]], pool: int
    ) -> dict[str, str]:
        if self.role is not None:
            raise BadRequest("this connection is already in use")
        if not servers:
            raise BadRequest("a skeleton must register at least one server")
        self.name = checkText("skeleton name", name)
        try:
            self.relay.registry.register(
                self,
                [(s["id"], checkText("description", s["description"])) for s in servers],
                pool,
            )
        except Exception as e:
            _log.warn(
                "skeleton {skeleton} from {peer} refused: {why}",
                skeleton=self.describe(),
                peer=self.transport.getPeer(),
                why=str(e),
            )
            raise
        self.role = "control"
        self.session = secrets.token_urlsafe(24)
        self.relay.sessions[self.session] = self
        _log.info(
            "skeleton {skeleton} connected from {peer} with {count} servers",
            skeleton=self.describe(),
            peer=self.transport.getPeer(),
            count=len(servers),
        )
        return {"session": self.session}

    # As a data connection: the registry's PooledConnection.

    @Offer.responder
    def offer(self, session: str, server: str) -> dict[str, object]:
        if self.role is not None:
            raise BadRequest("this connection is already in use")
        owner = self.relay.sessions.get(session)
        if owner is None:
            raise UnknownSession("unknown session: register the skeleton first")
        if not self.relay.registry.owns(owner, server):
            raise UnknownServer(f"server {server} is not registered by this skeleton")
        self.role = "data"
        self.server = server
        # The answer must leave before a waiting client's Join locks this
        # connection for the switch.
        self.relay.reactor.callLater(0, self._pool)
        return {}

    def _pool(self) -> None:
        if self.connected and self.server is not None:
            self.relay.registry.offer(self.server, self)

    def close(self) -> None:
        self.transport.loseConnection()

    def probe(self) -> None:
        """Ping this idle connection; drop it if it does not answer in time."""
        d = self.callRemote(Ping)
        d.addTimeout(self.relay.pingTimeout, self.relay.reactor)
        d.addErrback(lambda _: self.transport.abortConnection())

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        # Unregister first: AMP's connectionLost fails the pending
        # OpenConnection calls, and waiting clients should hear that the
        # skeleton went away rather than that a request failed.
        if self.role == "control":
            _log.info("skeleton {skeleton} disconnected", skeleton=self.describe())
            self.relay.sessions.pop(self.session or "", None)
            self.relay.registry.unregister(self)
        elif self.role == "data" and self.innerProtocol is None and self.server:
            self.relay.registry.discard(self.server, self)
        super().connectionLost(reason)


class ClientChannel(Channel):
    """A connection from a client: a control connection or one tunnel."""

    def __init__(self, relay: Relay) -> None:
        super().__init__()
        self.relay = relay
        self._claim: Deferred[PooledConnection] | None = None
        self._tunnelAsked = False

    @ListServers.responder
    def listServers(self) -> dict[str, object]:
        return {"servers": self.relay.registry.listing()}

    @Tunnel.responder
    def tunnel(self, server: str) -> Deferred[SpliceHalf]:
        if self._tunnelAsked:
            raise BadRequest("one tunnel per connection: open another connection")
        self._tunnelAsked = True
        return ensureDeferred(self._tunnel(checkServerId(server)))

    async def _tunnel(self, server: str) -> SpliceHalf:
        # A pooled connection may have died unnoticed just before it was
        # claimed: one retry covers that.  A refused target is final.
        retries = 1
        while True:
            skeleton = await self._claimFor(server)
            tunnelId = self.relay.newTunnelId()
            clientHalf, serverHalf = splicePair("client", "server")
            try:
                await self._join(skeleton, tunnelId, serverHalf)
            except TargetRefused as e:
                skeleton.close()
                _log.warn("tunnel to {server} refused: {why}", server=server, why=str(e))
                raise
            except Exception as e:
                skeleton.close()
                if retries == 0:
                    raise SkeletonGone(
                        f"the skeleton of server {server} went away during the join"
                    ) from e
                retries -= 1
                continue
            if not self.connected:
                serverHalf.abandon()
                raise BadRequest("the client went away")
            TunnelRecord(self.relay, tunnelId, server, clientHalf, serverHalf)
            return clientHalf

    async def _claimFor(self, server: str) -> SkeletonChannel:
        self._claim = claim = self.relay.registry.claim(server)
        try:
            connection = await claim
        except CancelledError:
            raise BadRequest("the client went away") from None
        finally:
            self._claim = None
        assert isinstance(connection, SkeletonChannel)
        return connection

    async def _join(self, skeleton: SkeletonChannel, tunnelId: str, half: SpliceHalf) -> None:
        # A switch command cannot be cancelled once sent, so a skeleton that
        # does not answer in time loses its connection, which fails the call.
        timeout = self.relay.reactor.callLater(
            self.relay.registry.joinTimeout, skeleton.transport.abortConnection
        )
        try:
            await skeleton.callRemote(
                Join, tunnel=tunnelId, _protoToSwitchToFactory=OneProtocolFactory(half)
            )
        finally:
            if timeout.active():
                timeout.cancel()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        super().connectionLost(reason)
        if self._claim is not None:
            self._claim.cancel()


class TunnelRecord:
    """
    One tunnel in the relay's books, from join to the loss of both halves,
    when it is logged with its server, bytes each way, duration and end.
    """

    def __init__(
        self,
        relay: Relay,
        tunnelId: str,
        server: str,
        clientHalf: SpliceHalf,
        serverHalf: SpliceHalf,
    ) -> None:
        self.relay = relay
        self.id = tunnelId
        self.server = server
        self.client = clientHalf
        self.serverHalf = serverHalf
        self.started = relay.reactor.seconds()
        self.firstEnd: str | None = None
        self.errors: list[str] = []
        self._lost = 0
        clientHalf.observer = serverHalf.observer = self
        relay.tunnels.add(self)
        _log.info(
            "tunnel {tunnel} to {server} joined", tunnel=self.id, server=self.server
        )

    def ended(self, half: SpliceHalf) -> None:
        if self.firstEnd is None:
            self.firstEnd = half.name

    def lost(self, half: SpliceHalf, reason: Failure) -> None:
        if not reason.check(ConnectionDone):
            self.errors.append(f"{half.name} side: {reason.getErrorMessage()}")
        self._lost += 1
        if self._lost < 2:
            return
        self.relay.tunnels.discard(self)
        how = f"closed by {self.firstEnd}"
        if self.errors:
            how += " (" + "; ".join(self.errors) + ")"
        _log.info(
            "tunnel {tunnel} to {server} ended, {how}: {up} bytes up,"
            " {down} bytes down in {duration:.3f} s",
            tunnel=self.id,
            server=self.server,
            how=how,
            up=self.client.received,
            down=self.serverHalf.received,
            duration=self.relay.reactor.seconds() - self.started,
        )
