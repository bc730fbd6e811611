"""twistd skeleton: fronts servers behind NAT, reachable through a relay."""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService
from twisted.internet.endpoints import clientFromString
from twisted.python.usage import UsageError

from relaynat.config import ConfigError, SkeletonConfig, skeletonConfig, splitAssignment, withFlags
from relaynat.link import linkFromConfig
from relaynat.skeleton import FrontedServer, Skeleton, SkeletonControl
from relaynat.tap.access import ACCESS_PARAMETERS, AccessOptions, controlService, loadSecrets
from relaynat.tap.limits import keepBuffersOnHeap, raiseOpenFileLimit
from relaynat.tap.options import ConfigOptions, number


class Options(AccessOptions):
    synopsis = (
        "[--config skeleton.toml] [--relay tcp:HOST:7001 --relay-key sha256:...]"
        " [--user NAME --password-file FILE] [--server ID=ENDPOINT --secret ID=FILE ...]"
    )
    longdesc = "Run a skeleton: register servers with the relay and carry their tunnels."
    optParameters = ConfigOptions.optParameters + ACCESS_PARAMETERS + [
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
        flags.update(self.accessFlags())
        merged = withFlags(document, "skeleton", flags, {"server": self.servers})
        if isinstance(merged.get("server"), list):
            merged["server"] = self.withSecrets(merged["server"], "id")
        self.skeleton: SkeletonConfig = skeletonConfig(merged, source)
        self.secrets = loadSecrets({s.id: s.secret_file for s in self.skeleton.servers})


def makeService(options: Options, reactor: Any = None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor
    raiseOpenFileLimit()
    keepBuffersOnHeap()
    config = options.skeleton
    link = linkFromConfig(config.access, reactor)
    servers = {
        s.id: FrontedServer(
            s.id, s.description, clientFromString(reactor, s.target), options.secrets[s.id], s.seal
        )
        for s in config.servers
    }
    skeleton = Skeleton(link, config.name, servers, config.pool)
    service = MultiService()
    controlService(link, lambda: SkeletonControl(skeleton), reactor).setServiceParent(service)
    return service
