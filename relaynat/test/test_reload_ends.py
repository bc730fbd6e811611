"""
A skeleton and a client reload their configuration: servers and tunnels
added and removed, the unchanged ones and their open tunnels untouched, a
bad file logged in one line with the running configuration kept.  The
roles are built by their twistd plugins from real files, against the real
relay on loopback sockets; one test runs them as twistd processes and
sends SIGHUP.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any, cast

import attrs
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory
from twisted.logger import formatEvent
from twisted.trial.unittest import TestCase

from relaynat.client import TunnelFactory, listServers
from relaynat.localstack import LocalStack, relaynatTool
from relaynat.localstack import pollUntil as pollProcess
from relaynat.identity import PinnedRelay, writePrivate
from relaynat.link import ControlService, Credentials, RelayLink
from relaynat.relay import Relay
from relaynat.secret import generateSecret
from relaynat.skeleton import Skeleton
from relaynat.tap import client as clientTap
from relaynat.tap import skeleton as skeletonTap
from relaynat.tap.hangup import ReloadOnHangup
from relaynat.test.logs import logEvents
from relaynat.test.loopback import ANYTHING, PASSWORD, relayIdentity, writeUsers
from relaynat.test.net import endpointOf, listen, openConnections, pollUntil, reactor, runAsync
from relaynat.test.streams import Collect, Echo
from relaynat.users import Rights


def _q(text: str) -> str:
    # A TOML basic string: JSON's escapes are TOML's for these.
    return json.dumps(text)


class Ends:
    """
    A relay on 127.0.0.1, and a skeleton and a client each made by its
    plugin's C{makeService} from a file in C{directory} that a test rewrites.
    Every server is an echo server of its own.
    """

    def __init__(self, case: TestCase) -> None:
        self.case = case
        self.directory = os.path.abspath(case.mktemp())
        os.makedirs(self.directory)
        # Run last: once every role has stopped, each side closes at the other's end.
        case.addCleanup(pollUntil, lambda: not openConnections())

    async def startRelay(self, rights: Rights = ANYTHING) -> None:
        self.identity = relayIdentity(self.directory)
        self.users = writeUsers(os.path.join(self.directory, "users"), {"alice": rights})
        self.relay = Relay(reactor, self.identity, self.users)
        self.clientPort = await listen(self.relay.clientFactory())
        self.skeletonPort = await listen(self.relay.skeletonFactory())
        for port in (self.clientPort, self.skeletonPort):
            self.case.addCleanup(port.stopListening)
        self.password = os.path.join(self.directory, "password")
        writePrivate(self.password, PASSWORD.encode() + b"\n")
        self.targets: dict[str, int] = {}

    async def target(self, serverId: str) -> int:
        """The port of C{serverId}'s echo server, listening from now to the test's end."""
        if serverId not in self.targets:
            port = await listen(Factory.forProtocol(Echo))
            self.case.addCleanup(port.stopListening)
            self.targets[serverId] = port.getHost().port  # type: ignore[attr-defined]
            generateSecret(self.secretOf(serverId))
        return self.targets[serverId]

    def secretOf(self, serverId: str) -> str:
        return os.path.join(self.directory, f"{serverId}.secret")

    def access(self, port: Any) -> str:
        return (
            f"relay = {_q(f'tcp:127.0.0.1:{port.getHost().port}')}\n"
            f"relay_key = {_q(self.identity.fingerprint)}\n"
            'user = "alice"\n'
            f"password_file = {_q(self.password)}\n"
        )

    async def writeSkeleton(self, servers: dict[str, str], pool: int = 1) -> str:
        """The skeleton's file, fronting C{servers} (id to description)."""
        text = "[skeleton]\n" + self.access(self.skeletonPort) + f'name = "test"\npool = {pool}\n'
        for serverId, description in servers.items():
            target = await self.target(serverId)
            text += (
                f"[[server]]\nid = {_q(serverId)}\ndescription = {_q(description)}\n"
                f'target = "tcp:127.0.0.1:{target}"\nsecret_file = {_q(self.secretOf(serverId))}\n'
            )
        return self.write("skeleton.toml", text)

    async def writeClient(self, tunnels: dict[str, int]) -> str:
        """The client's file, with C{tunnels} (server id to local port)."""
        text = "[client]\n" + self.access(self.clientPort)
        for serverId, port in tunnels.items():
            await self.target(serverId)
            text += (
                f"[[tunnel]]\nserver = {_q(serverId)}\n"
                f'listen = "tcp:{port}:interface=127.0.0.1"\n'
                f"secret_file = {_q(self.secretOf(serverId))}\n"
            )
        return self.write("client.toml", text)

    def write(self, name: str, text: str) -> str:
        path = os.path.join(self.directory, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def run(self, tap: Any, path: str) -> MultiService:
        """The role C{tap} makes from C{path}, started until the test ends."""
        options = tap.Options()
        options.parseOptions(["--config", path])
        service = tap.makeService(options, reactor)
        service.startService()
        self.case.addCleanup(self._stopped, service)
        return cast(MultiService, service)

    async def _stopped(self, service: MultiService) -> None:
        await cast(Deferred[None], service.stopService())

    async def echoed(self, port: int, message: bytes) -> Collect:
        """A connection to C{port} that sent C{message} and got it back, closed at the end."""
        collector = Collect(message)
        self.case.addCleanup(self._closed, collector)
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), collector)
        await pollUntil(lambda: b"".join(collector.received) == message)
        return collector

    async def _closed(self, collector: Collect) -> None:
        if collector.transport is not None and collector.reason is None:
            collector.transport.loseConnection()
        await collector.finished

    def listed(self) -> dict[str, str]:
        """The servers the relay lists now, id to description."""
        return {str(s["id"]): str(s["description"]) for s in self.relay.registry.listing()}

    async def listedByClient(self) -> dict[str, dict[str, Any]]:
        """What L{ListServers} tells alice's client now (as C{relaynat list}), by id."""
        link = RelayLink(
            endpointOf(self.clientPort),
            PinnedRelay(self.identity.fingerprint),
            Credentials("alice", PASSWORD),
            reactor,
        )
        return {s["id"]: s for s in await listServers(link)}


