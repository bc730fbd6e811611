"""
The client: listens locally for each tunnel and carries every local
connection through the relay to the named server.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import connectProtocol
from twisted.internet.interfaces import IAddress, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from relaynat.splice import OneProtocolFactory, SpliceHalf, splicePair
from relaynat.wire import Channel, ListServers, RelaynatError, Tunnel

_log = Logger()


class LocalHalf(SpliceHalf):
    """A local connection: asks for its tunnel as soon as it is made."""

    factory: TunnelFactory

    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.open(self)


class TunnelFactory(Factory):
    """Accepts local connections for one tunnel: C{serverId} via C{relay}."""

    def __init__(self, relay: IStreamClientEndpoint, serverId: str) -> None:
        self.relay = relay
        self.serverId = serverId

    def buildProtocol(self, addr: IAddress | None) -> LocalHalf:  # type: ignore[override]
        local, _ = splicePair("local", "relay", LocalHalf)
        assert isinstance(local, LocalHalf)
        local.factory = self
        return local

    def open(self, local: LocalHalf) -> Deferred[None]:
        return ensureDeferred(self._open(local))

    async def _open(self, local: LocalHalf) -> None:
        try:
            await openTunnel(self.relay, self.serverId, local.peer)
        except RelaynatError as e:
            _log.error(
                "tunnel to {server} failed: {why}", server=self.serverId, why=str(e)
            )
            local.abandon()
        except Exception as e:
            _log.error(
                "tunnel to {server} failed: cannot reach the relay: {why}",
                server=self.serverId,
                why=str(e),
            )
            local.abandon()


async def openTunnel(
    relay: IStreamClientEndpoint, serverId: str, half: SpliceHalf
) -> None:
    """
    Connect to the relay and ask to be joined to C{serverId}; on success the
    connection carries raw bytes to and from C{half}.
    """
    channel = await connectProtocol(relay, Channel())
    if half.peer.lost is not None:
        channel.transport.loseConnection()
        return
    try:
        await channel.callRemote(
            Tunnel, server=serverId, _protoToSwitchToFactory=OneProtocolFactory(half)
        )
    except Exception:
        channel.transport.loseConnection()
        raise


async def listServers(relay: IStreamClientEndpoint) -> list[dict[str, Any]]:
    """The servers the relay has available now."""
    channel = await connectProtocol(relay, Channel())
    try:
        answer = await channel.callRemote(ListServers)
    finally:
        channel.transport.loseConnection()
    return list(answer["servers"])
