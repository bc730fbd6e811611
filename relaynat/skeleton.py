"""
The skeleton: it lives next to the hidden servers, keeps a control
connection to the relay, and opens data connections on the relay's demand,
joining each to a fresh connection to the server it fronts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import attrs
from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.interfaces import IProtocol, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from relaynat.link import ControlChannel, RelayLink, preparing
from relaynat.secret import checkJoinProof, newNonce
from relaynat.splice import FramedHalf, OneProtocolFactory, SpliceHalf, splicePair
from relaynat.wire import (
    HEARTBEAT,
    PING_TIMEOUT,
    Channel,
    Join,
    Offer,
    OpenConnection,
    Ping,
    Register,
    SecretMismatch,
    SkeletonGone,
    TargetRefused,
    UnknownServer,
)

_log = Logger()

#: Data connections opened at once (see L{Skeleton.opening}).
OPEN_LIMIT = 64


@attrs.frozen
class FrontedServer:
    """A server this skeleton fronts: its id, description, target and secret."""

    id: str
    description: str
    target: IStreamClientEndpoint
    secret: bytes = attrs.field(repr=False)


class Skeleton:
    """
    The skeleton's state: its way to the relay, the servers it fronts, and
    its open data connections.
    """

    def __init__(
        self,
        link: RelayLink,
        name: str,
        servers: Mapping[str, FrontedServer],
        pool: int = 1,
        heartbeat: float = HEARTBEAT,
        pingTimeout: float = PING_TIMEOUT,
    ) -> None:
        self.link = link
        self.clock = link.clock
        self.heartbeat = heartbeat
        self.pingTimeout = pingTimeout
        self.name = name
        self.servers = dict(servers)
        self.pool = pool
        #: Open data connections, pooled or joined.
        self.dataChannels: set[DataChannel] = set()
        #: The relay's requests for connections being worked on; the rest
        #: wait, oldest first, so that under a burst each is done quickly
        #: rather than all of them late.
        self.opening = DeferredSemaphore(OPEN_LIMIT)

    def controlFactory(self) -> Factory:
        return Factory.forProtocol(lambda: SkeletonControl(self))

    def register(self, control: IProtocol) -> Deferred[None]:
        """
        Log in and register every server on a new control connection (the
        C{prepareConnection} of the skeleton's L{ClientService}).
        """
        # ClientService hands over a proxy of the SkeletonControl it built.
        channel = cast(SkeletonControl, control)
        return preparing(channel, self._register(channel))

    async def _register(self, control: SkeletonControl) -> None:
        servers = [
            {"id": s.id, "description": s.description} for s in self.servers.values()
        ]
        try:
            await control.start()
            await control.callRemote(
                Register, name=self.name, servers=servers, pool=self.pool
            )
        except Exception as e:
            _log.error("the relay refused this skeleton: {why}", why=str(e))
            raise
        _log.info(
            "registered {servers} with the relay",
            servers=", ".join(sorted(self.servers)),
        )

    async def offerConnection(self, serverId: str) -> None:
        """Open a data connection for C{serverId} and offer it to the relay."""
        session = self.link.session
        if session is None:
            raise SkeletonGone("not logged in to the relay")
        channel = await self.link.connect(DataChannel(self, serverId))
        try:
            proof = await self.link.prove(channel, session)
            await channel.callRemote(
                Offer, session=session.id, proof=proof, server=serverId, nonce=channel.nonce
            )
        except Exception:
            channel.transport.loseConnection()
            raise


class SkeletonControl(ControlChannel):
    """The control connection, as the relay sees it: asks for connections."""

    def __init__(self, skeleton: Skeleton) -> None:
        super().__init__(skeleton.link)
        self.skeleton = skeleton
        self._heartbeat = LoopingCall(self._sendPing)
        self._heartbeat.clock = skeleton.clock

    def connectionMade(self) -> None:
        super().connectionMade()
        self._heartbeat.start(self.skeleton.heartbeat, now=False)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._heartbeat.running:
            self._heartbeat.stop()
        super().connectionLost(reason)

    def _sendPing(self) -> None:
        d = self.callRemote(Ping)
        d.addTimeout(self.skeleton.pingTimeout, self.skeleton.clock)
        d.addErrback(self._noAnswer)

    def _noAnswer(self, failure: Failure) -> None:
        if self.connected:
            _log.warn(
                "the relay did not answer a ping: reconnecting ({why})",
                why=failure.getErrorMessage(),
            )
            self.transport.abortConnection()

    @OpenConnection.responder
    def openConnection(self, server: str) -> Deferred[dict[str, object]]:
        if server not in self.skeleton.servers:
            raise UnknownServer(f"this skeleton does not front {server}")
        return Deferred.fromCoroutine(self._open(server))

    async def _open(self, server: str) -> dict[str, object]:
        async with self.skeleton.opening:
            if not self.connected:
                # The relay forgot this request with the connection it came
                # on, while it waited its turn here.
                return {}
            try:
                await self.skeleton.offerConnection(server)
            except Exception as e:
                _log.warn(
                    "could not open a connection to the relay for {server}: {why}",
                    server=server,
                    why=str(e),
                )
                raise SkeletonGone(f"the skeleton could not reach the relay: {e}") from e
        return {}


class DataChannel(Channel):
    """A data connection: offered to the relay, then joined to the target."""

    def __init__(self, skeleton: Skeleton, serverId: str) -> None:
        super().__init__()
        self.skeleton = skeleton
        self.serverId = serverId
        #: This connection's half of the per-server secret's challenge.
        self.nonce = newNonce()

    def connectionMade(self) -> None:
        super().connectionMade()
        self.skeleton.dataChannels.add(self)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.skeleton.dataChannels.discard(self)
        super().connectionLost(reason)

    @Join.responder
    def join(self, tunnel: str, nonce: bytes, proof: bytes) -> Deferred[SpliceHalf]:
        server = self.skeleton.servers[self.serverId]
        if not checkJoinProof(server.secret, nonce, self.nonce, tunnel, proof):
            # Checked here, not at the relay, which never sees the secret;
            # the target is not contacted.
            _log.warn(
                "tunnel {tunnel}: wrong secret for {server}: refused",
                tunnel=tunnel,
                server=server.id,
            )
            raise SecretMismatch(
                f"wrong secret for server {server.id}: check the tunnel's secret_file"
            )
        return Deferred.fromCoroutine(self._join(tunnel, server))

    async def _join(self, tunnel: str, server: FrontedServer) -> SpliceHalf:
        relayHalf, targetHalf = splicePair("relay", "target", FramedHalf)
        try:
            await server.target.connect(OneProtocolFactory(targetHalf))
        except Exception as e:
            _log.warn(
                "tunnel {tunnel}: target of {server} refused: {why}",
                tunnel=tunnel,
                server=server.id,
                why=str(e),
            )
            # The details stay in this log: they name the target's address.
            raise TargetRefused(
                f"server {server.id} is registered but its target refused the"
                " connection"
            ) from e
        if not self.connected:
            targetHalf.abandon()
            raise SkeletonGone("the relay went away during the join")
        _log.info("tunnel {tunnel} to {server} opened", tunnel=tunnel, server=server.id)
        return relayHalf
