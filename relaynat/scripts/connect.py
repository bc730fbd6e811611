"""
C{relaynat connect [--config client.toml] [--secret FILE] SERVER}: standard
input and output as one tunnel to SERVER, for ssh's C{ProxyCommand}:

  ssh -o ProxyCommand='relaynat connect --config client.toml ssh' host

Nothing but the tunnel's bytes goes to stdout; what is logged goes to
stderr.  An end of stdin ends the tunnel's direction towards the server
(the server sees its end of stream and may still answer); the server's end
of stream closes stdout.
"""

from __future__ import annotations

from argparse import ArgumentParser, Namespace
from typing import Any, TextIO

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.stdio import StandardIO
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.python.failure import Failure

from relaynat.client import ClientControl, TunnelFactory
from relaynat.config import COMMAND_LINE, ConfigError
from relaynat.load import LoadedAccess, flagPath, readConfig
from relaynat.names import checkServerId
from relaynat.scripts.access import defineAccess, loadedClient
from relaynat.scripts.command import Subcommand, UsageError, seconds
from relaynat.secret import SecretFileError, loadSecret
from relaynat.splice import Outcome, SpliceHalf
from relaynat.wire import BadRequest


@attrs.frozen
class ConnectOptions:
    """
    What C{relaynat connect} was told: how to log in, the server to reach
    and its secret, read when the command line was.
    """

    access: LoadedAccess
    server: str
    secret: bytes = attrs.field(repr=False)
    timeout: float = 60.0
    verbose: bool = False


def define(parser: ArgumentParser) -> None:
    parser.add_argument("server", metavar="SERVER", help="the id of the server to reach")
    defineAccess(parser)
    parser.add_argument(
        "--secret", metavar="FILE", help="SERVER's secret file, instead of its [[tunnel]]'s secret_file"
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log each step to stderr, not only problems"
    )
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        default="60",
        help="seconds to log in and open the tunnel (default: %(default)s)",
    )


def read(args: Namespace) -> ConnectOptions:
    try:
        server = checkServerId(args.server)
    except BadRequest as e:
        raise UsageError(f"SERVER: {e}") from e
    timeout = seconds("--timeout", args.timeout)
    # Only SERVER's secret is read, and none with --secret.
    loaded = loadedClient(args, secretsOf=() if args.secret is not None else (server,))
    if args.secret is not None:
        try:
            secret = loadSecret(flagPath(args.secret))
        except SecretFileError as e:
            raise ConfigError(COMMAND_LINE, "--secret", str(e)) from None
    elif server in loaded.secrets:
        secret = loaded.secrets[server]
    else:
        raise ConfigError(
            readConfig(args.config)[1],
            "tunnel",
            f"no [[tunnel]] for server {server!r}: give --secret FILE",
        )
    return ConnectOptions(
        access=loaded.access, server=server, secret=secret, timeout=timeout, verbose=args.verbose
    )


class StdioHalf(SpliceHalf):
    """
    Standard input and output as the local connection of a splice.

    L{StandardIO} tells its protocol of each direction's end, but never of
    the whole connection's loss once both directions ended, and has no
    abort: the transport the splice sees (L{_StdioTransport}) says the loss
    itself when the splice closes a connection whose output is already shut.
    """

    def __init__(self) -> None:
        super().__init__("local")
        self.outputShut = False

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(_StdioTransport(transport, self))

    def writeConnectionLost(self) -> None:
        self.outputShut = True
        super().writeConnectionLost()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        # Said by StandardIO, or by the transport once StandardIO cannot.
        if self.lost is None:
            super().connectionLost(reason)


