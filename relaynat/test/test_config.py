"""
Tests for L{relaynat.config} and the twistd options of the three roles:
documents parsed from strings, every kind of mistake reported with its
source, key and problem, flags laid over files, and property tests for the
small parsers.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

import relaynat
from relaynat.config import (
    DEFAULT_BACKLOG,
    ClientConfig,
    ConfigError,
    RelayConfig,
    ServerConfig,
    SkeletonConfig,
    TunnelConfig,
    clientConfig,
    parseToml,
    readToml,
    relayConfig,
    skeletonConfig,
    splitAssignment,
    withDefaultBacklog,
    withFlags,
)
from relaynat.tap import client as clientTap
from relaynat.tap import relay as relayTap
from relaynat.tap import skeleton as skeletonTap
from relaynat.wire import SERVER_ID, BadRequest, checkServerId

RELAY = """
[relay]
clients = "tcp:7000"
skeletons = "tcp:7001"
"""

SKELETON = """
[skeleton]
relay = "tcp:relay.example:7001"
name = "edge"

[[server]]
id = "web"
target = "tcp:127.0.0.1:8000"
"""

CLIENT = """
[client]
relay = "tcp:relay.example:7000"

[[tunnel]]
server = "web"
listen = "tcp:8080:interface=127.0.0.1"
"""


class ConfigErrorMixin:
    """Checks that a configuration mistake is reported precisely."""

    def assertConfigError(
        self, build: Any, text: str, source: str, key: str, problem: str
    ) -> ConfigError:
        """
        C{build(parseToml(text, source), source)} raises a L{ConfigError}
        with this C{source}, C{key} and C{problem}, and its message shows all
        three.
        """
        error: ConfigError = self.assertRaises(  # type: ignore[attr-defined]
            ConfigError, build, parseToml(text, source), source
        )
        self.assertEqual(  # type: ignore[attr-defined]
            (error.source, error.key, error.problem), (source, key, problem)
        )
        self.assertEqual(str(error), f"{source}: {key}: {problem}")  # type: ignore[attr-defined]
        return error


class TomlTests(SynchronousTestCase):
    """L{parseToml} and L{readToml}."""

    def test_parseGood(self) -> None:
        """A TOML string becomes its document."""
        self.assertEqual(
            parseToml(RELAY),
            {"relay": {"clients": "tcp:7000", "skeletons": "tcp:7001"}},
        )

    def test_parseBadSyntax(self) -> None:
        """
        A syntax error names the source and C{(syntax)}, and keeps TOML's
        own description, which gives the line.
        """
        error = self.assertRaises(ConfigError, parseToml, "[relay\n", "relay.toml")
        self.assertEqual((error.source, error.key), ("relay.toml", "(syntax)"))
        self.assertTrue(str(error).startswith("relay.toml: (syntax): "))
        self.assertIn("line 1", error.problem)

    def test_parseDefaultSource(self) -> None:
        """Without a source, a string is called C{<string>}."""
        error = self.assertRaises(ConfigError, parseToml, "x = ")
        self.assertEqual(error.source, "<string>")

    def test_readFile(self) -> None:
        """L{readToml} reads a file into its document."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(RELAY)
        self.assertEqual(readToml(path)["relay"]["clients"], "tcp:7000")

    def test_readMissingFile(self) -> None:
        """A file that does not exist is reported with its path."""
        path = self.mktemp()
        error = self.assertRaises(ConfigError, readToml, path)
        self.assertEqual(str(error), f"{path}: (file): No such file or directory")

    def test_readDirectory(self) -> None:
        """A directory given as the file is reported with its path."""
        path = self.mktemp()
        os.mkdir(path)
        error = self.assertRaises(ConfigError, readToml, path)
        self.assertEqual(str(error), f"{path}: (file): Is a directory")

    def test_readBadSyntax(self) -> None:
        """A file with a syntax error names the file and C{(syntax)}."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[relay]\nclients = "tcp:7000\n')
        error = self.assertRaises(ConfigError, readToml, path)
        self.assertEqual((error.source, error.key), (path, "(syntax)"))
        self.assertIn("line 2", str(error))

    def test_shippedExamplesParse(self) -> None:
        """The example configurations in C{conf/} are valid."""
        conf = os.path.join(os.path.dirname(relaynat.__file__), os.pardir, "conf")
        if not os.path.isdir(conf):
            raise self.skipTest("no conf/ directory next to the package")
        for name, build in [
            ("relay.toml", relayConfig),
            ("skeleton.toml", skeletonConfig),
            ("client.toml", clientConfig),
        ]:
            path = os.path.join(conf, name)
            build(readToml(path), path)


class RelayConfigTests(ConfigErrorMixin, SynchronousTestCase):
    """L{relayConfig}."""

    def test_good(self) -> None:
        """
        A complete [relay] becomes a L{RelayConfig}, with the default backlog
        added to the TCP listening endpoints.
        """
        text = RELAY + "join_timeout = 2.5\nmax_pool = 10\n"
        self.assertEqual(
            relayConfig(parseToml(text), "relay.toml"),
            RelayConfig("tcp:7000:backlog=1024", "tcp:7001:backlog=1024", 2.5, 10),
        )

    def test_defaults(self) -> None:
        """Without them, join_timeout is 10 s and max_pool 64."""
        config = relayConfig(parseToml(RELAY), "relay.toml")
        self.assertEqual((config.join_timeout, config.max_pool), (10.0, 64))

    def test_integerTimeout(self) -> None:
        """An integer join_timeout is accepted, and becomes a float."""
        config = relayConfig(parseToml(RELAY + "join_timeout = 3\n"), "relay.toml")
        self.assertEqual(config.join_timeout, 3.0)
        self.assertIsInstance(config.join_timeout, float)

    def test_unixEndpointUntouched(self) -> None:
        """A UNIX socket endpoint gets no backlog added."""
        text = '[relay]\nclients = "unix:/tmp/x.sock"\nskeletons = "tcp:7001"\n'
        self.assertEqual(relayConfig(parseToml(text), "r").clients, "unix:/tmp/x.sock")

    def test_unknownSection(self) -> None:
        """A table other than [relay] is refused, naming what is expected."""
        self.assertConfigError(
            relayConfig, RELAY + "[skeleton]\n", "relay.toml", "skeleton",
            "unknown section; expected [relay]",
        )

    def test_unknownKey(self) -> None:
        """A key that [relay] does not have is refused by its full name."""
        self.assertConfigError(
            relayConfig, RELAY + "join_timout = 3\n", "relay.toml", "relay.join_timout",
            "unknown key",
        )

    def test_missingKey(self) -> None:
        """A required key that is missing is named."""
        self.assertConfigError(
            relayConfig, '[relay]\nclients = "tcp:7000"\n', "relay.toml", "relay.skeletons",
            "missing",
        )

    def test_missingTable(self) -> None:
        """An empty document misses the first required key."""
        self.assertConfigError(relayConfig, "", "relay.toml", "relay.clients", "missing")

    def test_notATable(self) -> None:
        """C{relay = ...} instead of C{[relay]} is refused."""
        self.assertConfigError(relayConfig, "relay = 5\n", "relay.toml", "relay", "must be a table")

    def test_wrongTypes(self) -> None:
        """Values of the wrong type are refused, showing the value."""
        self.assertConfigError(
            relayConfig, '[relay]\nclients = 7000\nskeletons = "tcp:7001"\n', "r",
            "relay.clients", "must be a string, not 7000",
        )
        self.assertConfigError(
            relayConfig, RELAY + 'join_timeout = "10"\n', "r", "relay.join_timeout",
            "must be a number, not '10'",
        )
        self.assertConfigError(
            relayConfig, RELAY + "max_pool = 1.5\n", "r", "relay.max_pool",
            "must be a whole number, not 1.5",
        )

    def test_booleanIsNotANumber(self) -> None:
        """C{true} is not taken for 1, though Python's bool is an int."""
        self.assertConfigError(
            relayConfig, RELAY + "max_pool = true\n", "r", "relay.max_pool",
            "must be a whole number, not True",
        )
        self.assertConfigError(
            relayConfig, RELAY + "join_timeout = false\n", "r", "relay.join_timeout",
            "must be a number, not False",
        )

    def test_ranges(self) -> None:
        """Numbers outside their range are refused; the bounds themselves are fine."""
        for bad, key, problem in [
            ("join_timeout = 0", "relay.join_timeout", "must be between 0.1 and 3600"),
            ("join_timeout = 3600.5", "relay.join_timeout", "must be between 0.1 and 3600"),
            ("max_pool = -1", "relay.max_pool", "must be between 0 and 10000"),
            ("max_pool = 10001", "relay.max_pool", "must be between 0 and 10000"),
        ]:
            self.assertConfigError(relayConfig, RELAY + bad + "\n", "r", key, problem)
        config = relayConfig(
            parseToml(RELAY + "join_timeout = 0.1\nmax_pool = 10000\n"), "r"
        )
        self.assertEqual((config.join_timeout, config.max_pool), (0.1, 10000))
        config = relayConfig(parseToml(RELAY + "join_timeout = 3600\nmax_pool = 0\n"), "r")
        self.assertEqual((config.join_timeout, config.max_pool), (3600.0, 0))

    def test_badEndpoint(self) -> None:
        """An endpoint string Twisted cannot parse is refused with its reason."""
        self.assertConfigError(
            relayConfig, '[relay]\nclients = "bogus:1"\nskeletons = "tcp:7001"\n',
            "relay.toml", "relay.clients",
            "not a valid listening endpoint 'bogus:1': Unknown endpoint type: 'bogus'",
        )
        self.assertConfigError(
            relayConfig, '[relay]\nclients = "tcp:7000"\nskeletons = "tcp:seven"\n',
            "relay.toml", "relay.skeletons",
            "not a valid listening endpoint 'tcp:seven': invalid literal for int()"
            " with base 10: 'seven'",
        )

    @settings(deadline=None)
    @given(
        port=st.integers(min_value=0, max_value=65535),
        interface=st.ip_addresses(v=4).map(str),
    )
    def test_tcpListenEndpointsParse(self, port: int, interface: str) -> None:
        """
        Any TCP port with any IPv4 interface is a valid listening endpoint,
        and comes back with the default backlog added.
        """
        description = f"tcp:{port}:interface={interface}"
        text = f'[relay]\nclients = "{description}"\nskeletons = "tcp:{port}"\n'
        config = relayConfig(parseToml(text), "r")
        self.assertEqual(config.clients, f"{description}:backlog={DEFAULT_BACKLOG}")

    @settings(deadline=None)
    @given(
        port=st.integers(min_value=0, max_value=65535),
        interface=st.ip_addresses(v=6).map(str),
    )
    def test_tcp6ListenEndpointsParse(self, port: int, interface: str) -> None:
        """
        Any TCP port with any IPv6 interface (its colons escaped, as endpoint
        strings need) is a valid listening endpoint.
        """
        escaped = interface.replace(":", "\\\\:")  # TOML, then endpoint, escaping
        text = (
            f'[relay]\nclients = "tcp6:{port}:interface={escaped}"\n'
            f'skeletons = "tcp:7001"\n'
        )
        config = relayConfig(parseToml(text), "r")
        self.assertTrue(config.clients.startswith(f"tcp6:{port}:interface="))
        self.assertTrue(config.clients.endswith(f":backlog={DEFAULT_BACKLOG}"))


