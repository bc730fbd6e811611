"""twistd client: local listeners carried through the relay to servers."""

from __future__ import annotations

from typing import Any

import attrs
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, DeferredLock, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.web.server import Site
from twisted.python.failure import Failure
from twisted.python.usage import UsageError

from relaynat.client import ClientControl, TunnelFactory
from relaynat.config import ClientConfig, ConfigError, TunnelConfig, splitAssignment
from relaynat.link import RelayLink
from relaynat.load import Flags, LoadedClient, loadClient
from relaynat.metrics import clientRegistry
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
from relaynat.tap.options import ConfigOptions
from relaynat.web import metricsResource

_log = Logger()


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

    def load(self) -> LoadedClient:
        return loadClient(*self.source(), self.flags())

    def flags(self) -> Flags:
        return Flags(
            {"relay": self["relay"], **self.accessFlags()}, self.tunnels, self.secretFiles
        )


@attrs.frozen
class RunningTunnel:
    """A configured tunnel as read, its secret, and the listener that serves it."""

    config: TunnelConfig
    secret: bytes = attrs.field(repr=False)
    factory: TunnelFactory
    listener: IService


class TunnelListener(Service):
    """
    A tunnel's listener added by a reload: one that cannot listen (its
    port taken) is said in one line, and the other tunnels run on.
    """

    def __init__(self, reactor: Any, tunnel: TunnelConfig, factory: TunnelFactory) -> None:
        self.reactor, self.tunnel, self.factory = reactor, tunnel, factory
        self._listening: Deferred[IListeningPort] | None = None
        self._port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()
        self._listening = serverFromString(self.reactor, self.tunnel.listen).listen(self.factory)
        self._listening.addCallbacks(self._listened, self._failed)

    def _listened(self, port: IListeningPort) -> None:
        self._port = port
        _log.info(
            "tunnel to {server} listening on {listen}",
            server=self.tunnel.server, listen=self.tunnel.listen,
        )

    def _failed(self, failure: Failure) -> None:
        _log.error(
            "tunnel to {server} cannot listen on {listen}: {why}",
            server=self.tunnel.server, listen=self.tunnel.listen, why=failure.getErrorMessage(),
        )

    def stopService(self) -> Any:
        super().stopService()
        if self._port is not None:
            port, self._port = self._port, None
            return port.stopListening()
        if self._listening is not None and not self._listening.called:
            self._listening.cancel()
        return None


class ClientReload:
    """
    The client's reload: its file read again, its tunnels compared with
    the running ones by configuration and secret.  A removed one stops
    listening (its open tunnels finish, its ready connections close), an
    added one listens, a changed one is both, in that order since it may
    keep its address; the unchanged ones are not touched.
    """

    def __init__(
        self,
        options: Options,
        config: ClientConfig,
        link: RelayLink,
        parent: MultiService,
        reactor: Any,
    ) -> None:
        self.options, self.link, self.parent, self.reactor = options, link, parent, reactor
        self.config = config
        self.running: dict[str, RunningTunnel] = {}
        #: One reload at a time: a second SIGHUP waits for the first's listeners.
        self._lock = DeferredLock()

    def startTunnel(self, tunnel: TunnelConfig, secret: bytes, atStart: bool = False) -> None:
        """Serve C{tunnel} from now on."""
        factory = TunnelFactory(self.link, tunnel.server, secret)
        listener: IService
        if atStart:
            # At the start a port that cannot be listened on stops it, with
            # one line (on a reload, the others go on: TunnelListener).
            listener = Listening(
                self.reactor, tunnel.listen, factory, f"[[tunnel]] listen of {tunnel.server}"
            )
        else:
            listener = TunnelListener(self.reactor, tunnel, factory)
        listener.setServiceParent(self.parent)
        self.running[tunnel.listen] = RunningTunnel(tunnel, secret, factory, listener)

    def __call__(self) -> Deferred[None]:
        return self._lock.run(lambda: Deferred.fromCoroutine(self._reload()))

    async def _reload(self) -> None:
        loaded: LoadedClient | None = reloaded(self.options, "the client's configuration")
        if loaded is None:
            return
        config, secrets = loaded.config, loaded.secrets
        accessUnchanged(self.config.access, config.access)
        self.config = config
        wanted = {t.listen: t for t in config.tunnels}
        going = [
            running
            for listen, running in self.running.items()
            if (wanted.get(listen), secrets.get(running.config.server))
            != (running.config, running.secret)
        ]
        for running in going:
            del self.running[running.config.listen]
        self.link.wanted = {r.config.server for r in self.running.values()}
        stopped = [Deferred.fromCoroutine(_stop(r.listener)) for r in going]
        await DeferredList(stopped)
        added = [t for t in config.tunnels if t.listen not in self.running]
        for tunnel in added:
            self.startTunnel(tunnel, secrets[tunnel.server])
        if going or added:
            _log.info(
                "configuration reloaded: tunnels stopped {stopped}, started {started}",
                stopped=", ".join(_named(r.config) for r in going) or "none",
                started=", ".join(_named(t) for t in added) or "none",
            )


async def _stop(listener: IService) -> None:
    # A listener not listening yet stops at once, with no Deferred.
    await maybeDeferred(listener.disownServiceParent)


def _named(tunnel: TunnelConfig) -> str:
    return f"{tunnel.server} on {tunnel.listen}"


def makeService(options: Options, reactor: Any = None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor
    loaded: LoadedClient = options.starting()
    config = loaded.config
    raiseOpenFileLimit()
    keepBuffersOnHeap()
    link = loaded.access.link(reactor)
    service = MultiService()
    controlService(link, lambda: ClientControl(link), reactor).setServiceParent(service)
    reload = ClientReload(options, config, link, service, reactor)
    for tunnel in config.tunnels:
        reload.startTunnel(tunnel, loaded.secrets[tunnel.server], atStart=True)
    ReloadOnHangup(reactor, reload).setServiceParent(service)
    if config.metrics is not None:
        registry = clientRegistry(lambda: [t.factory for t in reload.running.values()])
        Listening(
            reactor, config.metrics, Site(metricsResource(registry)), "[client] metrics"
        ).setServiceParent(service)
    return service
