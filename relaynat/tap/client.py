"""twistd client: local listeners carried through the relay to servers."""

from __future__ import annotations

from typing import Any

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.internet.endpoints import clientFromString
from twisted.python.usage import UsageError

from relaynat.client import TunnelFactory
from relaynat.config import ClientConfig, ConfigError, clientConfig, splitAssignment, withFlags
from relaynat.tap.options import ConfigOptions


class Options(ConfigOptions):
    synopsis = "[--config client.toml] [--relay tcp:HOST:7000] [--tunnel SERVER=ENDPOINT ...]"
    longdesc = "Run a client: forward local connections through the relay."
    optParameters = ConfigOptions.optParameters + [
        ["relay", None, None, "the relay's client endpoint (port X), e.g. tcp:relay.example:7000"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self.tunnels: list[dict[str, str]] = []

    def opt_tunnel(self, value: str) -> None:
        """A tunnel, SERVER=LISTEN (e.g. web=tcp:8080:interface=127.0.0.1); repeatable."""
        try:
            server, listen = splitAssignment("--tunnel", value)
        except ConfigError as e:
            raise UsageError(str(e)) from e
        self.tunnels.append({"server": server, "listen": listen})

    def build(self) -> None:
        document, source = self.document()
        merged = withFlags(document, "client", {"relay": self["relay"]}, {"tunnel": self.tunnels})
        self.client: ClientConfig = clientConfig(merged, source)


def makeService(options: Options, reactor: Any = None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor
    config = options.client
    relay = clientFromString(reactor, config.relay)
    service = MultiService()
    for tunnel in config.tunnels:
        factory = TunnelFactory(relay, tunnel.server)
        strports.service(tunnel.listen, factory, reactor=reactor).setServiceParent(service)
    return service