class SkeletonConfigTests(ConfigErrorMixin, SynchronousTestCase):
    """L{skeletonConfig}."""

    def test_good(self) -> None:
        """A complete skeleton file becomes a L{SkeletonConfig}."""
        text = SKELETON + 'description = "the web"\n[[server]]\nid = "db"\n'
        text += 'target = "unix:/run/db.sock"\n'
        text = text.replace('name = "edge"', 'name = "edge"\npool = 3')
        self.assertEqual(
            skeletonConfig(parseToml(text), "s"),
            SkeletonConfig(
                relay="tcp:relay.example:7001",
                name="edge",
                servers=(
                    ServerConfig("web", "tcp:127.0.0.1:8000", "the web"),
                    ServerConfig("db", "unix:/run/db.sock", ""),
                ),
                pool=3,
            ),
        )

    def test_defaults(self) -> None:
        """The name defaults to the host name and the pool to one."""
        config = skeletonConfig(parseToml(SKELETON.replace('name = "edge"', "")), "s")
        self.assertEqual((config.name, config.pool), (socket.gethostname(), 1))

    def test_targetHasNoBacklog(self) -> None:
        """Connecting endpoints (relay, targets) are kept as written."""
        config = skeletonConfig(parseToml(SKELETON), "s")
        self.assertEqual(config.servers[0].target, "tcp:127.0.0.1:8000")
        self.assertEqual(config.relay, "tcp:relay.example:7001")

    def test_noServer(self) -> None:
        """A skeleton without a [[server]] is refused."""
        self.assertConfigError(
            skeletonConfig, '[skeleton]\nrelay = "tcp:h:7001"\n', "skel.toml", "server",
            "a skeleton needs at least one [[server]]",
        )

    def test_serverAsTable(self) -> None:
        """C{[server]} instead of C{[[server]]} is refused, saying how to write it."""
        self.assertConfigError(
            skeletonConfig,
            '[skeleton]\nrelay = "tcp:h:7001"\n[server]\nid = "web"\n',
            "skel.toml", "server", "must be written [[server]]",
        )

    def test_unknownSection(self) -> None:
        """A table a skeleton does not have is refused, naming those it has."""
        self.assertConfigError(
            skeletonConfig, SKELETON + "[client]\n", "skel.toml", "client",
            "unknown section; expected [[server]], [skeleton]",
        )

    def test_unknownServerKey(self) -> None:
        """An unknown key in a [[server]] is named with the server's index."""
        self.assertConfigError(
            skeletonConfig, SKELETON + "port = 8000\n", "skel.toml", "server[0].port",
            "unknown key",
        )

    def test_missingServerKey(self) -> None:
        """A [[server]] without a target is refused."""
        self.assertConfigError(
            skeletonConfig, SKELETON + '[[server]]\nid = "db"\n', "skel.toml",
            "server[1].target", "missing",
        )

    def test_badServerId(self) -> None:
        """A malformed server id is refused with the rule for ids."""
        self.assertConfigError(
            skeletonConfig, SKELETON.replace('id = "web"', 'id = "my web"'), "skel.toml",
            "server[0].id",
            "bad server id 'my web': use 1 to 64 letters, digits, '.', '_' or '-',"
            " starting with a letter or digit",
        )

    def test_duplicateServerId(self) -> None:
        """Two [[server]]s with one id are refused."""
        self.assertConfigError(
            skeletonConfig, SKELETON + '[[server]]\nid = "web"\ntarget = "tcp:h:1"\n',
            "skel.toml", "server", "server id 'web' appears twice",
        )

    def test_listeningTarget(self) -> None:
        """
        A target written as a listening endpoint (no host) is refused: a
        target is connected to.
        """
        error = self.assertRaises(
            ConfigError,
            skeletonConfig,
            parseToml(SKELETON.replace("tcp:127.0.0.1:8000", "tcp:8000")),
            "skel.toml",
        )
        self.assertEqual(error.key, "server[0].target")
        self.assertTrue(
            error.problem.startswith("not a valid connecting endpoint 'tcp:8000': "),
            error.problem,
        )

    def test_poolRangeAndType(self) -> None:
        """The pool must be an integer from 0 to 1000."""
        for bad, problem in [
            ("pool = -1", "must be between 0 and 1000"),
            ("pool = 1001", "must be between 0 and 1000"),
            ("pool = 1.0", "must be a whole number, not 1.0"),
        ]:
            self.assertConfigError(
                skeletonConfig, SKELETON.replace('name = "edge"', bad), "s",
                "skeleton.pool", problem,
            )


