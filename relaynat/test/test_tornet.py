"""
A tunnel through a private Tor network (L{relaynat.test.tornet}) end to
end: the real relay listening as two onion services on one tor (its
clients' port X and its skeletons' port Y), and a skeleton and a client reaching them with
C{tor:} through a client tor's SOCKS port, every hop a real Tor circuit on
127.0.0.1.  It takes some 25 s, most of it the network's bootstrap.
"""

from __future__ import annotations

import json
import os
import re
import sys
from functools import partial

from twisted.internet import reactor
from twisted.logger import Logger
from twisted.trial.unittest import TestCase

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
from relaynat.test.test_tor import onionName
from relaynat.test.tornet import TorNetwork

_log = Logger()

#: The onion services' ports: what the ends name after the .onion address.
CLIENTS_PORT, SKELETONS_PORT = 7000, 7001
#: Bytes sent each way through the tunnel.
SIZE = 1 << 20


def bulkPeer(name: str, *args: str) -> ChildProcess:
    """A L{relaynat.test.bulkpeer} process: it prints its port (listening), then its report."""
    return spawn(reactor, name, [sys.executable, "-m", "relaynat.test.bulkpeer", *args])


def report(peer: ChildProcess) -> dict[str, object]:
    """What a bulk peer printed last: the sha256 of what it sent and of what it got."""
    answer: dict[str, object] = json.loads(peer.stdout.decode().strip().splitlines()[-1])
    return answer


class TorNetworkTunnelTests(TestCase):
    """The three roles as C{twistd} processes, every connection between them through Tor."""

    timeout = 180

    @runAsync
    async def test_tunnelThroughOnionServices(self) -> None:
        """
        In a bootstrapped private Tor network, a C{twistd relay} given
        C{onion:PORT:controlPort=N:version=3:hiddenServiceDir=DIR} for both
        its ports, one tor (N) and a folder (DIR) each, makes two v3 onion
        services on that tor, of two names, whose descriptors reach the
        HSDirs; a C{twistd skeleton} and a C{twistd client} whose
        C{--relay} is
        C{tor:host=NAME.onion:port=PORT:socksHostname=127.0.0.1:socksPort=S}
        log in through Tor's circuits (C{relaynat list} over Tor lists the
        skeleton's server), and 1 MB each way through the client's tunnel
        arrives unchanged (the sha256 of what each side sent and the other
        got).
        Stopping ends every relaynat process normally and every tor, and
        removes the network's folder.
        """
        # Both ports' services on one tor, as one would run them.
        net = TorNetwork(reactor, clients=("service", "socks"))
        self.addCleanup(net.stop)
        bootstrap = await net.start(timeout=90)
        _log.info("private Tor network bootstrapped in {seconds:.1f} s", seconds=bootstrap)
        socksPort = await net.socksPort("socks")
        uploads = await net.watchUploads("service")

        target = bulkPeer("target", "listen", str(SIZE), "1")
        self.addCleanup(target.stop, reactor)

        async def listening() -> int:
            match = re.match(rb"PORT (\d+)\n", bytes(target.stdout))
            if match is None:
                raise ValueError("no port yet")
            return int(match.group(1))

        targetPort = await pollUntil(reactor, listening, 30, "the target's port")
        work = os.path.abspath(self.mktemp())
        configs = writeConfigs(work, targetPort)
        writeKeysAndUsers(configs)
        ports = (CLIENTS_PORT, SKELETONS_PORT)
        serviceDirs = {port: os.path.join(work, f"onion-{port}") for port in ports}
        controlPort = await net.controlPort("service")
        onion = {
            port: f"onion:{port}:controlPort={controlPort}:version=3"
            f":hiddenServiceDir={serviceDirs[port]}"
            for port in ports
        }
        children: list[ChildProcess] = []

        def start(role: str, *flags: str) -> ChildProcess:
            child = spawn(
                reactor,
                role,
                twistdCommand() + ["-n", "--pidfile=", role, "--config", configs.path(role), *flags],
                cwd=work,
                logPath=os.path.join(work, f"{role}.log"),
            )
            children.append(child)
            self.addCleanup(child.stop, reactor)
            return child

        def alive() -> None:
            net.checkAlive()
            for child in children:
                if not child.running:
                    raise LocalStackError(f"{child.name} {child.describeEnd()}:\n{child.tail()}")

        relayStarted = reactor.seconds()
        start("relay", "--clients", onion[CLIENTS_PORT], "--skeletons", onion[SKELETONS_PORT])

        async def published(name: str) -> None:
            if not uploads.published(name):
                raise ValueError(uploads.describe(name))

        names: dict[int, str] = {}
        for port, folder in serviceDirs.items():
            names[port] = await pollUntil(
                reactor, partial(onionName, folder), 30, f"the onion name of port {port}",
                guard=alive,
            )
        # The ends start once the HSDirs have both descriptors: one that
        # asks before is told the host is unreachable, and backs off.
        self.assertNotEqual(names[CLIENTS_PORT], names[SKELETONS_PORT])
        for name in names.values():
            await pollUntil(
                reactor, partial(published, name), 60, f"the descriptor of {name}",
                guard=alive,
            )
        _log.info(
            "descriptors uploaded {seconds:.1f} s after the relay started",
            seconds=reactor.seconds() - relayStarted,
        )

        def viaTor(port: int) -> str:
            return (
                f"tor:host={names[port]}:port={port}"
                f":socksHostname=127.0.0.1:socksPort={socksPort}"
            )

        endsStarted = reactor.seconds()
        start("skeleton", "--relay", viaTor(SKELETONS_PORT))
        start("client", "--relay", viaTor(CLIENTS_PORT))

        async def listed() -> None:
            answer = await relaynatList(reactor, configs.client, "--relay", viaTor(CLIENTS_PORT))
            if answer.exitCode != 0 or configs.servers[0][0] not in answer.stdout.decode():
                raise ValueError(answer.text()[-500:])

        try:
            await pollUntil(
                reactor, listed, 60, "the skeleton's server listed over Tor", step=1, guard=alive
            )
        except LocalStackError as e:
            raise LocalStackError(f"{e}\n{net.describe()}") from None
        _log.info(
            "listed over Tor {seconds:.1f} s after the ends started",
            seconds=reactor.seconds() - endsStarted,
        )

        moving = reactor.seconds()
        source = bulkPeer("source", "connect", str(configs.tunnelPorts[0]), str(SIZE), "2")
        self.addCleanup(source.stop, reactor)
        for peer in (source, target):
            self.assertTrue(await peer.waitEnded(reactor, 60), f"{peer.name}:\n{peer.tail()}")
            self.assertEqual(peer.exitCode, 0, peer.text())
        _log.info("2 MB through the tunnel in {seconds:.1f} s", seconds=reactor.seconds() - moving)
        sent, received = report(source), report(target)
        self.assertEqual((sent["gotBytes"], received["gotBytes"]), (SIZE, SIZE))
        self.assertEqual(received["got"], sent["sent"])
        self.assertEqual(sent["got"], received["sent"])

        for child in reversed(children):
            await child.stop(reactor)
            self.assertTrue(child.stoppedNormally(), f"{child.name} {child.describeEnd()}")
            self.assertNotIn("Traceback", child.text(), child.name)
        await net.stop()
        for node in net.nodes:
            assert node.child is not None
            self.assertFalse(node.child.running, f"tor {node.name}")
        self.assertFalse(os.path.exists(net.folder))
