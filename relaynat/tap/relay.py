"""twistd relay: the public relay, clients on port X and skeletons on Y."""

from __future__ import annotations

from typing import Any

from twisted.application import strports
from twisted.application.internet import TimerService
from twisted.application.service import MultiService

from relaynat.config import RelayConfig, relayConfig, withFlags
from relaynat.relay import Relay
from relaynat.tap.options import ConfigOptions, number
from relaynat.wire import HEARTBEAT


class Options(ConfigOptions):
    synopsis = "[--config relay.toml] [--clients tcp:7000] [--skeletons tcp:7001]"
    longdesc = "Run the relay: clients connect to port X, skeletons to port Y."
    optParameters = ConfigOptions.optParameters + [
        ["clients", None, None, "endpoint for clients (port X), e.g. tcp:7000"],
        ["skeletons", None, None, "endpoint for skeletons (port Y), e.g. tcp:7001"],
        ["join-timeout", None, None, "seconds to wait for a skeleton's connection", number("join-timeout", float)],
    ]

    def build(self) -> None:
        document, source = self.document()
        flags = {
            "clients": self["clients"],
            "skeletons": self["skeletons"],
            "join_timeout": self["join-timeout"],
        }
        self.relay: RelayConfig = relayConfig(withFlags(document, "relay", flags), source)


def makeService(options: Options, reactor: Any = None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor
    config = options.relay
    relay = Relay(reactor, joinTimeout=config.join_timeout, maxPool=config.max_pool)
    service = MultiService()
    heartbeat = TimerService(HEARTBEAT, relay.heartbeat)
    heartbeat.clock = reactor
    heartbeat.setServiceParent(service)
    strports.service(config.clients, relay.clientFactory(), reactor=reactor).setServiceParent(service)
    strports.service(config.skeletons, relay.skeletonFactory(), reactor=reactor).setServiceParent(service)
    return service