class ClientConfigTests(ConfigErrorMixin, SynchronousTestCase):
    """L{clientConfig}."""

    def test_good(self) -> None:
        """A client file becomes a L{ClientConfig}; listeners get the backlog."""
        text = CLIENT + '[[tunnel]]\nserver = "web"\nlisten = "unix:/tmp/web.sock"\n'
        self.assertEqual(
            clientConfig(parseToml(text), "c"),
            ClientConfig(
                relay="tcp:relay.example:7000",
                tunnels=(
                    TunnelConfig("web", "tcp:8080:interface=127.0.0.1:backlog=1024"),
                    TunnelConfig("web", "unix:/tmp/web.sock"),
                ),
            ),
        )

    def test_needsTunnel(self) -> None:
        """
        A client with no [[tunnel]] is refused, unless it only lists servers
        (C{needTunnels=False}, for C{relaynat list}).
        """
        text = '[client]\nrelay = "tcp:h:7000"\n'
        self.assertConfigError(
            clientConfig, text, "client.toml", "tunnel", "a client needs at least one [[tunnel]]"
        )
        self.assertEqual(
            clientConfig(parseToml(text), "c", needTunnels=False),
            ClientConfig(relay="tcp:h:7000"),
        )

    def test_duplicateListen(self) -> None:
        """Two tunnels on one listening address are refused."""
        text = CLIENT + '[[tunnel]]\nserver = "db"\nlisten = "tcp:8080:interface=127.0.0.1"\n'
        self.assertConfigError(
            clientConfig, text, "client.toml", "tunnel",
            "listen address 'tcp:8080:interface=127.0.0.1:backlog=1024' appears twice",
        )

    def test_badTunnelServer(self) -> None:
        """A tunnel to a malformed server id is refused."""
        error = self.assertRaises(
            ConfigError,
            clientConfig,
            parseToml(CLIENT.replace('server = "web"', 'server = "-web"')),
            "client.toml",
        )
        self.assertEqual(error.key, "tunnel[0].server")
        self.assertIn("bad server id '-web'", error.problem)

    def test_badRelay(self) -> None:
        """A relay address that is not a connecting endpoint is refused."""
        error = self.assertRaises(
            ConfigError,
            clientConfig,
            parseToml(CLIENT.replace("tcp:relay.example:7000", "tcp:relay.example")),
            "client.toml",
        )
        self.assertEqual(error.key, "client.relay")
        self.assertTrue(error.problem.startswith("not a valid connecting endpoint"))