def reloadOf(service: MultiService) -> Any:
    """What SIGHUP calls in C{service}."""
    [hangup] = [s for s in service if isinstance(s, ReloadOnHangup)]
    return hangup.reload


def partOf(service: MultiService, kind: type) -> Any:
    [found] = [s for s in service if isinstance(s, kind)]
    return found


def skeletonOf(service: MultiService) -> Skeleton:
    return cast(Skeleton, reloadOf(service).skeleton)


async def readyControl(service: MultiService) -> Any:
    """
    The skeleton's control connection once ready: the relay lists its
    servers as it takes them, a moment before the skeleton reads its answer.
    """
    ready = partOf(service, ControlService).ready
    await pollUntil(lambda: ready.current is not None)
    return ready.current


async def freePort() -> int:
    """A port of 127.0.0.1 nobody listens on now."""
    port = await listen(Factory())
    number: int = port.getHost().port  # type: ignore[attr-defined]
    await cast(Deferred[None], port.stopListening())
    return number


def tunnelOf(client: MultiService, serverId: str) -> Any:
    """The client's running tunnel to C{serverId}."""
    [running] = [r for r in reloadOf(client).running.values() if r.config.server == serverId]
    return running


async def echoedAgain(collector: Collect, more: bytes) -> None:
    """C{collector}'s connection carries C{more} there and back, after what it carried."""
    before = b"".join(collector.received)
    assert collector.transport is not None
    collector.transport.write(more)
    await pollUntil(lambda: b"".join(collector.received) == before + more)


