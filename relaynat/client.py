"""
The client: keeps a logged-in control connection to the relay, listens
locally for each tunnel, and carries every local connection through the
relay to the named server, proving that server's secret on each join.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from relaynat.link import ControlChannel, RelayLink
from relaynat.secret import joinProof, newNonce
from relaynat.splice import FramedHalf, OneProtocolFactory, SpliceHalf, splicePair
from relaynat.wire import Channel, ListServers, Prepare, RelaynatError, SkeletonGone, Tunnel

_log = Logger()

#: Seconds a local connection waits for the client to be logged in.
LOGIN_WAIT = 10.0


class LocalHalf(SpliceHalf):
    """A local connection: asks for its tunnel as soon as it is made."""

    factory: TunnelFactory

    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.open(self)


class TunnelFactory(Factory):
    """Accepts local connections for one tunnel: C{serverId} via C{link}."""

    def __init__(self, link: RelayLink, serverId: str, secret: bytes) -> None:
        self.link = link
        self.serverId = serverId
        self.secret = secret

    def buildProtocol(self, addr: IAddress | None) -> LocalHalf:  # type: ignore[override]
        local, _ = splicePair("local", "relay", LocalHalf, FramedHalf)
        assert isinstance(local, LocalHalf)
        local.factory = self
        return local

    def open(self, local: LocalHalf) -> Deferred[None]:
        return Deferred.fromCoroutine(self._open(local))

    async def _open(self, local: LocalHalf) -> None:
        try:
            await openTunnel(self.link, self.serverId, self.secret, local.peer)
        except RelaynatError as e:
            _log.error("tunnel to {server} failed: {why}", server=self.serverId, why=str(e))
            local.abandon()
        except Exception as e:
            _log.error(
                "tunnel to {server} failed: {why}", server=self.serverId, why=str(e) or repr(e)
            )
            local.abandon()


async def openTunnel(link: RelayLink, serverId: str, secret: bytes, half: SpliceHalf) -> None:
    """
    Open a data connection to the relay, prove the session, set a join aside
    and prove the server's secret for it; on success the connection carries
    raw bytes to and from C{half}.  A join whose skeleton connection died
    unnoticed is tried once more on a fresh one.
    """
    waiting = link.loggedIn()
    waiting.addTimeout(LOGIN_WAIT, link.clock)
    session = await waiting
    for attempt in (1, 2):
        channel = await link.connect(Channel())
        if half.peer.lost is not None:
            channel.transport.loseConnection()
            return
        try:
            proof = await link.prove(channel, session)
            nonce = newNonce()
            prepared = await channel.callRemote(
                Prepare, session=session.id, proof=proof, server=serverId, nonce=nonce
            )
            await channel.callRemote(
                Tunnel,
                join=prepared["join"],
                proof=joinProof(secret, nonce, prepared["nonce"], prepared["join"]),
                _protoToSwitchToFactory=OneProtocolFactory(half),
            )
            return
        except SkeletonGone:
            channel.transport.loseConnection()
            if attempt == 2:
                raise
        except Exception:
            channel.transport.loseConnection()
            raise


class ClientControl(ControlChannel):
    """The client's control connection: holds the login."""


def controlFactory(link: RelayLink) -> Factory:
    return Factory.forProtocol(lambda: ClientControl(link))


async def listServers(link: RelayLink) -> list[dict[str, Any]]:
    """The servers the relay has available for this user now."""
    channel = await link.connect(Channel())
    try:
        await link.login(channel)
        answer = await channel.callRemote(ListServers)
    finally:
        channel.transport.loseConnection()
    return list(answer["servers"])
