"""
The relay as a Tor onion service (txtorcon's C{onion:} endpoint) and an end
reaching it with C{tor:}, against Debian's C{tor} run offline: C{DisableNetwork
1}, so the service is added and its local port serves, but no descriptor is
published and no circuit is built.  The last hop Tor would make to the onion
service (from its SOCKS port to the service's local port) is played by a
small SOCKS5 server in the test.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import struct
from functools import partial

import txtorcon
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase

from relaynat.localstack import (
    ChildProcess,
    LocalStackError,
    fetchPage,
    pollUntil,
    relaynatList,
    spawn,
    twistdCommand,
    writeConfigs,
    writeKeysAndUsers,
)
from relaynat.tap.listening import CannotStart, OnionTors
from relaynat.test.net import runAsync

ONION = re.compile(r"^[a-z2-7]{56}\.onion$")
#: The onion service's port: what clients name after the .onion address.
PUBLIC_PORT = 7000


def torBinary() -> str:
    """
    The C{tor} to run; the test is skipped without one, except under CI,
    which must install Debian's C{tor} package.
    """
    found = shutil.which("tor") or next(
        (p for p in ("/usr/sbin/tor", "/usr/bin/tor") if os.access(p, os.X_OK)), None
    )
    if found is None:
        if os.environ.get("CI"):
            raise AssertionError("CI must install tor (apt-get install -y tor)")
        raise SkipTest("no tor binary: apt-get install tor to run the Tor tests")
    return found


async def startTor(case: TestCase) -> tuple[ChildProcess, str]:
    """
    A tor process that touches no network, stopped when C{case} ends; it and
    its control port as an endpoint string.  Tor picks the port and writes
    it to a file (no race with another test over a free port), and asks no
    authentication: only this host's loopback reaches it, for one test.
    """
    tor = torBinary()
    work = os.path.abspath(case.mktemp())
    data = os.path.join(work, "data")
    os.makedirs(data, mode=0o700)
    portFile = os.path.join(work, "control.port")
    torrc = os.path.join(work, "torrc")
    with open(torrc, "w", encoding="ascii") as f:
        f.write(
            "DisableNetwork 1\n"
            f"DataDirectory {data}\n"
            "ControlPort 127.0.0.1:auto\n"
            f"ControlPortWriteToFile {portFile}\n"
            "CookieAuthentication 0\n"
            "SocksPort 0\n"
            "Log notice stdout\n"
        )
    child = spawn(reactor, "tor", [tor, "-f", torrc], cwd=work)
    case.addCleanup(child.stop, reactor)

    def alive() -> None:
        if not child.running:
            raise LocalStackError(f"tor {child.describeEnd()}:\n{child.tail()}")

    async def controlPort() -> str:
        with open(portFile, encoding="ascii") as f:
            line = f.read()
        match = re.match(r"PORT=127\.0\.0\.1:(\d+)\n", line)
        if match is None:
            raise ValueError(f"not written yet: {line!r}")
        return match.group(1)

    port = await pollUntil(reactor, controlPort, timeout=30, what="tor's control port", guard=alive)
    return child, port


async def hiddenServices(controlPort: str) -> dict[str, list[str]]:
    """
    The onion services the tor at C{controlPort} holds, asked over its
    control port: each C{HiddenServiceDir} and its C{HiddenServicePort} lines.
    """
    tor = await txtorcon.connect(
        reactor, TCP4ClientEndpoint(reactor, "127.0.0.1", int(controlPort))
    )
    try:
        # Raw, in tor's order: each service's lines follow its directory.
        raw = await tor.protocol.get_conf_raw("HiddenServiceOptions")
    finally:
        await tor.quit()
    services: dict[str, list[str]] = {}
    folder = None
    for line in raw.splitlines():
        key, _, value = line.partition("=")
        if key == "HiddenServiceDir":
            folder = value.rstrip("/")
            services[folder] = []
        elif key == "HiddenServicePort" and folder is not None:
            services[folder].append(value)
    return services


def localPort(line: str, public: int) -> int:
    """The local port a C{HiddenServicePort} line for C{public} leads to, on 127.0.0.1."""
    port, target = line.split()
    if port != str(public):
        raise ValueError(f"not port {public}: {line!r}")
    host, local = target.rsplit(":", 1)
    if host != "127.0.0.1":
        raise ValueError(f"not to 127.0.0.1: {line!r}")
    return int(local)


async def onionName(folder: str) -> str:
    """The .onion name tor wrote in C{folder}/hostname; L{ValueError} until it has."""
    with open(os.path.join(folder, "hostname"), encoding="ascii") as f:
        name = f.read().strip()
    if not ONION.match(name):
        raise ValueError(f"not an onion name: {name!r}")
    return name


class Socks5AsTor(Protocol):
    """
    A SOCKS5 server taking one CONNECT to a host name and port, as a
    client's tor does, and joining it to where the onion service's
    C{HiddenServicePort} leads, as Tor would once its circuits were built.
    """

    def __init__(self, routes: dict[tuple[str, int], int], asked: list[tuple[str, int]]) -> None:
        self.routes = routes
        self.asked = asked
        self.buffer = b""
        self.stage = "greeting"
        self.peer: Protocol | None = None

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        if self.stage == "joined":
            assert self.peer is not None and self.peer.transport is not None
            self.peer.transport.write(data)
            return
        self.buffer += data
        if self.stage == "greeting" and len(self.buffer) >= 2 and len(self.buffer) >= 2 + self.buffer[1]:
            methods = self.buffer[2 : 2 + self.buffer[1]]
            self.buffer = self.buffer[2 + self.buffer[1] :]
            if 0 not in methods:  # only "no authentication", as tor offers
                self.transport.loseConnection()
                return
            self.transport.write(b"\x05\x00")
            self.stage = "request"
        if self.stage == "request" and len(self.buffer) >= 5:
            version, command, _, kind, length = self.buffer[:5]
            if (version, command, kind) != (5, 1, 3):
                self.transport.write(b"\x05\x07\x00\x01" + bytes(6))
                self.transport.loseConnection()
                return
            if len(self.buffer) < 5 + length + 2:
                return
            host = self.buffer[5 : 5 + length].decode("ascii")
            (port,) = struct.unpack("!H", self.buffer[5 + length : 7 + length])
            rest, self.buffer = self.buffer[7 + length :], b""
            self.asked.append((host, port))
            self.stage = "connecting"
            IPushProducer(self.transport).pauseProducing()
            self.connect(host, port, rest)

    def connect(self, host: str, port: int, rest: bytes) -> None:
        assert self.transport is not None
        local = self.routes.get((host, port))
        if local is None:
            # Host unreachable: tor's answer for an onion it cannot find.
            self.transport.write(b"\x05\x04\x00\x01" + bytes(6))
            self.transport.loseConnection()
            return
        d = connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", local), Back(self))

        def joined(back: Back) -> None:
            assert self.transport is not None and back.transport is not None
            self.peer = back
            self.stage = "joined"
            self.transport.write(b"\x05\x00\x00\x01" + bytes(6))
            if rest:
                back.transport.write(rest)
            IPushProducer(self.transport).resumeProducing()

        def failed(reason: Failure) -> None:
            assert self.transport is not None
            self.transport.write(b"\x05\x05\x00\x01" + bytes(6))
            self.transport.loseConnection()

        d.addCallbacks(joined, failed)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.loseConnection()


class Back(Protocol):
    """The SOCKS server's connection to the onion service's local port."""

    def __init__(self, front: Socks5AsTor) -> None:
        self.front = front

    def dataReceived(self, data: bytes) -> None:
        assert self.front.transport is not None
        self.front.transport.write(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.front.transport is not None:
            self.front.transport.loseConnection()


class OnionRelayTests(TestCase):
    """A real C{twistd relay} whose ports are onion services (or cannot be)."""

    timeout = 120

    def relay(self, work: str, configPath: str, *flags: str) -> ChildProcess:
        """A C{twistd relay} with C{flags}, stopped when the test ends."""
        relay = spawn(
            reactor,
            "relay",
            twistdCommand() + ["-n", "--pidfile=", "relay", "--config", configPath, *flags],
            cwd=work,
        )
        self.addCleanup(relay.stop, reactor)
        return relay

    @runAsync
    async def test_onionService(self) -> None:
        """
        C{--clients onion:7000:controlPort=N:version=3:hiddenServiceDir=DIR}
        makes the relay add a v3 onion service to the tor at port N: its
        .onion name appears in DIR, tor holds a C{HiddenServicePort} from
        7000 to a port of 127.0.0.1, and the relay serves its clients there
        (C{relaynat list} logs in through it).  A client whose C{relay} is
        C{tor:host=NAME.onion:port=7000:socksHostname=...:socksPort=...}
        reaches the relay through that SOCKS port, asking it for the onion
        name (never resolving it itself).
        """
        tor, controlPort = await startTor(self)
        work = os.path.abspath(self.mktemp())
        configs = writeConfigs(work, 1)
        writeKeysAndUsers(configs)
        serviceDir = os.path.join(work, "onion")
        onion = (
            f"onion:{PUBLIC_PORT}:controlPort={controlPort}:version=3"
            f":hiddenServiceDir={serviceDir}"
        )
        relay = self.relay(work, configs.relay, "--clients", onion)

        def alive() -> None:
            for child in (tor, relay):
                if not child.running:
                    raise LocalStackError(f"{child.name} {child.describeEnd()}:\n{child.tail()}")

        name = await pollUntil(
            reactor, partial(onionName, serviceDir), timeout=60, what="the onion name",
            guard=alive,
        )

        async def servicePort() -> int:
            [(folder, [line])] = (await hiddenServices(controlPort)).items()
            self.assertEqual(folder, os.path.realpath(serviceDir))
            return localPort(line, PUBLIC_PORT)

        local = await pollUntil(
            reactor, servicePort, timeout=30, what="tor's HiddenServicePort", guard=alive
        )

        # What tor does with a stream to NAME.onion:7000: connect to local.
        listed = await relaynatList(
            reactor, configs.client, "--relay", f"tcp:127.0.0.1:{local}"
        )
        self.assertEqual(listed.exitCode, 0, listed.text())
        self.assertIn("ID", listed.stdout.decode())

        asked: list[tuple[str, int]] = []
        routes = {(name, PUBLIC_PORT): local}
        socks = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(lambda: Socks5AsTor(routes, asked))
        )
        self.addCleanup(socks.stopListening)
        address = socks.getHost()
        assert isinstance(address, IPv4Address)
        viaTor = (
            f"tor:host={name}:port={PUBLIC_PORT}"
            f":socksHostname=127.0.0.1:socksPort={address.port}"
        )
        listed = await relaynatList(reactor, configs.client, "--relay", viaTor)
        self.assertEqual(listed.exitCode, 0, listed.text())
        self.assertIn((name, PUBLIC_PORT), asked)
        # Another onion name is not this relay: the end says it cannot reach it.
        other = "a" * 56 + ".onion"
        refused = await relaynatList(
            reactor, configs.client, "--relay", viaTor.replace(name, other)
        )
        self.assertNotEqual(refused.exitCode, 0, refused.text())
        self.assertIn((other, PUBLIC_PORT), asked)

        await relay.stop(reactor)
        self.assertTrue(relay.stoppedNormally(), relay.describeEnd())
        self.assertNotIn("Traceback", relay.text())

    @runAsync
    async def test_portsOnOneTor(self) -> None:
        """
        The relay's three ports (clients 7000, skeletons 7001, web 7080) as
        C{onion:PORT:controlPort=N:version=3:hiddenServiceDir=DIR} on one
        tor, a folder each, make three v3 services that the tor keeps
        together: each folder gets a .onion name of its own, the tor holds
        each folder with its own C{HiddenServicePort} from its port to a
        local port of its own, and the relay serves each role there (a
        client logs in at 7000's, is told it is at the skeletons' port at
        7001's; 7080's answers C{/healthz}).
        """
        tor, controlPort = await startTor(self)
        work = os.path.abspath(self.mktemp())
        configs = writeConfigs(work, 1)
        writeKeysAndUsers(configs)
        ports = {"clients": 7000, "skeletons": 7001, "web": 7080}
        folders = {key: os.path.join(work, f"onion-{key}") for key in ports}
        flags = [
            arg
            for key, port in ports.items()
            for arg in (
                f"--{key}",
                f"onion:{port}:controlPort={controlPort}:version=3"
                f":hiddenServiceDir={folders[key]}",
            )
        ]
        relay = self.relay(work, configs.relay, *flags)

        def alive() -> None:
            for child in (tor, relay):
                if not child.running:
                    raise LocalStackError(f"{child.name} {child.describeEnd()}:\n{child.tail()}")

        names = {
            key: await pollUntil(
                reactor, partial(onionName, folder), timeout=60,
                what=f"the onion name of {key}", guard=alive,
            )
            for key, folder in folders.items()
        }
        self.assertEqual(len(set(names.values())), len(ports), names)

        async def allServices() -> dict[str, int]:
            services = await hiddenServices(controlPort)
            expected = {os.path.realpath(folder) for folder in folders.values()}
            if set(services) != expected:
                raise ValueError(f"tor holds {services}")
            local = {}
            for key, folder in folders.items():
                [line] = services[os.path.realpath(folder)]
                local[key] = localPort(line, ports[key])
            return local

        # Each hostname is written as its service is added; the last added
        # must not have taken the others' place (10 s: the relay is done).
        local = await pollUntil(
            reactor, allServices, timeout=10, what="tor holding the three services",
            guard=alive,
        )
        self.assertEqual(len(set(local.values())), len(ports), local)

        listed = await relaynatList(
            reactor, configs.client, "--relay", f"tcp:127.0.0.1:{local['clients']}"
        )
        self.assertEqual(listed.exitCode, 0, listed.text())
        atSkeletons = await relaynatList(
            reactor, configs.client, "--relay", f"tcp:127.0.0.1:{local['skeletons']}"
        )
        self.assertNotEqual(atSkeletons.exitCode, 0, atSkeletons.text())
        self.assertIn("port for skeletons (port Y)", atSkeletons.text())
        self.assertEqual(await fetchPage(reactor, local["web"], "/healthz"), b"ok\n")

        await relay.stop(reactor)
        self.assertTrue(relay.stoppedNormally(), relay.describeEnd())
        self.assertNotIn("Traceback", relay.text())

    @runAsync
    async def test_noTor(self) -> None:
        """
        Both ports as C{onion:} endpoints whose C{controlPort} refuses
        connections (no tor there): the start goes on (the port is reached
        only once the reactor runs), then each port fails with one line
        naming its endpoint and key, the refusal and what to do, and the
        relay stops by itself, with no traceback.
        """
        # Bound, never listening: a connection to it is refused.
        closed = socket.socket()
        self.addCleanup(closed.close)
        closed.bind(("127.0.0.1", 0))
        controlPort = closed.getsockname()[1]
        work = os.path.abspath(self.mktemp())
        configs = writeConfigs(work, 1)
        writeKeysAndUsers(configs)
        onion = {
            key: f"onion:{port}:controlPort={controlPort}:version=3"
            f":hiddenServiceDir={os.path.join(work, f'onion-{key}')}"
            for key, port in (("clients", 7000), ("skeletons", 7001))
        }
        relay = self.relay(
            work, configs.relay, "--clients", onion["clients"], "--skeletons", onion["skeletons"]
        )
        self.assertTrue(await relay.waitEnded(reactor, 30), relay.tail())
        text = relay.text()
        for key, description in onion.items():
            lines = [
                line
                for line in text.splitlines()
                if f"cannot listen on {description} ([relay] {key}): " in line
            ]
            self.assertEqual(len(lines), 1, text)
            self.assertIn("Connection refused", lines[0], text)
            self.assertIn("no Tor answers at its controlPort", lines[0], text)
        self.assertNotIn("Traceback", text)
        self.assertNotIn("Unhandled", text)


class OnionTorsTests(TestCase):
    """L{OnionTors}: the relay's onion ports, as it reads them (nothing is opened)."""

    def test_oneFolderTwice(self) -> None:
        """
        Two ports naming one C{hiddenServiceDir} on one tor (which would be
        one service, at one of the two ports' local ports) stop the start
        with one line naming both ports; the same folder on another tor is
        not this tor's business.
        """
        tors = OnionTors(reactor)
        folder = os.path.abspath(self.mktemp())
        tors.endpoint(f"onion:7000:controlPort=9051:version=3:hiddenServiceDir={folder}", "a")
        error = self.assertRaises(
            CannotStart,
            tors.endpoint,
            f"onion:7001:controlPort=9051:version=3:hiddenServiceDir={folder}",
            "b",
        )
        self.assertEqual(
            str(error),
            f"cannot listen on onion:7001:controlPort=9051:version=3:hiddenServiceDir={folder}"
            " (b): a has the same hiddenServiceDir on this Tor: give each port a folder of its"
            " own",
        )
        tors.endpoint(f"onion:7001:controlPort=9052:version=3:hiddenServiceDir={folder}", "c")