class BacklogTests(SynchronousTestCase):
    """L{withDefaultBacklog}."""

    def test_added(self) -> None:
        """TCP and TCP6 listeners get the default backlog."""
        self.assertEqual(withDefaultBacklog("tcp:7000"), "tcp:7000:backlog=1024")
        self.assertEqual(
            withDefaultBacklog("tcp6:7000:interface=\\:\\:1"),
            "tcp6:7000:interface=\\:\\:1:backlog=1024",
        )

    def test_explicitKept(self) -> None:
        """A backlog given in the string is left alone."""
        self.assertEqual(withDefaultBacklog("tcp:7000:backlog=5"), "tcp:7000:backlog=5")

    def test_otherKindsUntouched(self) -> None:
        """Endpoints that are not TCP are left alone."""
        for description in ["unix:/tmp/s", "systemd:domain=INET:index=0", "onion:80"]:
            self.assertEqual(withDefaultBacklog(description), description)


class WithFlagsTests(SynchronousTestCase):
    """L{withFlags}: the command line laid over a document."""

    def test_flagsReplaceKeys(self) -> None:
        """Given flags replace the table's keys; others stay."""
        document = {"relay": {"clients": "tcp:1", "skeletons": "tcp:2"}}
        merged = withFlags(document, "relay", {"clients": "tcp:9"})
        self.assertEqual(merged, {"relay": {"clients": "tcp:9", "skeletons": "tcp:2"}})

    def test_noneMeansNotGiven(self) -> None:
        """A flag that is None does not erase the file's value."""
        document = {"relay": {"clients": "tcp:1"}}
        self.assertEqual(withFlags(document, "relay", {"clients": None}), document)

    def test_tableCreated(self) -> None:
        """Flags alone make the table."""
        self.assertEqual(
            withFlags({}, "client", {"relay": "tcp:h:1", "other": None}),
            {"client": {"relay": "tcp:h:1"}},
        )

    def test_arraysAppended(self) -> None:
        """Array entries from flags come after the file's."""
        document = {"server": [{"id": "a"}]}
        merged = withFlags(document, "skeleton", {}, {"server": [{"id": "b"}]})
        self.assertEqual(merged["server"], [{"id": "a"}, {"id": "b"}])

    def test_emptyArraysAddNothing(self) -> None:
        """An empty array of flags does not add the key."""
        self.assertEqual(withFlags({}, "client", {}, {"tunnel": []}), {})

    def test_documentUnchanged(self) -> None:
        """The document given is not modified."""
        document = {"skeleton": {"pool": 1}, "server": [{"id": "a"}]}
        withFlags(document, "skeleton", {"pool": 2}, {"server": [{"id": "b"}]})
        self.assertEqual(document, {"skeleton": {"pool": 1}, "server": [{"id": "a"}]})

    def test_nonTableLeftForTheCheck(self) -> None:
        """
        A section that is not a table is left as it is, so that the
        configuration check reports it rather than the flags hiding it.
        """
        merged = withFlags({"relay": 5}, "relay", {"clients": "tcp:1"})
        self.assertEqual(merged, {"relay": 5})
        error = self.assertRaises(ConfigError, relayConfig, merged, "r")
        self.assertEqual(str(error), "r: relay: must be a table")


