"""twistd client: local listeners carried through the relay to servers."""

from __future__ import annotations

from typing import Any

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.python.usage import UsageError

from relaynat.client import ClientControl, TunnelFactory
from relaynat.config import ClientConfig, ConfigError, clientConfig, splitAssignment, withFlags
from relaynat.link import linkFromConfig
from relaynat.tap.limits import keepBuffersOnHeap, raiseOpenFileLimit
from relaynat.tap.access import ACCESS_PARAMETERS, AccessOptions, controlService, loadSecrets
from relaynat.tap.options import ConfigOptions


class Options(AccessOptions):
    synopsis = (
        "[--config client.toml] [--relay tcp:HOST:7000 --relay-key sha256:...]"
        " [--user NAME --password-file FILE] [--tunnel SERVER=ENDPOINT --secret SERVER=FILE ...]"
    )
    longdesc = "Run a client: forward local connections through the relay."
    optParameters = ConfigOptions.optParameters + ACCESS_PARAMETERS + [
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
        flags = {"relay": self["relay"], **self.accessFlags()}
        merged = withFlags(document, "client", flags, {"tunnel": self.tunnels})
        if isinstance(merged.get("tunnel"), list):
            merged["tunnel"] = self.withSecrets(merged["tunnel"], "server")
        self.client: ClientConfig = clientConfig(merged, source)
        self.secrets = loadSecrets({t.server: t.secret_file for t in self.client.tunnels})


def makeService(options: Options, reactor: Any = None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor
    raiseOpenFileLimit()
    keepBuffersOnHeap()
    config = options.client
    link = linkFromConfig(config.access, reactor)
    service = MultiService()
    controlService(link, lambda: ClientControl(link), reactor).setServiceParent(service)
    for tunnel in config.tunnels:
        factory = TunnelFactory(link, tunnel.server, options.secrets[tunnel.server])
        strports.service(tunnel.listen, factory, reactor=reactor).setServiceParent(service)
    return service
