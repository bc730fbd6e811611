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
import struct
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
    pollUntil,
    relaynatList,
    spawn,
    twistdCommand,
    writeConfigs,
    writeKeysAndUsers,
)
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


async def hiddenServicePorts(controlPort: str) -> list[str]:
    """The C{HiddenServicePort} lines the tor at C{controlPort} holds, asked over its control port."""
    tor = await txtorcon.connect(
        reactor, TCP4ClientEndpoint(reactor, "127.0.0.1", int(controlPort))
    )
    try:
        options = await tor.protocol.get_conf("HiddenServiceOptions")
    finally:
        await tor.quit()
    # One service gives a string, several a list; nothing, no key.
    ports = options.get("HiddenServicePort", [])
    return [ports] if isinstance(ports, str) else list(ports)


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
    """A real C{twistd relay} whose clients' port is an onion service."""

    timeout = 120

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
        relay = spawn(
            reactor,
            "relay",
            twistdCommand()
            + ["-n", "--pidfile=", "relay", "--config", configs.relay, "--clients", onion],
            cwd=work,
        )
        self.addCleanup(relay.stop, reactor)

        def alive() -> None:
            for child in (tor, relay):
                if not child.running:
                    raise LocalStackError(f"{child.name} {child.describeEnd()}:\n{child.tail()}")

        async def hostname() -> str:
            with open(os.path.join(serviceDir, "hostname"), encoding="ascii") as f:
                name = f.read().strip()
            if not ONION.match(name):
                raise ValueError(f"not an onion name: {name!r}")
            return name

        name = await pollUntil(reactor, hostname, timeout=60, what="the onion name", guard=alive)

        async def servicePort() -> int:
            ports = await hiddenServicePorts(controlPort)
            [line] = ports
            public, target = line.split()
            self.assertEqual(public, str(PUBLIC_PORT))
            host, port = target.rsplit(":", 1)
            self.assertEqual(host, "127.0.0.1")
            return int(port)

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

