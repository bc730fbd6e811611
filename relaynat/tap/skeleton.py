"""twistd skeleton: fronts servers behind NAT, reachable through a relay."""

from __future__ import annotations

from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.endpoints import clientFromString
from twisted.python.usage import UsageError

from relaynat.config import ConfigError, SkeletonConfig, skeletonConfig, splitAssignment, withFlags
from relaynat.skeleton import FrontedServer, Skeleton
from relaynat.tap.options import ConfigOptions, number


class Options(ConfigOptions):
    synopsis = "[--config skeleton.toml] [--relay tcp:HOST:7001] [--server ID=ENDPOINT ...]"
    longdesc = "Run a skeleton: register servers with the relay and carry their tunnels."
    optParameters = ConfigOptions.optParameters + [
        ["relay", None, None, "the relay's skeleton endpoint (port Y), e.g. tcp:relay.example:7001"],
        ["name", None, None, "this skeleton's name, as the relay logs it (default: host name)"],
        ["pool", None, None, "idle connections kept ready per server", number("pool", int)],
    ]

    def __init__(self) -> None:
        super().__init__()
        self.servers: list[dict[str, str]] = []

    def opt_server(self, value: str) -> None:
        """A server to front, ID=ENDPOINT (e.g. web=tcp:127.0.0.1:8000); repeatable."""
        try:
            serverId, target = splitAssignment("--server", value)
        except ConfigError as e:
            raise UsageError(str(e)) from e
        self.servers.append({"id": serverId, "target": target, "description": serverId})

    def build(self) -> None:
        document, source = self.document()
        flags = {"relay": self["relay"], "name": self["name"], "pool": self["pool"]}
        merged = withFlags(document, "skeleton", flags, {"server": self.servers})
        self.skeleton: SkeletonConfig = skeletonConfig(merged, source)


def makeService(options: Options, reactor: Any = None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor
    config = options.skeleton
    relay = clientFromString(reactor, config.relay)
    servers = {
        s.id: FrontedServer(s.id, s.description, clientFromString(reactor, s.target))
        for s in config.servers
    }
    skeleton = Skeleton(relay, config.name, servers, config.pool, clock=reactor)
    service = MultiService()
    ClientService(
        relay,
        skeleton.controlFactory(),
        retryPolicy=backoffPolicy(initialDelay=0.5, maxDelay=30.0),
        clock=reactor,
        prepareConnection=skeleton.register,
    ).setServiceParent(service)
    return service