def said(events: list[dict[str, Any]], words: str) -> list[str]:
    return [formatEvent(e) for e in events if words in formatEvent(e)]


class SkeletonReloadTests(TestCase):
    """A skeleton's reload: its servers registered anew on the same connection, its tunnels kept."""

    timeout = 60

    async def startBoth(self, ends: Ends, servers: dict[str, str]) -> tuple[MultiService, dict[str, int]]:
        skeleton = ends.run(skeletonTap, await ends.writeSkeleton(servers))
        ports = {serverId: await freePort() for serverId in ("a", "b", "c")}
        ends.run(clientTap, await ends.writeClient(ports))
        await pollUntil(lambda: set(ends.listed()) == set(servers))
        await readyControl(skeleton)
        return skeleton, ports

    @runAsync
    async def test_addedRemovedUnchanged(self) -> None:
        """
        A reload that drops c and adds b goes to the relay on the same
        control connection: the relay lists a and b, a tunnel to b works, c
        is refused, and a was never offline (its C{since} in the client's
        listing is unchanged) while a tunnel to it opened before the reload
        carries bytes after it, as do the client's ready connections to a.
        """
        ends = Ends(self)
        await ends.startRelay()
        skeleton, ports = await self.startBoth(ends, {"a": "A", "c": "C"})
        before = await ends.echoed(ports["a"], b"before")
        await ends.echoed(ports["c"], b"c works")
        old = partOf(skeleton, ControlService).ready.current
        since = (await ends.listedByClient())["a"]["since"]

        await ends.writeSkeleton({"a": "A", "b": "B"})
        reloadOf(skeleton)()
        await pollUntil(lambda: ends.listed() == {"a": "A", "b": "B"})

        self.assertIs(partOf(skeleton, ControlService).ready.current, old)
        listed = await ends.listedByClient()
        self.assertEqual(sorted(listed), ["a", "b"])
        self.assertEqual(listed["a"]["since"], since)
        await echoedAgain(before, b" and after")
        self.assertEqual(sorted(skeletonOf(skeleton).servers), ["a", "b"])
        # A fresh connection to a: perhaps through one made ready before.
        await ends.echoed(ports["a"], b"a again")
        await ends.echoed(ports["b"], b"b works")
        refused = Collect(b"c?")
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", ports["c"]), refused)
        await refused.finished
        self.assertEqual(refused.received, [])
        self.assertIsNone(before.reason)
        self.assertEqual((await ends.listedByClient())["a"]["since"], since)

    @runAsync
    async def test_unchangedUntouched(self) -> None:
        """
        A reload of the same file (or one that changes only a comment)
        keeps the control connection and every pooled connection.
        """
        ends = Ends(self)
        await ends.startRelay()
        path = await ends.writeSkeleton({"a": "A"}, pool=2)
        skeleton = ends.run(skeletonTap, path)
        await pollUntil(lambda: ends.relay.registry.counts()["idle"] == 2)
        control = await readyControl(skeleton)
        pooled = set(skeletonOf(skeleton).dataConnections)
        with open(path, "a", encoding="utf-8") as f:
            f.write("# a comment changes nothing\n")
        events = logEvents(self)
        reloadOf(skeleton)()
        self.assertIs(partOf(skeleton, ControlService).ready.current, control)
        self.assertEqual(skeletonOf(skeleton).dataConnections, pooled)
        self.assertTrue(all(end.lost is None for end in pooled))
        self.assertEqual(said(events, "configuration reloaded"), [])

    @runAsync
    async def test_changedTargetRefilled(self) -> None:
        """
        A server whose target changes keeps its registration (same id and
        description, same control connection), but its connections that
        carry nothing yet are replaced, so that the next tunnel, even
        through a connection the client held ready, goes to the new target
        (here one that refuses), while a tunnel open before goes on.
        """
        ends = Ends(self)
        await ends.startRelay()
        skeleton, ports = await self.startBoth(ends, {"a": "A"})
        before = await ends.echoed(ports["a"], b"old target")
        control = partOf(skeleton, ControlService).ready.current
        ends.targets["a"] = await freePort()
        await ends.writeSkeleton({"a": "A"})
        reloadOf(skeleton)()
        self.assertIs(partOf(skeleton, ControlService).ready.current, control)
        refused = Collect(b"new target?")
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", ports["a"]), refused)
        await refused.finished
        self.assertEqual(refused.received, [])
        await echoedAgain(before, b" goes on")

    @runAsync
    async def test_badFileKeepsRunning(self) -> None:
        """
        A file that does not parse, or names a secret that is missing, is
        one error line naming the problem; the servers stay registered on
        the same connection.
        """
        ends = Ends(self)
        await ends.startRelay()
        path = await ends.writeSkeleton({"a": "A"})
        skeleton = ends.run(skeletonTap, path)
        await pollUntil(lambda: ends.listed() == {"a": "A"})
        control = await readyControl(skeleton)
        for text, words in (
            ("[skeleton\n", "(syntax)"),
            (open(path).read().replace("a.secret", "missing.secret"), "missing.secret"),
        ):
            events = logEvents(self)
            ends.write("skeleton.toml", text)
            reloadOf(skeleton)()
            [line] = said(events, "not reloaded")
            self.assertIn(words, line)
            self.assertEqual(said(events, "configuration reloaded"), [])
            self.assertIs(partOf(skeleton, ControlService).ready.current, control)
            self.assertEqual(ends.listed(), {"a": "A"})

    @runAsync
    async def test_refusedAdditionLeftOut(self) -> None:
        """
        A reload adding a server its user may not register: the relay
        refuses the new set whole, so the skeleton sends it again without
        that one, on the same connection, and says so in one line; a, kept
        with a new description, is never offline.
        """
        ends = Ends(self)
        await ends.startRelay(Rights(register=frozenset({"a", "b"}), join=None))
        path = await ends.writeSkeleton({"a": "A"})
        skeleton = ends.run(skeletonTap, path)
        await pollUntil(lambda: ends.listed() == {"a": "A"})
        control = await readyControl(skeleton)
        since = (await ends.listedByClient())["a"]["since"]
        events = logEvents(self)
        await ends.writeSkeleton({"a": "A2", "b": "B", "forbidden": "F"})
        reloadOf(skeleton)()
        await pollUntil(lambda: ends.listed() == {"a": "A2", "b": "B"})
        [line] = said(events, "not registered")
        self.assertIn("forbidden", line)
        self.assertEqual(sorted(skeletonOf(skeleton).servers), ["a", "b"])
        self.assertIs(partOf(skeleton, ControlService).ready.current, control)
        self.assertEqual((await ends.listedByClient())["a"]["since"], since)

    @runAsync
    async def test_refusedReloadKeepsRunning(self) -> None:
        """
        A reload the relay refuses whole for a reason no added server
        explains (here a name it does not take and a description it does
        not print, which the loader may catch first: they are handed to the
        skeleton as a loaded file would be) changes nothing: the same
        control connection, a and c listed as they were (never offline), a
        tunnel open before carrying bytes after, new tunnels to both, one
        error line saying what to fix; and the next reload of the file
        registers what it says.
        """
        ends = Ends(self)
        await ends.startRelay()
        skeleton, ports = await self.startBoth(ends, {"a": "A", "c": "C"})
        before = await ends.echoed(ports["a"], b"before")
        control = partOf(skeleton, ControlService).ready.current
        listed = await ends.listedByClient()
        running = skeletonOf(skeleton)
        fronted = dict(running.servers)
        events = logEvents(self)

        bad = {**fronted, "a": attrs.evolve(fronted["a"], description="A\x1b[2J")}
        running.reconfigure(bad, "test\nsecond line", 1)
        await pollUntil(lambda: said(events, "the relay refused the reloaded"))

        [line] = said(events, "the relay refused the reloaded")
        self.assertIn("nothing changed there", line)
        self.assertIn("bad skeleton name", line)
        self.assertIn("fix the file and reload again", line)
        self.assertIs(partOf(skeleton, ControlService).ready.current, control)
        self.assertEqual(running.servers, fronted)
        self.assertTrue(all(running.servers[i] is fronted[i] for i in fronted))
        self.assertEqual((running.name, running.pool), ("test", 1))
        self.assertEqual(await ends.listedByClient(), listed)
        await echoedAgain(before, b" and after")
        await ends.echoed(ports["a"], b"a again")
        await ends.echoed(ports["c"], b"c again")
        self.assertEqual(len(said(events, "refused the reloaded configuration")), 1)

        await ends.writeSkeleton({"a": "A2", "c": "C"})
        reloadOf(skeleton)()
        await pollUntil(lambda: ends.listed() == {"a": "A2", "c": "C"})
        self.assertIs(partOf(skeleton, ControlService).ready.current, control)
        self.assertEqual((await ends.listedByClient())["a"]["since"], listed["a"]["since"])