#: Ids without '=' (and non-empty), and endpoints that may contain '='.
_ids = st.text(st.characters(blacklist_characters="="), min_size=1)
_endpoints = st.text(min_size=1)


class SplitAssignmentTests(SynchronousTestCase):
    """L{splitAssignment}, for C{--server} and C{--tunnel}."""

    @settings(deadline=None)
    @given(_ids, _endpoints)
    def test_splitsAtFirstEquals(self, name: str, endpoint: str) -> None:
        """
        C{ID=ENDPOINT} splits at the first C{=}, so the endpoint keeps its
        own C{=}s, and joining the parts gives the value back.
        """
        value = f"{name}={endpoint}"
        self.assertEqual(splitAssignment("--server", value), (name, endpoint))
        self.assertEqual("=".join(splitAssignment("--server", value)), value)

    def test_example(self) -> None:
        """The documented example splits as expected."""
        self.assertEqual(
            splitAssignment("--tunnel", "web=tcp:8080:interface=127.0.0.1"),
            ("web", "tcp:8080:interface=127.0.0.1"),
        )

    @settings(deadline=None)
    @given(st.text(st.characters(blacklist_characters="=")))
    def test_noEquals(self, value: str) -> None:
        """A value without C{=} is refused, naming the flag and the value."""
        error = self.assertRaises(ConfigError, splitAssignment, "--server", value)
        self.assertEqual(str(error), f"--server: {value}: expected ID=ENDPOINT")

    def test_emptyHalves(self) -> None:
        """An empty id or an empty endpoint is refused."""
        for value in ["=tcp:1", "web=", "="]:
            self.assertRaises(ConfigError, splitAssignment, "--tunnel", value)


