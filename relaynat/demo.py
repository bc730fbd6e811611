"""
The demonstration: a small web page reached through the three real roles,
each a C{twistd} process started from the example configurations in
C{conf/} with every port moved to a free one on 127.0.0.1, and the relay's
key, the users and the server's secret made afresh with the C{relaynat}
tools.

    python -m relaynat.demo [--once] [--keep-logs]

The tests in L{relaynat.test.test_twistd} run the same processes the same
way, so what starts them lives here: moving the endpoints of a
configuration, making its keys, users and secrets, spawning and stopping
C{twistd}, and waiting, with a bound, until a tunnel works.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import re
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.task import deferLater, react
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

import relaynat
from relaynat.cli import Options as CommandOptions
from relaynat.cli import runLocal
from relaynat.client import listServers
from relaynat.config import clientConfig, parseToml, readToml, relayConfig, skeletonConfig
from relaynat.identity import CERT_FILE, KEY_FILE
from relaynat.link import linkFromConfig

#: The checkout this module runs from: C{conf/} lives here, and the children
#: find this source first on their C{PYTHONPATH}.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(relaynat.__file__)))
CONF = os.path.join(REPO, "conf")
ROLES = ("relay", "skeleton", "client")

PAGE = b"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>relaynat demo</title></head>
<body><h1>Hello from behind the NAT</h1>
<p>This page is served on 127.0.0.1 and reached through a relaynat client,
relay and skeleton.</p></body></html>
"""

T = TypeVar("T")


# Moving a configuration's endpoints to free ports on loopback.

#: The endpoint keys of each table, and whether each listens (True) or
#: connects (False); the same keys as L{relaynat.config} reads.
ENDPOINT_KEYS: dict[tuple[str, str], bool] = {
    ("relay", "clients"): True,
    ("relay", "skeletons"): True,
    ("relay", "web"): True,
    ("skeleton", "relay"): False,
    ("server", "target"): False,
    ("client", "relay"): False,
    ("tunnel", "listen"): True,
}

_HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.-]+)\s*\]\]?\s*(#.*)?$")
_STRING_VALUE = re.compile(r'^(\s*)([A-Za-z0-9_-]+)(\s*=\s*)"((?:[^"\\]|\\.)*)"(.*)$')
# A field of an endpoint string: runs to the next colon not escaped with \.
_FIELD = re.compile(r"(?:\\.|[^:\\])*")


class DemoError(Exception):
    """The demonstration cannot go on: the message says why."""


def pickFreePort(interface: str = "127.0.0.1") -> int:
    """
    A TCP port on C{interface} that nobody used a moment ago, for a child
    process to listen on.  It is taken below the kernel's range of ephemeral
    ports where there is room, so that no outgoing connection (of the tests
    running beside, say) takes it as its source port before the child binds.
    """
    low = 32768
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    candidates = [random.randrange(10000, low) for _ in range(50)] if low > 11000 else []
    for port in [*candidates, 0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((interface, port))
            except OSError:
                continue
            chosen: int = s.getsockname()[1]
            return chosen
    raise DemoError(f"no free TCP port on {interface}")


def _fields(description: str) -> list[str]:
    fields, position = [], 0
    while True:
        match = _FIELD.match(description, position)
        assert match is not None
        fields.append(match.group(0))
        position = match.end()
        if position >= len(description):
            return fields
        position += 1  # the colon


def _portField(fields: list[str], listening: bool) -> tuple[int, str | None]:
    """
    Where the port is among an endpoint's fields (after the kind): the index,
    and the keyword (C{port}) if it is written as one.
    """
    positional = [i for i, f in enumerate(fields) if i > 0 and "=" not in f]
    for i, f in enumerate(fields):
        if i > 0 and f.startswith("port="):
            return i, "port"
    # Listening: tcp:PORT[:INTERFACE]. Connecting: tcp:HOST:PORT, or
    # tcp:host=HOST:PORT.
    hostByKeyword = any(f.startswith("host=") for f in fields[1:])
    index = 0 if listening or hostByKeyword else 1
    if len(positional) <= index:
        raise DemoError(f"no port in endpoint {':'.join(fields)!r}")
    return positional[index], None


def endpointPort(description: str, listening: bool) -> int:
    """The port of a C{tcp:}/C{tcp6:} endpoint string."""
    fields = _fields(description)
    if fields[0] not in ("tcp", "tcp6"):
        raise DemoError(f"the demo moves only tcp: endpoints, not {description!r}")
    index, keyword = _portField(fields, listening)
    value = fields[index].split("=", 1)[1] if keyword else fields[index]
    try:
        return int(value)
    except ValueError:
        raise DemoError(f"bad port {value!r} in endpoint {description!r}") from None


def moveEndpoint(description: str, listening: bool, ports: Mapping[int, int]) -> str:
    """
    C{description} with its port replaced through C{ports}, and, when it
    listens on every interface, bound to 127.0.0.1 instead: nothing the demo
    or the tests start is reachable from another host.
    """
    old = endpointPort(description, listening)
    if old not in ports:
        raise DemoError(f"no new port given for {old} in endpoint {description!r}")
    fields = _fields(description)
    index, keyword = _portField(fields, listening)
    fields[index] = f"port={ports[old]}" if keyword else str(ports[old])
    if listening and fields[0] == "tcp":
        positional = [f for f in fields[1:] if "=" not in f]
        if not any(f.startswith("interface=") for f in fields) and len(positional) < 2:
            fields.append("interface=127.0.0.1")
    return ":".join(fields)


def moveConfig(text: str, ports: Mapping[int, int]) -> str:
    """
    The TOML C{text} of a role's configuration with every endpoint string
    moved by L{moveEndpoint}; everything else, comments included, is kept.
    """
    table = ""
    lines = []
    for line in text.splitlines(keepends=True):
        header = _HEADER.match(line)
        if header:
            table = header.group(1)
        value = _STRING_VALUE.match(line.rstrip("\r\n"))
        if value and (table, value.group(2)) in ENDPOINT_KEYS:
            indent, key, equals, old, rest = value.groups()
            listening = ENDPOINT_KEYS[(table, key)]
            # Endpoint strings hold backslash escapes (\:): a TOML basic
            # string doubles them, so move the decoded value and re-encode.
            decoded = parseToml(f'v = "{old}"')["v"]
            new = moveEndpoint(decoded, listening, ports)
            encoded = new.replace("\\", "\\\\").replace('"', '\\"')
            ending = line[len(line.rstrip("\r\n")) :]
            line = f'{indent}{key}{equals}"{encoded}"{rest}{ending}'
        lines.append(line)
    return "".join(lines)


@attrs.frozen
class DemoConfigs:
    """The three moved configuration files and the ports they use."""

    relay: str
    skeleton: str
    client: str
    clientsPort: int
    skeletonsPort: int
    webPort: int | None
    targetPort: int
    tunnelPorts: tuple[int, ...]
    servers: tuple[tuple[str, str], ...]  # (id, description)

    def path(self, role: str) -> str:
        return {"relay": self.relay, "skeleton": self.skeleton, "client": self.client}[role]

    @property
    def tunnelUrl(self) -> str:
        return f"http://127.0.0.1:{self.tunnelPorts[0]}/"


def writeConfigs(outDir: str, targetPort: int, confDir: str = CONF) -> DemoConfigs:
    """
    Copy C{conf/relay.toml}, C{skeleton.toml} and C{client.toml} into
    C{outDir} with ports X and Y and every tunnel's port moved to free ports
    on 127.0.0.1, and every server's target moved to C{targetPort}.  The
    copies are checked by L{relaynat.config} as the roles will check them.
    """
    texts = {}
    for role in ROLES:
        with open(os.path.join(confDir, f"{role}.toml"), encoding="utf-8") as f:
            texts[role] = f.read()
    relay = parseToml(texts["relay"])["relay"]
    skeleton = parseToml(texts["skeleton"])
    client = parseToml(texts["client"])
    ports: dict[int, int] = {}

    def move(old: int, new: int) -> int:
        if ports.setdefault(old, new) != new:
            raise DemoError(f"port {old} is used for two purposes in {confDir}")
        return new

    clientsPort = move(endpointPort(relay["clients"], True), pickFreePort())
    skeletonsPort = move(endpointPort(relay["skeletons"], True), pickFreePort())
    webPort = move(endpointPort(relay["web"], True), pickFreePort()) if "web" in relay else None
    for server in skeleton["server"]:
        move(endpointPort(server["target"], False), targetPort)
    tunnelPorts = tuple(
        move(endpointPort(tunnel["listen"], True), pickFreePort())
        for tunnel in client["tunnel"]
    )
    os.makedirs(outDir, exist_ok=True)
    paths = {role: os.path.join(outDir, f"{role}.toml") for role in ROLES}
    moved = {role: moveConfig(texts[role], ports) for role in ROLES}
    relayConfig(parseToml(moved["relay"], paths["relay"]), paths["relay"])
    servers = skeletonConfig(parseToml(moved["skeleton"], paths["skeleton"]), paths["skeleton"])
    clientConfig(parseToml(moved["client"], paths["client"]), paths["client"])
    for role in ROLES:
        with open(paths[role], "w", encoding="utf-8") as f:
            f.write(moved[role])
    return DemoConfigs(
        relay=paths["relay"],
        skeleton=paths["skeleton"],
        client=paths["client"],
        clientsPort=clientsPort,
        skeletonsPort=skeletonsPort,
        webPort=webPort,
        targetPort=targetPort,
        tunnelPorts=tunnelPorts,
        servers=tuple((s.id, s.description) for s in servers.servers),
    )


# The relay's key, the users and the servers' secrets.


def relaynatTool(*argv: str) -> str:
    """
    Run one of the C{relaynat} tools that need no network (C{keygen},
    C{passwd}, C{secret}) in this process, as the command would; its output.
    """
    options = CommandOptions()
    options.parseOptions(list(argv))
    assert options.subCommand is not None
    out, err = io.StringIO(), io.StringIO()
    if runLocal(options.subCommand, options.subOptions, out, err) != 0:
        raise DemoError(f"relaynat {' '.join(argv)}: {err.getvalue().strip()}")
    return out.getvalue()


def _writePassword(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secrets.token_urlsafe(24) + "\n")


def _copy(source: str, destination: str) -> None:
    if os.path.abspath(source) != os.path.abspath(destination):
        shutil.copyfile(source, destination)
        os.chmod(destination, 0o600)


def writeKeysAndUsers(configs: DemoConfigs) -> list[str]:
    """
    Make every file the moved configurations name, as an operator would
    with the C{relaynat} tools: the relay's key and certificate (the
    certificate is also what the skeleton and the client pin), a password
    for the skeleton's and the client's users and the users file giving them
    their rights, and each server's secret, shared by its skeleton and the
    client.  Returns the commands, as a user would type them.
    """
    relay = relayConfig(readToml(configs.relay), configs.relay)
    skeleton = skeletonConfig(readToml(configs.skeleton), configs.skeleton)
    client = clientConfig(readToml(configs.client), configs.client)
    typed: list[str] = []

    def run(*argv: str) -> None:
        relaynatTool(*argv)
        typed.append(" ".join(["relaynat", *argv]))

    keyDir = os.path.dirname(relay.key)
    run("keygen", keyDir, "--name", "127.0.0.1", "--name", "localhost")
    _copy(os.path.join(keyDir, KEY_FILE), relay.key)
    _copy(os.path.join(keyDir, CERT_FILE), relay.cert)
    for access in (skeleton.access, client.access):
        if access.relay_key is None or access.relay_key.startswith("sha256:"):
            raise DemoError(
                f"the demo pins the relay by a certificate file; {configs.skeleton}"
                f" and {configs.client} must name one in relay_key"
            )
        _copy(relay.cert, access.relay_key)

    rights: dict[str, dict[str, set[str]]] = {}
    passwords: dict[str, str] = {}
    for access, right, ids in (
        (skeleton.access, "register", [s.id for s in skeleton.servers]),
        (client.access, "join", [t.server for t in client.tunnels]),
    ):
        rights.setdefault(access.user, {}).setdefault(right, set()).update(ids)
        if access.user not in passwords:
            _writePassword(access.password_file)
            passwords[access.user] = access.password_file
        _copy(passwords[access.user], access.password_file)
    for user, given in rights.items():
        flags = [f"--{right}={','.join(sorted(ids))}" for right, ids in sorted(given.items())]
        run("passwd", relay.users, user, *flags, f"--password-file={passwords[user]}")

    secretFiles: dict[str, str] = {}
    for server in skeleton.servers:
        run("secret", server.secret_file)
        secretFiles[server.id] = server.secret_file
    for tunnel in client.tunnels:
        if tunnel.server in secretFiles:
            _copy(secretFiles[tunnel.server], tunnel.secret_file)
    return typed


# Child processes.


def twistdCommand() -> list[str]:
    """The C{twistd} of the Python running this: the script beside it."""
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def relaynatCommand() -> list[str]:
    """The C{relaynat} command of the Python running this."""
    script = os.path.join(os.path.dirname(sys.executable), "relaynat")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-c", "from relaynat.cli import main; main()"]


def childEnvironment(sourceFirst: bool = True) -> dict[str, str]:
    """
    This process's environment for a child; with C{sourceFirst}, the
    checkout goes first on C{PYTHONPATH}, so a child runs this source (and
    finds its twistd plugins) whatever is installed.
    """
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    if sourceFirst:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in [REPO, env.get("PYTHONPATH", "")] if p
        )
    else:
        env.pop("PYTHONPATH", None)
    return env


class ChildProcess(ProcessProtocol):
    """
    A child process: its output kept, and copied to C{logPath} if given; its
    end reported to whoever waits with L{ended}.
    """

    def __init__(self, name: str, logPath: str | None = None) -> None:
        self.name = name
        self.logPath = logPath
        self.output = bytearray()
        self.stdout = bytearray()
        self.status: Failure | None = None
        self._log = open(logPath, "wb") if logPath else None
        self._waiters: list[Deferred[None]] = []

    @property
    def pid(self) -> int | None:
        return self.transport.pid if self.transport is not None else None

    @property
    def running(self) -> bool:
        return self.status is None

    def connectionMade(self) -> None:
        # Nothing is ever typed into a role.
        assert self.transport is not None
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.stdout += data
        self._keep(data)

    def errReceived(self, data: bytes) -> None:
        self._keep(data)

    def _keep(self, data: bytes) -> None:
        self.output += data
        if self._log is not None:
            self._log.write(data)
            self._log.flush()

    def processEnded(self, reason: Failure) -> None:
        self.status = reason
        if self._log is not None:
            self._log.close()
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def ended(self) -> Deferred[None]:
        """
        Fires when the process has ended; C{status} then says how.  (Not with
        the status: a L{Failure} would run the errbacks.)
        """
        if self.status is not None:
            return succeed(None)
        d: Deferred[None] = Deferred(lambda d: self._waiters.remove(d))
        self._waiters.append(d)
        return d

    @property
    def exitCode(self) -> int | None:
        """The exit code; None while running or if a signal ended it."""
        if self.status is None:
            return None
        code: int | None = getattr(self.status.value, "exitCode", None)
        return code

    @property
    def exitSignal(self) -> int | None:
        """The signal that ended it, if one did."""
        if self.status is None:
            return None
        sig: int | None = getattr(self.status.value, "signal", None)
        return sig

    def stoppedNormally(self) -> bool:
        """
        Did it exit 0, or end by the SIGTERM or SIGINT it was stopped with
        (twistd ends itself with the signal that stopped it)?
        """
        if self.status is None:
            return False
        if self.status.check(ProcessDone):
            return True
        return bool(
            self.status.check(ProcessTerminated)
            and self.exitCode is None
            and self.exitSignal in (signal.SIGTERM, signal.SIGINT)
        )

    def describeEnd(self) -> str:
        if self.status is None:
            return "running"
        if self.exitSignal is not None:
            return f"ended by signal {self.exitSignal}"
        return f"exited with code {self.exitCode}"

    def text(self) -> str:
        return self.output.decode("utf-8", "replace")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    async def waitEnded(self, reactor: Any, timeout: float) -> bool:
        """Wait at most C{timeout} seconds for the end; True if it came."""
        if self.status is not None:
            return True
        d = self.ended()
        d.addTimeout(timeout, reactor)
        try:
            await d
        except defer.TimeoutError:
            # What addTimeout raises (not twisted.internet.error's).
            return False
        return True

    async def stop(self, reactor: Any, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not ended within C{timeout} seconds."""
        for sig, wait in (("TERM", timeout), ("KILL", 5.0)):
            if self.status is not None or self.transport is None:
                return
            try:
                self.transport.signalProcess(sig)
            except ProcessExitedAlready:
                pass
            if await self.waitEnded(reactor, wait):
                return


#: Runs its arguments as a command in a process group of its own (the same
#: process, by exec): a terminal's Ctrl-C then reaches only the demo, which
#: stops its children in order, each with one SIGTERM.
_OWN_GROUP = "import os, sys; os.setpgid(0, 0); os.execv(sys.argv[1], sys.argv[1:])"


def spawn(
    reactor: Any,
    name: str,
    argv: list[str],
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    logPath: str | None = None,
    ownGroup: bool = False,
) -> ChildProcess:
    """Start C{argv} as a L{ChildProcess}, in a process group of its own if asked."""
    child = ChildProcess(name, logPath)
    if ownGroup:
        argv = [sys.executable, "-c", _OWN_GROUP, *argv]
    reactor.spawnProcess(
        child, argv[0], argv, env=childEnvironment() if env is None else env, path=cwd
    )
    return child


async def runCommand(
    reactor: Any,
    argv: list[str],
    timeout: float = 30.0,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
) -> ChildProcess:
    """Run C{argv} to its end (killed after C{timeout} seconds); the ended child."""
    child = spawn(reactor, os.path.basename(argv[0]), argv, env, cwd)
    if not await child.waitEnded(reactor, timeout):
        await child.stop(reactor, timeout=1.0)
        raise DemoError(
            f"{' '.join(argv)} did not finish within {timeout:g} s:\n{child.tail()}"
        )
    return child


# Waiting, with a bound.


async def pollUntil(
    reactor: Any,
    attempt: Callable[[], Awaitable[T]],
    timeout: float,
    what: str,
    step: float = 0.1,
    guard: Callable[[], None] | None = None,
) -> T:
    """
    Call C{attempt} until it returns without raising, every C{step} seconds
    for at most C{timeout} seconds; C{guard} may raise to give up early.
    """
    deadline = reactor.seconds() + timeout
    while True:
        if guard is not None:
            guard()
        try:
            return await attempt()
        except DemoError:
            raise
        except Exception as e:  # not yet: try again
            if reactor.seconds() > deadline:
                raise DemoError(f"{what}: not within {timeout:g} s: {e}") from e
        await deferLater(reactor, step, lambda: None)


class HttpGet(Protocol):
    """
    A plain HTTP/1.0 GET: sends the request, keeps every byte until the
    server closes, and fires C{done} then, when the socket is gone.
    """

    def __init__(self, host: str, path: str = "/") -> None:
        self.request = (
            f"GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        ).encode("ascii")
        self.received: list[bytes] = []
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if not self.done.called:  # else it timed out
            self.done.callback(b"".join(self.received))


async def fetchPage(reactor: Any, port: int, timeout: float = 10.0) -> bytes:
    """
    The body of C{GET /} from 127.0.0.1:C{port}; a L{ValueError} unless the
    answer is a 200.
    """
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=timeout)
    get = await connectProtocol(endpoint, HttpGet(f"127.0.0.1:{port}"))
    d = get.done
    d.addTimeout(timeout, reactor)
    try:
        answer = await d
    finally:
        if get.transport is not None:
            get.transport.abortConnection()
    head, _, body = answer.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if not status.startswith(b"HTTP/1.") or status.split(b" ")[1:2] != [b"200"]:
        raise ValueError(f"expected a 200 answer, got {status[:80]!r}")
    return body


# The three roles as processes.


class LocalStack:
    """
    The relay, a skeleton and a client as C{twistd -n} processes on
    127.0.0.1, from the example configurations with their ports moved, and
    every server of the skeleton pointed at C{targetPort}.  L{stop} ends
    them all, with SIGKILL for any that does not go with SIGTERM.
    """

    def __init__(self, reactor: Any, workDir: str, targetPort: int, confDir: str = CONF) -> None:
        self.reactor = reactor
        self.workDir = os.path.abspath(workDir)
        self.configs = writeConfigs(self.workDir, targetPort, confDir)
        #: The tool commands that made the keys, users and secrets.
        self.setup = writeKeysAndUsers(self.configs)
        self.children: dict[str, ChildProcess] = {}
        self.stopping = False

    def start(self) -> None:
        """Start the three processes (each logs to C{ROLE.log})."""
        for role in ROLES:
            argv = twistdCommand() + [
                "-n", "--pidfile=", role, "--config", self.configs.path(role)
            ]
            self.children[role] = spawn(
                self.reactor,
                role,
                argv,
                cwd=self.workDir,
                logPath=os.path.join(self.workDir, f"{role}.log"),
                ownGroup=True,
            )

    def checkAlive(self) -> None:
        """Raise L{DemoError} with its log if a process has ended."""
        for child in self.children.values():
            if not child.running:
                raise DemoError(
                    f"the {child.name} process {child.describeEnd()}:\n{child.tail()}"
                )

    async def listing(self, timeout: float = 5.0) -> list[dict[str, Any]]:
        """What the relay lists now for the client's user, asked in this process."""
        access = clientConfig(readToml(self.configs.client), self.configs.client).access
        d = ensureDeferred(listServers(linkFromConfig(access, self.reactor)))
        d.addTimeout(timeout, self.reactor)
        return await d

    async def waitRegistered(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Wait until the relay lists every server of the skeleton."""
        expected = {serverId for serverId, _ in self.configs.servers}

        async def registered() -> list[dict[str, Any]]:
            servers = await self.listing()
            missing = expected - {s["id"] for s in servers}
            if missing:
                raise ValueError(f"not listed yet: {', '.join(sorted(missing))}")
            return servers

        return await pollUntil(
            self.reactor, registered, timeout, "the relay listing the skeleton's servers",
            guard=self.checkAlive,
        )

    async def waitTunnel(self, timeout: float = 30.0) -> bytes:
        """Wait until C{GET /} through the first tunnel answers; the page."""
        return await pollUntil(
            self.reactor,
            lambda: fetchPage(self.reactor, self.configs.tunnelPorts[0]),
            timeout,
            "a page through the tunnel",
            guard=self.checkAlive,
        )

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop the client, the skeleton, then the relay: SIGTERM, then SIGKILL."""
        self.stopping = True
        for role in reversed(ROLES):
            child = self.children.get(role)
            if child is not None:
                await child.stop(self.reactor, timeout)

    def problems(self) -> list[str]:
        """What went wrong in the ended processes: bad ends, tracebacks."""
        found = []
        for child in self.children.values():
            if not child.stoppedNormally():
                found.append(f"the {child.name} process {child.describeEnd()}")
            for word in ("Traceback", "Unhandled"):
                if word in child.text():
                    found.append(f"the {child.name} log has {word!r}")
        return found


def pageSite() -> Site:
    """The demo's web server: one page saying hello."""
    root = Resource()
    page = Data(PAGE, "text/html; charset=utf-8")
    root.putChild(b"", page)
    root.putChild(b"index.html", page)
    return Site(root)


async def relaynatList(reactor: Any, clientConfigPath: str, *extra: str) -> ChildProcess:
    """Run C{relaynat list --config CLIENT} as a user would."""
    return await runCommand(
        reactor, relaynatCommand() + ["list", "--config", clientConfigPath, *extra]
    )


def say(text: str = "") -> None:
    print(text, flush=True)


async def demo(reactor: Any, once: bool, keepLogs: bool) -> None:
    """
    Show the page through the three roles; with C{once} stop then, else
    stay up until Ctrl-C or SIGTERM.  Exits 1 if a step or a stop fails.
    """
    workDir = tempfile.mkdtemp(prefix="relaynat-demo-")
    web = reactor.listenTCP(0, pageSite(), interface="127.0.0.1")
    stack = LocalStack(reactor, workDir, web.getHost().port)
    done: Deferred[None] = Deferred()
    stopping = [False]

    async def shutdown(failed: bool = False) -> None:
        # Called once the work is done, on an error, and by the reactor on
        # Ctrl-C or SIGTERM (which waits for it); only the first one acts.
        if stopping[0]:
            return
        stopping[0] = True
        await stack.stop()
        await maybeDeferred(web.stopListening)
        problems = [] if failed else stack.problems()
        for problem in problems:
            say(f"relaynat demo: {problem}")
        if failed or problems or keepLogs:
            say(f"The logs are in {workDir}")
        else:
            shutil.rmtree(workDir, ignore_errors=True)
        say("Stopped.")
        if failed or problems:
            done.errback(SystemExit(1))
        else:
            done.callback(None)

    def died(child: ChildProcess) -> None:
        # A role that ends on its own while the demo is up: say so and stop.
        # A SIGINT sent to a role itself is taken as a wish to stop them all.
        if child.exitSignal == signal.SIGINT:
            ensureDeferred(shutdown())
        elif not stopping[0]:
            say(f"relaynat demo: the {child.name} process {child.describeEnd()}:")
            say(child.tail())
            ensureDeferred(shutdown(failed=True))

    reactor.addSystemEventTrigger("before", "shutdown", lambda: ensureDeferred(shutdown()))
    say(f"Web server on http://127.0.0.1:{web.getHost().port}/ (the server behind the NAT)")
    say(f"The relay's key, the users and the secret, made in {workDir}:")
    for command in stack.setup:
        say("  $ " + command.replace(workDir + os.sep, "").replace(workDir, "."))
    say(
        f"Starting relay (clients {stack.configs.clientsPort},"
        f" skeletons {stack.configs.skeletonsPort}), skeleton and client"
        f" (tunnel {stack.configs.tunnelPorts[0]}); their logs go to {workDir}"
    )
    stack.start()
    try:
        await stack.waitRegistered()
        page = await stack.waitTunnel()
        listed = await relaynatList(reactor, stack.configs.client)
        if listed.exitCode != 0:
            raise DemoError(f"relaynat list {listed.describeEnd()}:\n{listed.text()}")
    except DemoError as e:
        if not stopping[0]:
            # Not a stop asked for meanwhile: a real failure.
            say(f"relaynat demo: {e}")
            await shutdown(failed=True)
        await done
        return
    say()
    say("$ relaynat list --config conf/client.toml   (ports moved)")
    say(listed.stdout.decode("utf-8", "replace").rstrip())
    say()
    say(f"$ curl {stack.configs.tunnelUrl}   (through client, relay and skeleton)")
    say(page.decode("utf-8", "replace").rstrip())
    say()
    if once:
        await shutdown()
    else:
        say(f"Open {stack.configs.tunnelUrl} — Ctrl-C to stop")
        for child in stack.children.values():
            child.ended().addCallback(lambda _, c: died(c), child)
    await done


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m relaynat.demo",
        description=(
            "Run a relay, a skeleton and a client on 127.0.0.1 from conf/ (ports"
            " moved to free ones) in front of a small web page, and show it"
            " through the tunnel."
        ),
    )
    parser.add_argument("--once", action="store_true", help="stop after showing the page")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    options = parser.parse_args(argv)
    if not os.path.isdir(CONF):
        sys.exit(f"relaynat demo: no {CONF}: run it from a checkout of relaynat")
    react(lambda reactor: ensureDeferred(demo(reactor, options.once, options.keep_logs)))


if __name__ == "__main__":
    main()