class ClientReloadTests(TestCase):
    """A client's reload: listeners started and stopped, the others untouched."""

    timeout = 60

    @runAsync
    async def test_listenersAddedRemoved(self) -> None:
        """
        A reload that drops b's listener and adds c's: b's port refuses
        connections while a tunnel opened through it before goes on, c's
        carries a tunnel, and a's listener and ready connections are the
        same objects as before.
        """
        ends = Ends(self)
        await ends.startRelay()
        ends.run(skeletonTap, await ends.writeSkeleton({"a": "A", "b": "B", "c": "C"}))
        await pollUntil(lambda: len(ends.listed()) == 3)
        ports = {serverId: await freePort() for serverId in ("a", "b", "c")}
        client = ends.run(clientTap, await ends.writeClient({"a": ports["a"], "b": ports["b"]}))
        reload = reloadOf(client)
        factoryA: TunnelFactory = tunnelOf(client, "a").factory
        await pollUntil(lambda: factoryA.readyNow() == factoryA.readyCount)
        ready = factoryA.readyEnds()
        throughB = await ends.echoed(ports["b"], b"b before")

        await ends.writeClient({"a": ports["a"], "c": ports["c"]})
        await reload()

        await self.assertFailure(
            TCP4ClientEndpoint(reactor, "127.0.0.1", ports["b"]).connect(Factory()),
            ConnectionRefusedError,
        )
        await echoedAgain(throughB, b" and after")
        await ends.echoed(ports["c"], b"c works")
        self.assertIs(tunnelOf(client, "a").factory, factoryA)
        self.assertEqual(factoryA.readyEnds(), ready)
        self.assertEqual(reload.link.wanted, {"a", "c"})

    @runAsync
    async def test_badFileKeepsRunning(self) -> None:
        """A client file that does not parse is one error line; every listener stays."""
        ends = Ends(self)
        await ends.startRelay()
        ends.run(skeletonTap, await ends.writeSkeleton({"a": "A"}))
        await pollUntil(lambda: ends.listed() == {"a": "A"})
        port = await freePort()
        client = ends.run(clientTap, await ends.writeClient({"a": port}))
        await ends.echoed(port, b"before")
        events = logEvents(self)
        ends.write("client.toml", "[[tunnel]]\nserver = 3\n")
        await reloadOf(client)()
        [line] = said(events, "not reloaded")
        self.assertIn("client.toml", line)
        await ends.echoed(port, b"after")

    @runAsync
    async def test_portTaken(self) -> None:
        """
        A tunnel added on a port someone else holds is one error line; the
        running tunnels go on.
        """
        ends = Ends(self)
        await ends.startRelay()
        ends.run(skeletonTap, await ends.writeSkeleton({"a": "A", "b": "B"}))
        await pollUntil(lambda: len(ends.listed()) == 2)
        port = await freePort()
        client = ends.run(clientTap, await ends.writeClient({"a": port}))
        taken = await listen(Factory())
        self.addCleanup(taken.stopListening)
        events = logEvents(self)
        await ends.writeClient({"a": port, "b": taken.getHost().port})  # type: ignore[attr-defined]
        await reloadOf(client)()
        await pollUntil(lambda: said(events, "cannot listen"))
        [line] = said(events, "cannot listen")
        self.assertIn("tunnel to b", line)
        await ends.echoed(port, b"a still")


