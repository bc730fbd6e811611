"""
The real commands, end to end: C{twistd -n relay}, C{skeleton} and C{client}
as separate processes, started from the example configurations in C{conf/}
with their ports moved to free ones on 127.0.0.1 (L{relaynat.localstack}
does the moving and the starting, for the demo too), and C{relaynat list}
and C{python -m relaynat.demo} as a user runs them.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IProtocolFactory
from twisted.trial.unittest import TestCase

from relaynat.config import clientConfig, parseToml, relayConfig, skeletonConfig
from relaynat.demo import PAGE, pageSite
from relaynat.localstack import (
    CONF,
    REPO,
    ChildProcess,
    LocalStack,
    LocalStackError,
    childEnvironment,
    endpointPort,
    fetchPage,
    moveEndpoint,
    moveEndpoints,
    pollUntil,
    relaynatList,
    runCommand,
    twistdCommand,
    writeConfigs,
)
from relaynat.test.net import runAsync
from relaynat.test.streams import Bulk, StalledFactory, expectedDigest

MB = 1024 * 1024


def residentBytes(pid: int) -> int:
    """The resident set size of process C{pid}, from /proc."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


class MoveEndpointTests(TestCase):
    """Moving the example configurations to other ports, with no I/O."""

    ports = {7000: 17000, 7001: 17001, 8000: 18000, 8080: 18080}

    def test_listening(self) -> None:
        """
        A listening tcp: endpoint gets its new port, and 127.0.0.1 unless it
        names an interface; its other arguments stay.
        """
        cases = {
            "tcp:7000": "tcp:17000:interface=127.0.0.1",
            "tcp:7000:backlog=5": "tcp:17000:backlog=5:interface=127.0.0.1",
            "tcp:8080:interface=127.0.0.1": "tcp:18080:interface=127.0.0.1",
            "tcp:port=7001:interface=\\:\\:1": "tcp:port=17001:interface=\\:\\:1",
            "tcp:7000:10.1.2.3": "tcp:17000:10.1.2.3",
            "tcp6:7000": "tcp6:17000",
        }
        for old, new in cases.items():
            self.assertEqual(moveEndpoint(old, True, self.ports), new, old)

    def test_connecting(self) -> None:
        """A connecting tcp: endpoint gets its new port, whichever way it is written."""
        cases = {
            "tcp:127.0.0.1:7000": "tcp:127.0.0.1:17000",
            "tcp:relay.example:7001:timeout=5": "tcp:relay.example:17001:timeout=5",
            "tcp:host=127.0.0.1:port=8000": "tcp:host=127.0.0.1:port=18000",
            "tcp:host=127.0.0.1:8000": "tcp:host=127.0.0.1:18000",
        }
        for old, new in cases.items():
            self.assertEqual(moveEndpoint(old, False, self.ports), new, old)
            self.assertEqual(endpointPort(new, False), self.ports[endpointPort(old, False)])

    def test_refused(self) -> None:
        """
        What the demo cannot move is an error, not a silent pass: a port it
        has no new one for, a non-TCP endpoint, a missing port.
        """
        for description in ("tcp:9999", "unix:/tmp/relay.sock", "tcp:port=x"):
            self.assertRaises(LocalStackError, moveEndpoint, description, True, self.ports)
        self.assertRaises(LocalStackError, moveEndpoint, "tcp:127.0.0.1", False, self.ports)

    def test_hosts(self) -> None:
        """
        Given a host, a listener binds that interface and a connection
        reaches that host, whichever way the endpoint names it (or not).
        """
        cases = [
            ("tcp:7000", True, "tcp:17000:interface=10.0.0.1"),
            ("tcp:7000:interface=127.0.0.1", True, "tcp:17000:interface=10.0.0.1"),
            ("tcp:7000:127.0.0.1", True, "tcp:17000:10.0.0.1"),
            ("tcp:127.0.0.1:7001", False, "tcp:10.0.0.1:17001"),
            ("tcp:host=127.0.0.1:port=7001", False, "tcp:host=10.0.0.1:port=17001"),
        ]
        for old, listening, new in cases:
            self.assertEqual(moveEndpoint(old, listening, self.ports, "10.0.0.1"), new, old)
        self.assertEqual(
            moveEndpoint("tcp:7000", True, self.ports, "::1"), "tcp:17000:interface=\\:\\:1"
        )

    def test_moveEndpoints(self) -> None:
        """
        In a configuration as data, only the endpoint values change, each to
        the host given for its key: other keys, and other strings that look
        like endpoints, stay; the original is left as it was.
        """
        document: dict[str, Any] = {
            "skeleton": {"relay": "tcp:127.0.0.1:7001", "name": "tcp:7000"},
            "server": [
                {"id": "web", "description": "tcp:8000", "target": "tcp:127.0.0.1:8000"}
            ],
        }
        moved = moveEndpoints(document, self.ports, {("skeleton", "relay"): "10.0.0.2"})
        self.assertEqual(
            moved,
            {
                "skeleton": {"relay": "tcp:10.0.0.2:17001", "name": "tcp:7000"},
                "server": [
                    {"id": "web", "description": "tcp:8000", "target": "tcp:127.0.0.1:18000"}
                ],
            },
        )
        self.assertEqual(document["skeleton"]["relay"], "tcp:127.0.0.1:7001")

    def test_examples(self) -> None:
        """
        The three files in conf/ move to the ports picked, to 127.0.0.1, and
        still pass the roles' own checks.
        """
        configs = writeConfigs(os.path.abspath(self.mktemp()), 18000)
        with open(configs.relay, encoding="utf-8") as f:
            relay = relayConfig(parseToml(f.read()), configs.relay)
        with open(configs.skeleton, encoding="utf-8") as f:
            skeleton = skeletonConfig(parseToml(f.read()), configs.skeleton)
        with open(configs.client, encoding="utf-8") as f:
            client = clientConfig(parseToml(f.read()), configs.client)
        self.assertEqual(endpointPort(relay.clients, True), configs.clientsPort)
        self.assertEqual(endpointPort(relay.skeletons, True), configs.skeletonsPort)
        assert relay.web is not None
        self.assertEqual(endpointPort(relay.web, True), configs.webPort)
        for listening in (relay.clients, relay.skeletons, relay.web):
            self.assertIn("interface=127.0.0.1", listening)
        self.assertEqual(endpointPort(skeleton.access.relay, False), configs.skeletonsPort)
        self.assertEqual(
            [endpointPort(s.target, False) for s in skeleton.servers], [18000]
        )
        self.assertEqual(endpointPort(client.access.relay, False), configs.clientsPort)
        self.assertEqual(
            tuple(endpointPort(t.listen, True) for t in client.tunnels), configs.tunnelPorts
        )
        self.assertEqual(configs.servers, (("web", "demo web server"),))