_ID_FIRST = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_ID_REST = _ID_FIRST + "_.-"


def _isValidId(value: str) -> bool:
    """The rule for ids, written out independently of the regular expression."""
    return (
        1 <= len(value) <= 64
        and value[0] in _ID_FIRST
        and all(c in _ID_REST for c in value)
    )


class ServerIdTests(SynchronousTestCase):
    """L{checkServerId} and L{SERVER_ID}."""

    @settings(deadline=None)
    @given(st.from_regex(SERVER_ID, fullmatch=True))
    def test_validIdsPass(self, serverId: str) -> None:
        """Every string the id pattern describes passes, unchanged."""
        self.assertTrue(_isValidId(serverId), repr(serverId))
        self.assertEqual(checkServerId(serverId), serverId)

    @settings(deadline=None)
    @given(st.text(max_size=80).filter(lambda s: not _isValidId(s)))
    def test_invalidIdsRefused(self, serverId: str) -> None:
        """Every string that breaks the rule for ids raises L{BadRequest}."""
        error = self.assertRaises(BadRequest, checkServerId, serverId)
        self.assertIn(repr(serverId), str(error))

    @settings(deadline=None)
    @given(
        st.one_of(
            st.just(""),
            st.text(_ID_REST, min_size=65, max_size=100),
            st.tuples(st.sampled_from("_.-"), st.text(_ID_REST, max_size=10)).map("".join),
            st.tuples(
                st.from_regex(SERVER_ID, fullmatch=True),
                st.sampled_from(["\n", " ", "/", "\x00", "é", ":", "="]),
            ).map("".join),
        )
    )
    def test_nearMissesRefused(self, serverId: str) -> None:
        """
        Ids that are almost right (empty, too long, starting with
        punctuation, a valid id with one bad character after it, including a
        trailing newline) are refused.
        """
        self.assertRaises(BadRequest, checkServerId, serverId)


