"""twistd skeleton: fronts servers behind NAT, reachable through a relay."""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService
from twisted.internet.endpoints import clientFromString
from twisted.python.usage import UsageError
from twisted.web.server import Site

from relaynat.config import ConfigError, ServerConfig, splitAssignment
from relaynat.load import Flags, LoadedSkeleton, loadSkeleton
from relaynat.metrics import skeletonRegistry
from relaynat.skeleton import FrontedServer, Skeleton, SkeletonControl
from relaynat.tap.access import (
    ACCESS_PARAMETERS,
    AccessOptions,
    accessUnchanged,
    controlService,
    reloaded,
)
from relaynat.tap.hangup import ReloadOnHangup
from relaynat.tap.limits import keepBuffersOnHeap, raiseOpenFileLimit
from relaynat.tap.listening import Listening
from relaynat.tap.options import ConfigOptions, number
from relaynat.web import metricsResource


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

    def load(self) -> LoadedSkeleton:
        return loadSkeleton(*self.source(), self.flags())

    def flags(self) -> Flags:
        table = {"relay": self["relay"], "name": self["name"], "pool": self["pool"]}
        return Flags({**table, **self.accessFlags()}, self.servers, self.secretFiles)


class SkeletonReload:
    """
    The skeleton's reload: its file read again, its servers compared with
    the running ones by configuration and secret, and the new set sent to
    the relay on the control connection, which stays up (L{Skeleton.reconfigure}):
    unchanged servers are never offline, and open tunnels carry on.
    """

    def __init__(
        self,
        options: Options,
        loaded: LoadedSkeleton,
        skeleton: Skeleton,
        reactor: Any,
    ) -> None:
        self.options, self.skeleton = options, skeleton
        self.reactor = reactor
        self.config = loaded.config
        #: Each configured server as read, its secret, and what fronts it.
        self.running = {
            s.id: (s, loaded.secrets[s.id], skeleton.servers[s.id])
            for s in self.config.servers
        }

    def __call__(self) -> None:
        loaded: LoadedSkeleton | None = reloaded(self.options, "the skeleton's configuration")
        if loaded is None:
            return
        config, secrets = loaded.config, loaded.secrets
        accessUnchanged(self.config.access, config.access)
        previous, self.running = self.running, {}
        for s in config.servers:
            old = previous.get(s.id)
            if old is not None and old[:2] == (s, secrets[s.id]):
                self.running[s.id] = old
            else:
                fronted = front(s, secrets[s.id], self.reactor)
                self.running[s.id] = (s, secrets[s.id], fronted)
        self.config = config
        servers = {serverId: f for serverId, (_, _, f) in self.running.items()}
        self.skeleton.reconfigure(servers, config.name, config.pool)


def front(server: ServerConfig, secret: bytes, reactor: Any) -> FrontedServer:
    """What fronts C{server}, as configured, with its C{secret}."""
    return FrontedServer(
        server.id,
        server.description,
        clientFromString(reactor, server.target),
        secret,
        server.seal,
    )


def makeService(options: Options, reactor: Any = None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor
    loaded: LoadedSkeleton = options.starting()
    config = loaded.config
    raiseOpenFileLimit()
    keepBuffersOnHeap()
    link = loaded.access.link(reactor)
    servers = {s.id: front(s, loaded.secrets[s.id], reactor) for s in config.servers}
    skeleton = Skeleton(link, config.name, servers, config.pool)
    service = MultiService()
    controlService(link, lambda: SkeletonControl(skeleton), reactor).setServiceParent(service)
    reload = SkeletonReload(options, loaded, skeleton, reactor)
    ReloadOnHangup(reactor, reload).setServiceParent(service)
    if config.metrics is not None:
        Listening(
            reactor, config.metrics, Site(metricsResource(skeletonRegistry(skeleton))),
            "[skeleton] metrics",
        ).setServiceParent(service)
    return service