class TwistdStack(TestCase):
    """Tests of the three roles as real twistd processes: how they start them."""

    # A slow machine may need a while for five Python processes to start.
    timeout = 120

    async def listen(self, factory: IProtocolFactory) -> int:
        """Listen on a free port of 127.0.0.1 until the test ends; the port."""
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        address = port.getHost()
        assert isinstance(address, IPv4Address)
        return address.port

    async def startStack(self, target: IProtocolFactory) -> LocalStack:
        """
        C{target} on a free port as the skeleton's server, then the three
        roles; returns once the relay lists the server.  However the test
        ends, every process gets SIGTERM, then SIGKILL if it lingers.
        """
        targetPort = await self.listen(target)
        workDir = os.path.abspath(self.mktemp())
        stack = LocalStack(reactor, workDir, targetPort)
        self.addCleanup(stack.stop)
        stack.start()
        await stack.waitRegistered(timeout=30)
        return stack


    def assertStoppedCleanly(self, stack: LocalStack) -> None:
        """Every role ended as twistd ends at SIGTERM, and no log shows an error."""
        for role, child in stack.children.items():
            self.assertTrue(
                child.stoppedNormally(), f"{role} {child.describeEnd()}:\n{child.tail()}"
            )
            for word in ("Traceback", "Unhandled"):
                self.assertNotIn(word, child.text(), f"{role} log:\n{child.text()}")