class RelayOptionsTests(SynchronousTestCase):
    """C{twistd relay}'s options."""

    def parse(self, argv: list[str]) -> relayTap.Options:
        options = relayTap.Options()
        options.parseOptions(argv)
        return options

    def test_flagsOnly(self) -> None:
        """Flags alone make a complete relay configuration."""
        options = self.parse(
            ["--clients", "tcp:7000", "--skeletons", "tcp:7001", "--join-timeout", "2"]
        )
        self.assertEqual(
            options.relay,
            RelayConfig("tcp:7000:backlog=1024", "tcp:7001:backlog=1024", 2.0, 64),
        )

    def test_missing(self) -> None:
        """A missing address is a usage error naming the key."""
        error = self.assertRaises(UsageError, self.parse, ["--clients", "tcp:7000"])
        self.assertEqual(str(error), "command line: relay.skeletons: missing")

    def test_outOfRange(self) -> None:
        """A join timeout out of range is a usage error."""
        error = self.assertRaises(
            UsageError,
            self.parse,
            ["--clients", "tcp:7000", "--skeletons", "tcp:7001", "--join-timeout", "0"],
        )
        self.assertEqual(
            str(error), "command line: relay.join_timeout: must be between 0.1 and 3600"
        )

    def test_notANumber(self) -> None:
        """A join timeout that is not a number is a usage error."""
        error = self.assertRaises(
            UsageError,
            self.parse,
            ["--clients", "tcp:7000", "--skeletons", "tcp:7001", "--join-timeout", "soon"],
        )
        self.assertIn("'soon'", str(error))

    def test_notANumberNamesTheFlag(self) -> None:
        """The usage error for a malformed number says which flag it was."""
        error = self.assertRaises(
            UsageError,
            self.parse,
            ["--clients", "tcp:7000", "--skeletons", "tcp:7001", "--join-timeout", "soon"],
        )
        self.assertIn("--join-timeout", str(error))


    def test_badEndpoint(self) -> None:
        """An endpoint that does not parse is a usage error with the reason."""
        error = self.assertRaises(
            UsageError, self.parse, ["--clients", "tpc:7000", "--skeletons", "tcp:7001"]
        )
        self.assertEqual(
            str(error),
            "command line: relay.clients: not a valid listening endpoint 'tpc:7000':"
            " Unknown endpoint type: 'tpc'",
        )

    def test_fileAndFlags(self) -> None:
        """
        With a file and flags, the flags win and the file fills in the
        rest; errors in the file name the file.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(RELAY + "max_pool = 5\n")
        options = self.parse(["--config", path, "--clients", "tcp:9000"])
        self.assertEqual(
            options.relay,
            RelayConfig("tcp:9000:backlog=1024", "tcp:7001:backlog=1024", 10.0, 5),
        )
        with open(path, "w") as f:
            f.write(RELAY + "colour = 'blue'\n")
        error = self.assertRaises(UsageError, self.parse, ["--config", path])
        self.assertEqual(str(error), f"{path}: relay.colour: unknown key")

    def test_missingFile(self) -> None:
        """A config file that does not exist is a usage error with its path."""
        path = self.mktemp()
        error = self.assertRaises(UsageError, self.parse, ["-c", path])
        self.assertEqual(str(error), f"{path}: (file): No such file or directory")


class SkeletonOptionsTests(SynchronousTestCase):
    """C{twistd skeleton}'s options."""

    def parse(self, argv: list[str]) -> skeletonTap.Options:
        options = skeletonTap.Options()
        options.parseOptions(argv)
        return options

    def test_flagsOnly(self) -> None:
        """
        Flags alone make a complete skeleton configuration; a server from
        the command line is described by its id.
        """
        options = self.parse(
            [
                "--relay", "tcp:relay.example:7001",
                "--server", "web=tcp:127.0.0.1:8000",
                "--server", "db=unix:/run/db.sock",
                "--name", "edge", "--pool", "0",
            ]
        )
        self.assertEqual(
            options.skeleton,
            SkeletonConfig(
                relay="tcp:relay.example:7001",
                name="edge",
                servers=(
                    ServerConfig("web", "tcp:127.0.0.1:8000", "web"),
                    ServerConfig("db", "unix:/run/db.sock", "db"),
                ),
                pool=0,
            ),
        )

    def test_serverWithoutEquals(self) -> None:
        """C{--server} without C{=} is a usage error that shows the form."""
        error = self.assertRaises(
            UsageError, self.parse, ["--relay", "tcp:h:7001", "--server", "web"]
        )
        self.assertEqual(str(error), "--server: web: expected ID=ENDPOINT")

    def test_badServerId(self) -> None:
        """A malformed id in C{--server} is a usage error."""
        error = self.assertRaises(
            UsageError, self.parse, ["--relay", "tcp:h:7001", "--server", "w b=tcp:h:1"]
        )
        self.assertTrue(
            str(error).startswith("command line: server[0].id: bad server id 'w b'"),
            str(error),
        )

    def test_badTarget(self) -> None:
        """A target that does not parse is a usage error."""
        error = self.assertRaises(
            UsageError, self.parse, ["--relay", "tcp:h:7001", "--server", "web=nope"]
        )
        self.assertEqual(
            str(error),
            "command line: server[0].target: not a valid connecting endpoint 'nope':"
            " Unknown endpoint type: 'nope'",
        )

    def test_noServer(self) -> None:
        """A skeleton with no server is a usage error."""
        error = self.assertRaises(UsageError, self.parse, ["--relay", "tcp:h:7001"])
        self.assertEqual(
            str(error), "command line: server: a skeleton needs at least one [[server]]"
        )

    def test_duplicateServer(self) -> None:
        """The same id twice on the command line is a usage error."""
        error = self.assertRaises(
            UsageError,
            self.parse,
            ["--relay", "tcp:h:7001", "--server", "web=tcp:h:1", "--server", "web=tcp:h:2"],
        )
        self.assertEqual(str(error), "command line: server: server id 'web' appears twice")

    def test_poolOutOfRange(self) -> None:
        """A pool out of range is a usage error."""
        error = self.assertRaises(
            UsageError,
            self.parse,
            ["--relay", "tcp:h:7001", "--server", "web=tcp:h:1", "--pool", "1001"],
        )
        self.assertEqual(str(error), "command line: skeleton.pool: must be between 0 and 1000")

    def test_fileAndFlags(self) -> None:
        """
        Flags override the file's keys and add servers after the file's;
        what the flags do not give comes from the file.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(SKELETON.replace('name = "edge"', 'name = "edge"\npool = 3'))
        options = self.parse(
            ["--config", path, "--pool", "5", "--server", "db=tcp:127.0.0.1:5432"]
        )
        self.assertEqual(options.skeleton.pool, 5)
        self.assertEqual(options.skeleton.name, "edge")
        self.assertEqual(options.skeleton.relay, "tcp:relay.example:7001")
        self.assertEqual([s.id for s in options.skeleton.servers], ["web", "db"])

    def test_flagDuplicatesFileServer(self) -> None:
        """A C{--server} reusing an id of the file is refused, naming the file."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(SKELETON)
        error = self.assertRaises(
            UsageError, self.parse, ["--config", path, "--server", "web=tcp:h:1"]
        )
        self.assertEqual(str(error), f"{path}: server: server id 'web' appears twice")