class _StdioTransport:
    """What a splice needs of a transport, over L{StandardIO}."""

    def __init__(self, stdio: Any, half: StdioHalf) -> None:
        # Any: mypy reads twisted.internet.stdio's Windows StandardIO, which
        # has no loseWriteConnection and takes no descriptors.
        self._stdio = stdio
        self._half = half

    def write(self, data: bytes) -> None:
        self._stdio.write(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self._stdio.writeSequence(data)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._stdio.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._stdio.unregisterProducer()

    def pauseProducing(self) -> None:
        self._stdio.pauseProducing()

    def resumeProducing(self) -> None:
        self._stdio.resumeProducing()

    def stopProducing(self) -> None:
        self.loseConnection()

    def loseWriteConnection(self) -> None:
        self._stdio.loseWriteConnection()

    def loseConnection(self) -> None:
        self._stdio.loseConnection()
        if self._half.outputShut:
            # Output already shut, so StandardIO will say nothing more.
            self._half.connectionLost(Failure(ConnectionDone()))

    def abortConnection(self) -> None:
        # A pipe cannot be reset: it is closed, and the exit status says
        # that the tunnel was cut.
        self._stdio.loseConnection()
        self._half.connectionLost(Failure(ConnectionAborted()))

    def getPeer(self) -> Any:
        return self._stdio.getPeer()

    def getHost(self) -> Any:
        return self._stdio.getHost()


class TunnelCut(Exception):
    """The tunnel ended other than cleanly: says which side and why."""


async def connectCommand(reactor: Any, options: ConnectOptions, out: TextIO, err: TextIO) -> int:
    """Run C{relaynat connect}, logging to C{err}; its exit status."""
    level = LogLevel.info if options.verbose else LogLevel.warn
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(err), [LogLevelFilterPredicate(level)])],
        redirectStandardIO=False,
    )
    server = options.server
    try:
        await carry(reactor, options.access, server, options.secret, options.timeout)
    except Exception as e:
        err.write(f"relaynat connect: {server}: {e}\n")
        return 1
    return 0


async def carry(
    reactor: Any,
    access: LoadedAccess,
    server: str,
    secret: bytes,
    timeout: float,
    stdin: int = 0,
    stdout: int = 1,
) -> None:
    """
    Log in with C{access}, open one tunnel to C{server} and carry the
    descriptors C{stdin} and C{stdout} through it until it ends; a failed
    login or join raises what the relay or the server said, a cut
    L{TunnelCut}.
    """
    link = access.link(reactor)
    # No tunnel is kept ready: this one is opened when asked for, once.
    tunnels = TunnelFactory(link, server, secret, ready=0)
    control = ClientControl(link)

    async def opening() -> Any:
        await link.connect(control)
        await control.start()
        return await tunnels.openEnd()

    try:
        opened = Deferred.fromCoroutine(opening())
        opened.addTimeout(timeout, reactor)
        try:
            end = await opened
        except defer.TimeoutError:
            raise TunnelCut(f"no tunnel within {timeout:g} seconds") from None
        finished: Deferred[Outcome] = Deferred()
        local = StdioHalf()
        StandardIO(local, stdin, stdout, reactor)  # type: ignore[call-arg]
        end.attach(local, lambda joined, outcome: finished.callback(outcome))
        outcome = await finished
    finally:
        if control.transport is not None and control.connected:
            control.transport.loseConnection()
    if outcome is not None:
        side, why = outcome
        raise TunnelCut(f"the tunnel was cut ({'here' if side == 'local' else 'by the far side'}: {why})")


SUBCOMMAND = Subcommand(
    name="connect",
    summary="carry stdin and stdout through one tunnel (ssh ProxyCommand)",
    synopsis="[--config client.toml] [--secret FILE] [--relay ENDPOINT ...] SERVER",
    description=(
        "Log in to the relay as a client and carry standard input and output through"
        " one tunnel to SERVER, as ssh's ProxyCommand: ssh -o ProxyCommand='relaynat"
        " connect --config client.toml ssh' host. The secret is the one of SERVER's"
        " [[tunnel]] in the config file, or --secret FILE. Exits 0 when the tunnel"
        " ends cleanly, 1 with the reason on stderr when it cannot be opened or is cut."
    ),
    define=define,
    read=read,
    runInReactor=connectCommand,
)