class TwistdTests(TwistdStack):
    """The three roles as real twistd processes, and the commands around them."""

    @runAsync
    async def test_pageThroughTunnel(self) -> None:
        """
        An HTTP GET to the client's tunnel port comes back with the page of a
        web server in this process, carried by the three twistd processes.
        """
        stack = await self.startStack(pageSite())
        body = await stack.waitTunnel(timeout=30)
        self.assertEqual(body, PAGE)
        # And again, now that the pool has been used once.
        self.assertEqual(await fetchPage(reactor, stack.configs.tunnelPorts[0]), PAGE)
        await stack.stop()
        self.assertStoppedCleanly(stack)

    @runAsync
    async def test_list(self) -> None:
        """
        C{relaynat list --config client.toml} prints the skeleton's server
        with its description; with C{--json} it prints the same as a JSON
        list with every field.
        """
        stack = await self.startStack(pageSite())
        [(serverId, description)] = stack.configs.servers
        table, asJson = await gatherResults(
            [
                ensureDeferred(relaynatList(reactor, stack.configs.client)),
                ensureDeferred(relaynatList(reactor, stack.configs.client, "--json")),
            ]
        )
        self.assertEqual(table.exitCode, 0, table.text())
        lines = table.stdout.decode().splitlines()
        self.assertEqual(lines[0].split()[:2], ["ID", "DESCRIPTION"])
        [row] = [line for line in lines[1:] if line.startswith(serverId + " ")]
        self.assertIn(description, row)

        self.assertEqual(asJson.exitCode, 0, asJson.text())
        [entry] = json.loads(asJson.stdout)
        self.assertEqual(
            sorted(entry), ["description", "id", "idle", "since", "since_utc"]
        )
        self.assertEqual((entry["id"], entry["description"]), (serverId, description))
        self.assertIsInstance(entry["idle"], int)
        self.assertGreaterEqual(entry["idle"], 0)
        self.assertLess(abs(entry["since"] - time.time()), 300)
        self.assertIn(entry["since_utc"], row)

    @runAsync
    async def test_stopCleanly(self) -> None:
        """
        After a tunnel has been used, SIGTERM ends the client, the skeleton
        and the relay as twistd ends at SIGTERM; no log has a traceback or an
        unhandled error, and the relay logged the tunnel's end.
        """
        stack = await self.startStack(pageSite())
        await stack.waitTunnel(timeout=30)
        relay = stack.children["relay"]
        await pollUntil(
            reactor,
            lambda: _logged(relay, r"tunnel t\d+\S* .*to web ended, closed by (client|server)"),
            timeout=10,
            what="the relay logging the tunnel's end",
        )
        await stack.stop()
        self.assertStoppedCleanly(stack)
        for role, child in stack.children.items():
            self.assertIn("Server Shut Down.", child.text(), role)

    @runAsync
    async def test_pluginsInstalled(self) -> None:
        """
        The installed package, not this checkout, gives twistd its three
        roles: C{twistd --help}, run elsewhere with no C{PYTHONPATH}, lists
        relay, skeleton and client.
        """
        elsewhere = os.path.abspath(self.mktemp())
        os.makedirs(elsewhere)
        helped = await runCommand(
            reactor,
            twistdCommand() + ["--help"],
            env=childEnvironment(sourceFirst=False),
            cwd=elsewhere,
        )
        self.assertEqual(helped.exitCode, 0, helped.text())
        commands = {}
        for line in helped.text().splitlines():
            words = line.split(None, 1)
            if line.startswith("    ") and len(words) == 2:
                commands[words[0]] = words[1]
        for role in ("relay", "skeleton", "client"):
            self.assertIn(role, commands, helped.text())
            self.assertIn("relaynat", commands[role])

    @runAsync
    async def test_badConfig(self) -> None:
        """
        A relay given a bad configuration file exits non-zero and says which
        file, which key and what is wrong with it.
        """
        with open(os.path.join(CONF, "relay.toml"), encoding="utf-8") as f:
            good = f.read()
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        cases = {
            "type.toml": (
                good.replace("join_timeout = 10", 'join_timeout = "soon"'),
                ["relay.join_timeout", "must be a number"],
            ),
            "unknown.toml": (
                good + "listen_everywhere = true\n",
                ["relay.listen_everywhere", "unknown key"],
            ),
            "endpoint.toml": (
                good.replace('clients = "tcp:7000"', 'clients = "tcp:seven"'),
                ["relay.clients", "not a valid listening endpoint"],
            ),
            "syntax.toml": (good.replace("[relay]", "[relay"), ["(syntax)"]),
            "range.toml": (
                good.replace("max_pool = 64", "max_pool = -1"),
                ["relay.max_pool", "must be between 0 and 10000"],
            ),
        }
        paths = {}
        for name, (text, _) in cases.items():
            self.assertNotEqual(text, good, f"{name} changes nothing")
            paths[name] = os.path.join(work, name)
            with open(paths[name], "w", encoding="utf-8") as f:
                f.write(text)
        paths["missing.toml"] = os.path.join(work, "missing.toml")
        # The example itself, without the key it names beside it.
        paths["nokey.toml"] = os.path.join(work, "nokey.toml")
        with open(paths["nokey.toml"], "w", encoding="utf-8") as f:
            f.write(good)
        expected = {name: words for name, (_, words) in cases.items()}
        expected["missing.toml"] = ["(file)", "No such file"]
        expected["nokey.toml"] = [os.path.join(work, "relay.key"), "No such file"]

        runs = await gatherResults(
            [
                ensureDeferred(
                    runCommand(
                        reactor,
                        twistdCommand() + ["-n", "--pidfile=", "relay", "--config", paths[name]],
                        cwd=work,
                    )
                )
                for name in expected
            ]
        )
        for name, run in zip(expected, runs, strict=True):
            self.assertNotEqual(run.exitCode, 0, f"{name}: {run.describeEnd()}")
            self.assertIsNotNone(run.exitCode, f"{name}: {run.describeEnd()}")
            for word in [paths[name], *expected[name]]:
                self.assertIn(word, run.text(), name)
            self.assertNotIn("Traceback", run.text(), name)

    @runAsync
    async def test_backpressure(self) -> None:
        """
        With a target that stops reading, a sender in this process that
        pushes as fast as flow control lets it is soon paused: what it got
        rid of stays bounded (kernel buffers and 64 KiB per transport on each
        hop), and the relay process's memory hardly grows.  When the target
        reads again, every byte arrives in order.
        """
        stalled = StalledFactory()
        stack = await self.startStack(stalled)
        relayPid = stack.children["relay"].pid
        assert relayPid is not None
        before = residentBytes(relayPid)

        size = 256 * MB
        sender = Bulk(size, seed=7)
        await stack.connectTunnel(sender)

        # Stalled: joined to the target (before that, the client holds the
        # sender back too), paused by flow control, no progress between polls.
        last = [-1]

        async def stalledSender() -> None:
            if not stalled.made:
                raise ValueError("the target has no connection yet")
            stuck = sender.paused and sender.sentBytes == last[0]
            last[0] = sender.sentBytes
            if not stuck:
                raise ValueError(f"still sending: {sender.sentBytes} bytes so far")

        await pollUntil(
            reactor, stalledSender, timeout=30, what="the sender stalling", step=0.25,
            guard=stack.checkAlive,
        )
        # Three polls with no progress, to be sure.
        for _ in range(2):
            await pollUntil(reactor, stalledSender, timeout=5, what="the sender staying stalled",
                            step=0.25)
        after = residentBytes(relayPid)
        # Not all of it.  The rest is in eight sockets' buffers on the way,
        # which the kernel grows while bytes flow fast (up to 32 MB in and
        # 4 MB out each here): usually 30-50 MB, 68 MB seen on a loaded
        # machine.
        self.assertLess(sender.sentBytes, 128 * MB, f"{sender.sentBytes} bytes sent")
        self.assertGreater(sender.toSend, 0)
        self.assertLess(
            after - before, 10 * MB, f"relay RSS {before} -> {after} bytes"
        )

        [target] = stalled.made
        target.resume()
        await pollUntil(
            reactor,
            lambda: _fired(target.finished),
            timeout=60,
            what="every byte reaching the target",
            guard=stack.checkAlive,
        )
        self.assertEqual(target.got, size)
        self.assertEqual(target.gotHash.hexdigest(), expectedDigest(size, 7))
        await pollUntil(reactor, lambda: _fired(sender.finished), timeout=10, what="the sender")
        await stack.stop()
        self.assertStoppedCleanly(stack)

    @runAsync
    async def test_demoOnce(self) -> None:
        """
        C{python -m relaynat.demo --once}, run from the checkout, prints the
        server list and the page fetched through the tunnel, stops its
        processes and exits 0.
        """
        demo = await runCommand(
            reactor, [sys.executable, "-m", "relaynat.demo", "--once"], timeout=60, cwd=REPO
        )
        output = demo.text()
        self.assertEqual(demo.exitCode, 0, output)
        self.assertIn("Hello from behind the NAT", output)
        self.assertIn("demo web server", output)
        self.assertIn("Stopped.", output)
        self.assertNotIn("Traceback", output)


async def _logged(child: ChildProcess, pattern: str) -> None:
    if not re.search(pattern, child.text()):
        raise ValueError(f"{pattern!r} not in the {child.name} log yet")


async def _fired(d: Any) -> None:
    if not d.called:
        raise ValueError("not yet")
