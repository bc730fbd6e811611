"""
A private Tor network on 127.0.0.1 that needs no Internet: directory
authorities that are also relays, more relays, and client tors (to host
onion services through their control ports, or to lend the ends their
SOCKS ports), all Debian's C{tor}, in a temporary folder of their own.

The configuration is the one Tor's own test networks use (chutney's
C{hs-v3-min}, written here from C{tor(1)}): C{TestingTorNetwork}, every
relay voted Guard, Exit and HSDir whatever its uptime, relays that publish
without testing their reachability (C{AssumeReachable}), and a consensus
every L{VOTING_INTERVAL} seconds.  An onion service needs five relays at
least (three hops, a rendezvous point and an introduction point) and a
relay makes no path through itself: hence three authorities and three
relays.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Coroutine
from typing import Any

import txtorcon
from twisted.internet.defer import FirstError, ensureDeferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.trial.unittest import SkipTest

from relaynat.localstack import (
    ChildProcess,
    LocalStackError,
    pickFreePort,
    pollUntil,
    runCommand,
    spawn,
)

#: Seconds between two consensuses.  Tor takes a divisor of a day (10, 12,
#: 15, 20, ...); the vote and its distribution must each take less than a
#: quarter of it.  An onion service's time period is 24 of them in a test
#: network (four minutes here).  Chutney takes 20, for networks that mix
#: versions of Tor; one version keeps up with 10, and bootstraps sooner.
VOTING_INTERVAL = 10
#: How long an authority waits for the others' votes, then signatures.
VOTE_DELAY = 2

#: A bootstrap phase (C{GETINFO status/bootstrap-phase}) that is done.
_BOOTSTRAPPED = re.compile(r"PROGRESS=100\b")


def torBinaries() -> tuple[str, str]:
    """
    C{tor} and C{tor-gencert} (both in Debian's C{tor} package); the test is
    skipped without them, except under CI, which must install them.
    """
    found = []
    for name in ("tor", "tor-gencert"):
        path = shutil.which(name) or next(
            (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)),
            None,
        )
        if path is None:
            if os.environ.get("CI"):
                raise AssertionError(f"CI must install {name} (apt-get install -y tor)")
            raise SkipTest(f"no {name}: apt-get install tor to run the private Tor network")
        found.append(path)
    return found[0], found[1]


async def runTool(reactor: Any, argv: list[str], what: str) -> None:
    """Run one of Tor's key tools to its end; L{LocalStackError} with its output if it fails."""
    child = await runCommand(reactor, argv, timeout=60)
    if child.exitCode != 0:
        raise LocalStackError(f"{what}: {child.describeEnd()}:\n{child.tail()}")


class TorNode:
    """
    One tor of the network: its folder (its C{DataDirectory}, C{torrc} and
    C{tor.log}), its ports, its keys' fingerprints, and its process once
    started.  A relay's ORPort and DirPort are chosen before it starts (every
    tor names the authorities' ports); a tor's control and SOCKS ports are
    chosen by the tor itself (C{auto}), so that they cannot race.
    """

    def __init__(self, name: str, role: str, folder: str) -> None:
        #: The tor's nickname, as relays show in the consensus.
        self.name = name
        #: C{authority}, C{relay} or C{client}.
        self.role = role
        self.folder = folder
        self.dataDir = os.path.join(folder, "data")
        self.torrc = os.path.join(folder, "torrc")
        self.logPath = os.path.join(folder, "tor.log")
        self.controlPortFile = os.path.join(folder, "control.port")
        relay = role in ("authority", "relay")
        self.orPort = pickFreePort() if relay else None
        self.dirPort = pickFreePort() if relay else None
        #: The RSA identity's fingerprint (hex); an authority's v3 identity's.
        self.fingerprint = ""
        self.v3ident = ""
        self.child: ChildProcess | None = None
        os.makedirs(os.path.join(self.dataDir, "keys"), mode=0o700)

    async def makeKeys(self, reactor: Any, tor: str, gencert: str) -> None:
        """
        A relay's identity (C{tor --list-fingerprint} makes it), and an
        authority's v3 identity and signing keys (C{tor-gencert}): what the
        C{DirAuthority} lines name.
        """
        keys = os.path.join(self.dataDir, "keys")
        if self.role == "authority":
            # The identity key is left unencrypted: its passphrase is read
            # from a standard input that is closed at once.
            await runTool(
                reactor,
                [
                    gencert,
                    "--create-identity-key",
                    "--passphrase-fd", "0",
                    "-i", os.path.join(keys, "authority_identity_key"),
                    "-s", os.path.join(keys, "authority_signing_key"),
                    "-c", os.path.join(keys, "authority_certificate"),
                    "-m", "12",
                    "-a", f"127.0.0.1:{self.dirPort}",
                ],
                f"tor-gencert for {self.name}",
            )
            with open(os.path.join(keys, "authority_certificate"), encoding="ascii") as f:
                self.v3ident = re.findall(r"^fingerprint ([0-9A-F]{40})$", f.read(), re.M)[0]
        await runTool(
            reactor,
            [
                tor,
                "--ignore-missing-torrc", "-f", self.torrc,
                "--DataDirectory", self.dataDir,
                "--ORPort", str(self.orPort),
                "--Log", "err stderr",
                "--list-fingerprint",
            ],
            f"the identity of {self.name}",
        )
        with open(os.path.join(self.dataDir, "fingerprint"), encoding="ascii") as f:
            self.fingerprint = f.read().split()[1]

    def controlPort(self) -> int:
        """The control port this tor bound (it picks one and writes it to a file)."""
        with open(self.controlPortFile, encoding="ascii") as f:
            line = f.read()
        match = re.match(r"PORT=127\.0\.0\.1:(\d+)\n", line)
        if match is None:
            raise ValueError(f"{self.name}'s control port not written yet: {line!r}")
        return int(match.group(1))

    def authorityLine(self) -> str:
        """How every tor of the network names this authority."""
        return (
            f"DirAuthority {self.name} orport={self.orPort} no-v2 v3ident={self.v3ident}"
            f" 127.0.0.1:{self.dirPort} {self.fingerprint}"
        )

    def torrcText(self, authorities: list[TorNode]) -> str:
        """This tor's configuration (chutney's templates' options, in their order)."""
        lines = [
            "TestingTorNetwork 1",
            # Circuits from three descriptors, in a network of few relays.
            "PathsNeededToBuildCircuits 0.67",
            "TestingDirAuthVoteGuard *",
            "TestingDirAuthVoteExit *",
            "TestingDirAuthVoteHSDir *",
            "TestingMinExitFlagThreshold 0",
            "V3AuthNIntervalsValid 2",
            f"DataDirectory {self.dataDir}",
            f"Nickname {self.name}",
            "ControlPort 127.0.0.1:auto",
            f"ControlPortWriteToFile {self.controlPortFile}",
            # No authentication: only this host's loopback reaches it, for one test.
            "CookieAuthentication 0",
            "Log notice stdout",
            "SafeLogging 0",
            "LogTimeGranularity 1",
            "ShutdownWaitLength 0",
            # Tor ends itself if the process that started it goes without stopping it.
            f"__OwningControllerProcess {os.getpid()}",
            *(a.authorityLine() for a in authorities),
        ]
        if self.role == "client":
            lines.append("SocksPort 127.0.0.1:auto")
        else:
            lines += [
                "SocksPort 0",
                "Address 127.0.0.1",
                f"ORPort 127.0.0.1:{self.orPort}",
                f"DirPort 127.0.0.1:{self.dirPort}",
                # Onion services need no exit; no relay resolves a name.
                "ExitRelay 0",
                "ServerDNSDetectHijacking 0",
                "ServerDNSTestAddresses",
                # Publish at once, rather than after testing the ORPort from outside.
                "AssumeReachable 1",
                f"ContactInfo {self.name}@relaynat.test",
            ]
        if self.role == "authority":
            lines += [
                "AuthoritativeDirectory 1",
                "V3AuthoritativeDirectory 1",
                f"TestingV3AuthInitialVotingInterval {VOTING_INTERVAL}",
                f"TestingV3AuthInitialVoteDelay {VOTE_DELAY}",
                f"TestingV3AuthInitialDistDelay {VOTE_DELAY}",
                f"V3AuthVotingInterval {VOTING_INTERVAL}",
                f"V3AuthVoteDelay {VOTE_DELAY}",
                f"V3AuthDistDelay {VOTE_DELAY}",
            ]
        return "\n".join(lines) + "\n"

    def describe(self) -> str:
        """The node's state and the last lines of its log."""
        state = "not started" if self.child is None else self.child.describeEnd()
        tail = "" if self.child is None else self.child.tail(12)
        return f"--- tor {self.name} ({self.role}, {state}):\n{tail}"


class DescriptorUploads:
    """
    What one tor says of the onion-service descriptors it uploads to the
    HSDirs (its C{HS_DESC} events, on a control connection of its own): for
    each onion address, how many uploads began, succeeded and failed.
    """

    def __init__(self, reactor: Any, tor: Any) -> None:
        self.reactor = reactor
        self.tor = tor
        self.begun: dict[str, int] = {}
        self.succeeded: dict[str, int] = {}
        self.failed: dict[str, int] = {}

    def event(self, text: str) -> None:
        """One C{HS_DESC} event: C{ACTION ADDRESS AUTH HSDIR ...}."""
        action, address = (text.split() + ["", ""])[:2]
        counts = {"UPLOAD": self.begun, "UPLOADED": self.succeeded, "FAILED": self.failed}
        if action in counts:
            counts[action][address] = counts[action].get(address, 0) + 1

    def published(self, onion: str) -> bool:
        """
        Has every upload of C{onion}'s descriptors begun so far ended, one
        at least with success?  An end that connects before then may find
        no HSDir with the descriptor, and be told the host is unreachable:
        it tries again, later and later (its backoff).
        """
        address = onion.removesuffix(".onion")
        succeeded = self.succeeded.get(address, 0)
        ended = succeeded + self.failed.get(address, 0)
        return succeeded > 0 and ended >= self.begun.get(address, 0)

    def describe(self, onion: str) -> str:
        """The counts for C{onion}, to say why it is not published yet."""
        address = onion.removesuffix(".onion")
        return (
            f"{self.begun.get(address, 0)} uploads begun, {self.succeeded.get(address, 0)}"
            f" succeeded, {self.failed.get(address, 0)} failed"
        )

    async def close(self) -> None:
        """End the control connection (within five seconds, even if the tor has gone)."""
        if self.tor is not None:
            tor, self.tor = self.tor, None
            d = ensureDeferred(tor.quit())
            d.addTimeout(5, self.reactor)
            try:
                await d
            except Exception:  # gone already: nothing to end
                pass


class TorNetwork:
    """
    A private Tor network of C{authorities} authorities, C{relays} relays
    and the client tors named in C{clients} (Tor nicknames: up to 19
    letters and digits), in a new folder under
    C{parent} (the system's temporary folder by default) that L{stop}
    removes with the tors' keys and logs.
    """

    def __init__(
        self,
        reactor: Any,
        parent: str | None = None,
        authorities: int = 3,
        relays: int = 3,
        clients: tuple[str, ...] = ("service", "client"),
    ) -> None:
        self.reactor = reactor
        self.tor, self.gencert = torBinaries()
        self.folder = tempfile.mkdtemp(prefix="tornet-", dir=parent)
        self.nodes = [
            TorNode(name, role, os.path.join(self.folder, name))
            for role, names in (
                ("authority", [f"auth{i}" for i in range(authorities)]),
                ("relay", [f"relay{i}" for i in range(relays)]),
                ("client", list(clients)),
            )
            for name in names
        ]
        self.watchers: list[DescriptorUploads] = []
        self.stopping = False

    def node(self, name: str) -> TorNode:
        [found] = [n for n in self.nodes if n.name == name]
        return found

    async def _each(
        self, nodes: list[TorNode], run: Callable[[TorNode], Coroutine[Any, Any, None]]
    ) -> None:
        """C{run(node)} for every node at once; the first failure, raised as itself."""
        try:
            await gatherResults([ensureDeferred(run(n)) for n in nodes], consumeErrors=True)
        except FirstError as e:
            e.subFailure.raiseException()

    async def start(self, timeout: float = 120.0) -> float:
        """
        Make the keys, write the configurations, start every tor, and wait
        until each client tor has bootstrapped to 100% (asked over its
        control port); the seconds that took from the start of the tors.
        """
        relays = [n for n in self.nodes if n.role != "client"]
        await self._each(relays, lambda n: n.makeKeys(self.reactor, self.tor, self.gencert))
        authorities = [n for n in self.nodes if n.role == "authority"]
        for node in self.nodes:
            with open(node.torrc, "w", encoding="ascii") as f:
                f.write(node.torrcText(authorities))
        if self.stopping:
            raise LocalStackError("not starting tor: the network is stopping")
        started = self.reactor.seconds()
        for node in self.nodes:
            node.child = spawn(
                self.reactor, node.name, [self.tor, "-f", node.torrc],
                cwd=node.folder, logPath=node.logPath,
            )
        deadline = started + timeout
        for node in self.nodes:
            if node.role == "client":
                await self.waitBootstrapped(node.name, deadline - self.reactor.seconds())
        return self.reactor.seconds() - started

    def checkAlive(self) -> None:
        """Raise L{LocalStackError} with its log if a tor has ended."""
        for node in self.nodes:
            if node.child is not None and not node.child.running:
                raise LocalStackError(f"tor {node.name} {node.child.describeEnd()}:\n{node.child.tail()}")

    def describe(self) -> str:
        """The last lines of every tor's log, to say what failed."""
        return "\n".join(node.describe() for node in self.nodes)

    async def controlPort(self, name: str, timeout: float = 30.0) -> int:
        """The control port of tor C{name}, once it has bound it."""
        node = self.node(name)

        async def written() -> int:
            return node.controlPort()

        return await pollUntil(
            self.reactor, written, timeout, f"tor {name}'s control port", guard=self.checkAlive
        )

    async def controller(self, name: str) -> Any:
        """A txtorcon connection to tor C{name}'s control port (C{quit} it when done)."""
        port = await self.controlPort(name)
        return await txtorcon.connect(
            self.reactor, TCP4ClientEndpoint(self.reactor, "127.0.0.1", port)
        )

    async def socksPort(self, name: str) -> int:
        """The SOCKS port client tor C{name} bound (C{SocksPort auto})."""
        tor = await self.controller(name)
        try:
            listeners = (await tor.protocol.get_info("net/listeners/socks"))["net/listeners/socks"]
        finally:
            await tor.quit()
        match = re.search(r"127\.0\.0\.1:(\d+)", listeners)
        if match is None:
            raise LocalStackError(f"tor {name} has no SOCKS port: {listeners!r}")
        return int(match.group(1))

    async def waitBootstrapped(self, name: str, timeout: float) -> None:
        """Wait until tor C{name} says it has bootstrapped to 100%."""
        tor = await self.controller(name)
        try:

            async def bootstrapped() -> None:
                key = "status/bootstrap-phase"
                phase = (await tor.protocol.get_info(key))[key]
                if not _BOOTSTRAPPED.search(phase):
                    raise ValueError(phase)

            try:
                await pollUntil(
                    self.reactor, bootstrapped, timeout,
                    f"tor {name} bootstrapping in the private network",
                    step=0.5, guard=self.checkAlive,
                )
            except LocalStackError as e:
                raise LocalStackError(f"{e}\n{self.describe()}") from None
        finally:
            await tor.quit()

    async def watchUploads(self, name: str) -> DescriptorUploads:
        """
        The onion-service descriptors that tor C{name} uploads from now on
        (its C{HS_DESC} events), until the network stops.
        """
        uploads = DescriptorUploads(self.reactor, await self.controller(name))
        self.watchers.append(uploads)
        await uploads.tor.protocol.add_event_listener("HS_DESC", uploads.event)
        return uploads

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop every tor (SIGTERM, then SIGKILL) and remove the network's folder."""
        self.stopping = True
        for watcher in self.watchers:
            await watcher.close()

        async def stopNode(node: TorNode) -> None:
            if node.child is not None:
                await node.child.stop(self.reactor, timeout)

        await self._each(self.nodes, stopNode)
        shutil.rmtree(self.folder, ignore_errors=True)
