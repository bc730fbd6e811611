"""twistd relay: the public relay, clients on port X and skeletons on Y."""

from __future__ import annotations

from typing import Any

import attrs
from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.logger import Logger
from twisted.web.server import Site

from relaynat.caps import Limits
from relaynat.load import Flags, LoadedRelay, loadRelay
from relaynat.relay import Relay
from relaynat.tap.hangup import ReloadOnHangup
from relaynat.tap.limits import raiseOpenFileLimit
from relaynat.tap.listening import Listening, OnionTors
from relaynat.tap.options import ConfigOptions, number
from relaynat.web import publicationResource
from relaynat.wire import HEARTBEAT

_log = Logger()


class Options(ConfigOptions):
    synopsis = "[--config relay.toml] [--clients tcp:7000] [--skeletons tcp:7001] ..."
    longdesc = "Run the relay: clients connect to port X, skeletons to port Y, both over TLS."
    optParameters = ConfigOptions.optParameters + [
        ["clients", None, None, "endpoint for clients (port X), e.g. tcp:7000"],
        ["skeletons", None, None, "endpoint for skeletons (port Y), e.g. tcp:7001"],
        ["web", None, None, "endpoint publishing the certificate, e.g. tcp:7080"],
        ["key", None, None, "the relay's private key (from relaynat keygen)"],
        ["cert", None, None, "the relay's certificate (from relaynat keygen)"],
        ["users", None, None, "the users file (from relaynat passwd)"],
        ["join-timeout", None, None, "seconds to wait for a skeleton's connection",
         number("join-timeout", float)],
        ["max-pool", None, None, "cap on the idle connections per server", number("max-pool", int)],
        ["session-lifetime", None, None, "seconds a login's session stays valid",
         number("session-lifetime", float)],
    ]

    def load(self) -> LoadedRelay:
        return loadRelay(*self.source(), self.flags())

    def flags(self) -> Flags:
        return Flags(
            {
                "clients": self["clients"],
                "skeletons": self["skeletons"],
                "web": self["web"],
                "key": self.pathFlag("key"),
                "cert": self.pathFlag("cert"),
                "users": self.pathFlag("users"),
                "join_timeout": self["join-timeout"],
                "max_pool": self["max-pool"],
                "session_lifetime": self["session-lifetime"],
            }
        )


def lowerToFit(limits: Limits, openFiles: int) -> Limits:
    """
    C{limits}, with the unauthenticated connections capped at a quarter of
    the open-file limit: strangers must never take the descriptors that
    tunnels and logged-in users need.
    """
    fit = max(1, openFiles // 4)
    if limits.max_unauthenticated <= fit:
        return limits
    _log.warn(
        "max_unauthenticated lowered from {configured} to {fit}, a quarter of"
        " the open-file limit ({openFiles})",
        configured=limits.max_unauthenticated, fit=fit, openFiles=openFiles,
    )
    return attrs.evolve(limits, max_unauthenticated=fit)


def makeService(options: Options, reactor: Any = None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor
    loaded: LoadedRelay = options.starting()
    config = loaded.config
    openFiles = raiseOpenFileLimit()
    limits = lowerToFit(config.limits, openFiles)
    relay = Relay(
        reactor,
        loaded.identity,
        loaded.users,
        joinTimeout=config.join_timeout,
        maxPool=config.max_pool,
        sessionLifetime=config.session_lifetime,
        limits=limits,
    )
    service = MultiService()
    heartbeat = TimerService(HEARTBEAT, relay.heartbeat)
    heartbeat.clock = reactor
    heartbeat.setServiceParent(service)
    ReloadOnHangup(reactor, loaded.users.reload).setServiceParent(service)
    # The ports that are onion services on one Tor share one connection to it.
    tors = OnionTors(reactor)
    Listening(
        reactor, config.clients, relay.clientFactory(), "[relay] clients", tors
    ).setServiceParent(service)
    Listening(
        reactor, config.skeletons, relay.skeletonFactory(), "[relay] skeletons", tors
    ).setServiceParent(service)
    if config.web is not None:
        site = Site(
            publicationResource(loaded.identity, relay.metrics.registry, config.metrics_allow)
        )
        Listening(reactor, config.web, site, "[relay] web", tors).setServiceParent(service)
    return service