class HangupTests(TestCase):
    """SIGHUP reaches the reload, in this process and in twistd's."""

    timeout = 120

    @runAsync
    async def test_hangupInProcess(self) -> None:
        """SIGHUP to this process reloads a skeleton and a client sharing it."""
        ends = Ends(self)
        await ends.startRelay()
        skeleton = ends.run(skeletonTap, await ends.writeSkeleton({"a": "A"}))
        port = await freePort()
        client = ends.run(clientTap, await ends.writeClient({"a": port}))
        await pollUntil(lambda: ends.listed() == {"a": "A"})
        await ends.writeSkeleton({"a": "renamed"})
        newPort = await freePort()
        await ends.writeClient({"a": newPort})
        os.kill(os.getpid(), signal.SIGHUP)
        await pollUntil(lambda: ends.listed() == {"a": "renamed"})
        await pollUntil(lambda: f"tcp:{newPort}:" in tunnelOf(client, "a").config.listen)
        await ends.echoed(newPort, b"moved")
        self.assertTrue(skeleton.running)

    @runAsync
    async def test_hangupTwistd(self) -> None:
        """
        The skeleton as a twistd process: after its file gets a new
        description for web and a server its user may not register, SIGHUP
        makes the relay list web anew, registered since it first was (never
        offline), the other left out and said once, and a tunnel open across
        it keeps carrying bytes.
        """
        echo = await listen(Factory.forProtocol(Echo))
        self.addCleanup(echo.stopListening)
        stack = LocalStack(reactor, os.path.abspath(self.mktemp()), echo.getHost().port)  # type: ignore[attr-defined]
        self.addCleanup(stack.stop)
        stack.start()
        [registered] = await stack.waitRegistered(timeout=30)
        collector = Collect(b"before")
        await stack.connectTunnel(collector)
        await pollUntil(lambda: b"".join(collector.received) == b"before", timeout=30)

        path = stack.configs.skeleton
        with open(path, encoding="utf-8") as f:
            text = f.read()
        [(serverId, description)] = stack.configs.servers
        relaynatTool("secret", os.path.join(os.path.dirname(path), "other.secret"))
        text = text.replace(_q(description), '"described anew"') + (
            '\n[[server]]\nid = "other"\ntarget = "tcp:127.0.0.1:1"\nsecret_file = "other.secret"\n'
        )
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        skeleton = stack.children["skeleton"]
        assert skeleton.pid is not None
        os.kill(skeleton.pid, signal.SIGHUP)

        async def renamed() -> dict[str, Any]:
            [listed] = await stack.listing()
            if listed["description"] != "described anew":
                raise ValueError(f"listed: {listed}")
            return listed

        listed = await pollProcess(
            reactor, renamed, timeout=30, what="the new description", guard=stack.checkAlive
        )
        # Registered again on the same connection: never offline.
        self.assertEqual((listed["id"], listed["since"]), (serverId, registered["since"]))
        await echoedAgain(collector, b" and after")
        self.assertEqual(skeleton.text().count("not registered"), 1, skeleton.text())
        collector.transport.loseConnection()  # type: ignore[union-attr]
        await collector.finished
        await stack.stop()
        self.assertEqual(stack.problems(), [])