class ClientOptionsTests(SynchronousTestCase):
    """C{twistd client}'s options."""

    def parse(self, argv: list[str]) -> clientTap.Options:
        options = clientTap.Options()
        options.parseOptions(argv)
        return options

    def test_flagsOnly(self) -> None:
        """Flags alone make a complete client configuration."""
        options = self.parse(
            [
                "--relay", "tcp:relay.example:7000",
                "--tunnel", "web=tcp:8080:interface=127.0.0.1",
            ]
        )
        self.assertEqual(
            options.client,
            ClientConfig(
                relay="tcp:relay.example:7000",
                tunnels=(TunnelConfig("web", "tcp:8080:interface=127.0.0.1:backlog=1024"),),
            ),
        )

    def test_tunnelWithoutEquals(self) -> None:
        """C{--tunnel} without C{=} is a usage error that shows the form."""
        error = self.assertRaises(
            UsageError, self.parse, ["--relay", "tcp:h:7000", "--tunnel", "tcp:8080"]
        )
        self.assertEqual(str(error), "--tunnel: tcp:8080: expected ID=ENDPOINT")

    def test_noTunnel(self) -> None:
        """A client with no tunnel is a usage error."""
        error = self.assertRaises(UsageError, self.parse, ["--relay", "tcp:h:7000"])
        self.assertEqual(
            str(error), "command line: tunnel: a client needs at least one [[tunnel]]"
        )

    def test_noRelay(self) -> None:
        """A client with no relay is a usage error."""
        error = self.assertRaises(UsageError, self.parse, ["--tunnel", "web=tcp:8080"])
        self.assertEqual(str(error), "command line: client.relay: missing")

    def test_fileAndFlags(self) -> None:
        """C{--relay} overrides the file's relay; tunnels add to the file's."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(CLIENT)
        options = self.parse(
            ["--config", path, "--relay", "tcp:other.example:7000", "--tunnel", "db=tcp:5432"]
        )
        self.assertEqual(options.client.relay, "tcp:other.example:7000")
        self.assertEqual(
            [(t.server, t.listen) for t in options.client.tunnels],
            [
                ("web", "tcp:8080:interface=127.0.0.1:backlog=1024"),
                ("db", "tcp:5432:backlog=1024"),
            ],
        )
