"""
Tests for L{relaynat.config} and the twistd options of the three roles:
documents parsed from strings, every kind of mistake reported with its
source, key and problem, file names resolved where they were written, flags
laid over files, the files the options read at once (the relay's identity
and users, every per-server secret), and property tests for the small
parsers.
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Callable
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
    RelayAccess,
    RelayConfig,
    ServerConfig,
    SkeletonConfig,
    TunnelConfig,
    clientConfig,
    hostOf,
    parseToml,
    relayConfig,
    skeletonConfig,
    splitAssignment,
    withDefaultBacklog,
)
from relaynat.identity import fingerprintOfFile, generate, writePrivate
from relaynat.load import LoadedClient, LoadedRelay, LoadedSkeleton, readConfig
from relaynat.names import checkServerId, printable
from relaynat.secret import generateSecret, loadSecret
from relaynat.tap import client as clientTap
from relaynat.tap import relay as relayTap
from relaynat.tap import skeleton as skeletonTap
from relaynat.users import Rights, User, saveUsers
from relaynat.wire import SERVER_ID, BadRequest

#: A well-formed fingerprint of no key in particular.
FINGERPRINT = "sha256:" + "ab" * 32

#: The lines every [relay] needs besides its two endpoints.
RELAY_FILES = 'key = "relay.key"\ncert = "relay.pem"\nusers = "users"\n'

RELAY = """
[relay]
clients = "tcp:7000"
skeletons = "tcp:7001"
""" + RELAY_FILES

SKELETON = f"""
[skeleton]
relay = "tcp:relay.example:7001"
relay_key = "{FINGERPRINT}"
user = "edge"
password_file = "edge.password"
name = "edge"

[[server]]
id = "web"
target = "tcp:127.0.0.1:8000"
secret_file = "web.secret"
"""

CLIENT = f"""
[client]
relay = "tcp:relay.example:7000"
relay_key = "{FINGERPRINT}"
user = "laptop"
password_file = "laptop.password"

[[tunnel]]
server = "web"
listen = "tcp:8080:interface=127.0.0.1"
secret_file = "web.secret"
"""


def access(**changes: Any) -> RelayAccess:
    """The L{RelayAccess} of L{SKELETON} read from a file in the current folder."""
    values: dict[str, Any] = {
        "relay": "tcp:relay.example:7001",
        "user": "edge",
        "password_file": "edge.password",
        "relay_key": FINGERPRINT,
        "relay_verify": "pin",
        "relay_ca": None,
        "relay_name": "relay.example",
    }
    values.update(changes)
    return RelayAccess(**values)


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
    """L{parseToml}, and L{readConfig}'s text parsed."""

    def test_parseGood(self) -> None:
        """A TOML string becomes its document."""
        self.assertEqual(
            parseToml(RELAY),
            {
                "relay": {
                    "clients": "tcp:7000",
                    "skeletons": "tcp:7001",
                    "key": "relay.key",
                    "cert": "relay.pem",
                    "users": "users",
                }
            },
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
        """A file's text parses into its document."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(RELAY)
        self.assertEqual(parseToml(*readConfig(path))["relay"]["clients"], "tcp:7000")

    def test_readMissingFile(self) -> None:
        """A file that does not exist is reported with its path."""
        path = self.mktemp()
        error = self.assertRaises(ConfigError, lambda: parseToml(*readConfig(path)))
        self.assertEqual(str(error), f"{path}: (file): No such file or directory")

    def test_readDirectory(self) -> None:
        """A directory given as the file is reported with its path."""
        path = self.mktemp()
        os.mkdir(path)
        error = self.assertRaises(ConfigError, lambda: parseToml(*readConfig(path)))
        self.assertEqual(str(error), f"{path}: (file): Is a directory")

    def test_readBadSyntax(self) -> None:
        """A file with a syntax error names the file and C{(syntax)}."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[relay]\nclients = "tcp:7000\n')
        error = self.assertRaises(ConfigError, lambda: parseToml(*readConfig(path)))
        self.assertEqual((error.source, error.key), (path, "(syntax)"))
        self.assertIn("line 2", str(error))

    def test_shippedExamplesParse(self) -> None:
        """The example configurations in C{conf/} are valid."""
        conf = os.path.join(os.path.dirname(relaynat.__file__), os.pardir, "conf")
        if not os.path.isdir(conf):
            raise self.skipTest("no conf/ directory next to the package")
        builds: list[tuple[str, Callable[[dict[str, Any], str], object]]] = [
            ("relay.toml", relayConfig),
            ("skeleton.toml", skeletonConfig),
            ("client.toml", clientConfig),
        ]
        for name, build in builds:
            path = os.path.join(conf, name)
            build(parseToml(*readConfig(path)), path)


class RelayConfigTests(ConfigErrorMixin, SynchronousTestCase):
    """L{relayConfig}."""

    def test_good(self) -> None:
        """
        A complete [relay] becomes a L{RelayConfig}, with the default backlog
        added to the TCP listening endpoints (the web one too).
        """
        text = RELAY + 'web = "tcp:7080"\njoin_timeout = 2.5\nmax_pool = 10\n'
        text += "session_lifetime = 3600\n"
        self.assertEqual(
            relayConfig(parseToml(text), "relay.toml"),
            RelayConfig(
                clients="tcp:7000:backlog=1024",
                skeletons="tcp:7001:backlog=1024",
                key="relay.key",
                cert="relay.pem",
                users="users",
                web="tcp:7080:backlog=1024",
                join_timeout=2.5,
                max_pool=10,
                session_lifetime=3600.0,
            ),
        )

    def test_defaults(self) -> None:
        """
        Without them, there is no web endpoint, join_timeout is 10 s,
        max_pool 64 and a session lasts a day.
        """
        config = relayConfig(parseToml(RELAY), "relay.toml")
        self.assertEqual(
            (config.web, config.join_timeout, config.max_pool, config.session_lifetime),
            (None, 10.0, 64, 86400.0),
        )

    def test_filesRequired(self) -> None:
        """The key, the certificate and the users file must each be given."""
        for key in ("key", "cert", "users"):
            text = "".join(
                line + "\n" for line in RELAY.splitlines() if not line.startswith(key + " ")
            )
            self.assertConfigError(relayConfig, text, "relay.toml", f"relay.{key}", "missing")

    def test_pathsRelativeToConfigFile(self) -> None:
        """
        File names are relative to the config file's folder; absolute names
        stay as written and C{~} is the home folder.
        """
        config = relayConfig(parseToml(RELAY), "/etc/relaynat/relay.toml")
        self.assertEqual(
            (config.key, config.cert, config.users),
            ("/etc/relaynat/relay.key", "/etc/relaynat/relay.pem", "/etc/relaynat/users"),
        )
        config = relayConfig(parseToml(RELAY), "conf/relay.toml")
        self.assertEqual(config.key, os.path.join("conf", "relay.key"))
        text = RELAY.replace('"relay.key"', '"../keys/relay.key"')
        text = text.replace('"relay.pem"', '"/srv/relay.pem"').replace('"users"', '"~/users"')
        config = relayConfig(parseToml(text), "/etc/relaynat/relay.toml")
        self.assertEqual(
            (config.key, config.cert, config.users),
            ("/etc/keys/relay.key", "/srv/relay.pem", os.path.expanduser("~/users")),
        )

    def test_pathsOfStringsRelativeToCwd(self) -> None:
        """
        A document with no file of its own (a string, the command line)
        names files relative to the current folder.
        """
        for source in ("<string>", "command line"):
            config = relayConfig(parseToml(RELAY), source)
            self.assertEqual((config.key, config.users), ("relay.key", "users"))

    def test_sessionLifetimeRange(self) -> None:
        """A session lasts from a minute to a year."""
        for bad in ("59", "31536001"):
            error = self.assertRaises(
                ConfigError,
                relayConfig,
                parseToml(RELAY + f"session_lifetime = {bad}\n"),
                "r",
            )
            self.assertEqual(error.key, "relay.session_lifetime")
            self.assertTrue(error.problem.startswith("must be between 60 and "), error.problem)
        for good in (60, 31536000):
            config = relayConfig(parseToml(RELAY + f"session_lifetime = {good}\n"), "r")
            self.assertEqual(config.session_lifetime, float(good))

    def test_sessionLifetimeRangeReadable(self) -> None:
        """The bounds of session_lifetime are written as plain numbers."""
        self.assertConfigError(
            relayConfig, RELAY + "session_lifetime = 31536001\n", "r",
            "relay.session_lifetime", "must be between 60 and 31536000",
        )


    def test_badWebEndpoint(self) -> None:
        """A web endpoint Twisted cannot parse is refused with its reason."""
        self.assertConfigError(
            relayConfig, RELAY + 'web = "htp:80"\n', "relay.toml", "relay.web",
            "not a valid listening endpoint 'htp:80': Unknown endpoint type: 'htp'",
        )

    def test_integerTimeout(self) -> None:
        """An integer join_timeout is accepted, and becomes a float."""
        config = relayConfig(parseToml(RELAY + "join_timeout = 3\n"), "relay.toml")
        self.assertEqual(config.join_timeout, 3.0)
        self.assertIsInstance(config.join_timeout, float)

    def test_unixEndpointUntouched(self) -> None:
        """A UNIX socket endpoint gets no backlog added."""
        text = '[relay]\nclients = "unix:/tmp/x.sock"\nskeletons = "tcp:7001"\n' + RELAY_FILES
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
        self.assertConfigError(
            relayConfig, RELAY.replace('"users"', "5"), "r", "relay.users",
            "must be a string, not 5",
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

    def test_endsMetrics(self) -> None:
        """
        A skeleton and a client serve their own metrics only when their file
        names an endpoint for them.
        """
        self.assertIsNone(skeletonConfig(parseToml(SKELETON), "skel.toml").metrics)
        text = SKELETON.replace("[skeleton]\n", '[skeleton]\nmetrics = "tcp:9100:interface=127.0.0.1"\n')
        self.assertEqual(
            skeletonConfig(parseToml(text), "skel.toml").metrics,
            "tcp:9100:interface=127.0.0.1:backlog=1024",
        )

    def test_endpointWithoutItsPort(self) -> None:
        """
        An endpoint without a port says which part is missing with an
        example, not the argument list of a Twisted constructor.
        """
        self.assertConfigError(
            relayConfig, '[relay]\nclients = "tcp:interface=127.0.0.1"\nskeletons = "tcp:7001"\n',
            "relay.toml", "relay.clients",
            "not a valid listening endpoint 'tcp:interface=127.0.0.1': tcp: needs its port,"
            " e.g. tcp:7000 or tcp:7000:interface=127.0.0.1",
        )
        error = self.assertRaises(
            ConfigError,
            skeletonConfig,
            parseToml(SKELETON.replace("tcp:127.0.0.1:8000", "tcp:127.0.0.1")),
            "skel.toml",
        )
        self.assertEqual(
            error.problem,
            "not a valid connecting endpoint 'tcp:127.0.0.1': tcp: needs its port,"
            " e.g. tcp:relay.example.com:7000",
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
        text = f'[relay]\nclients = "{description}"\nskeletons = "tcp:{port}"\n' + RELAY_FILES
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
            f'skeletons = "tcp:7001"\n' + RELAY_FILES
        )
        config = relayConfig(parseToml(text), "r")
        self.assertTrue(config.clients.startswith(f"tcp6:{port}:interface="))
        self.assertTrue(config.clients.endswith(f":backlog={DEFAULT_BACKLOG}"))


class SkeletonConfigTests(ConfigErrorMixin, SynchronousTestCase):
    """L{skeletonConfig}."""

    def test_good(self) -> None:
        """A complete skeleton file becomes a L{SkeletonConfig}."""
        text = SKELETON + 'description = "the web"\n[[server]]\nid = "db"\n'
        text += 'target = "unix:/run/db.sock"\nsecret_file = "db.secret"\n'
        text = text.replace('name = "edge"', 'name = "edge"\npool = 3')
        self.assertEqual(
            skeletonConfig(parseToml(text), "s"),
            SkeletonConfig(
                access=access(),
                name="edge",
                servers=(
                    ServerConfig("web", "tcp:127.0.0.1:8000", "web.secret", "the web"),
                    ServerConfig("db", "unix:/run/db.sock", "db.secret", ""),
                ),
                pool=3,
            ),
        )

    def test_defaults(self) -> None:
        """The name defaults to the host name and the pool to one."""
        config = skeletonConfig(parseToml(SKELETON.replace('name = "edge"', "")), "s")
        self.assertEqual((config.name, config.pool), (socket.gethostname(), 1))

    def test_seal(self) -> None:
        """A server is sealed unless it says C{seal = false}."""
        self.assertTrue(skeletonConfig(parseToml(SKELETON), "s").servers[0].seal)
        config = skeletonConfig(parseToml(SKELETON + "seal = false\n"), "s")
        self.assertFalse(config.servers[0].seal)

    def test_sealNotBoolean(self) -> None:
        """C{seal} must be true or false, not a string."""
        self.assertConfigError(
            skeletonConfig, SKELETON + 'seal = "no"\n', "skel.toml", "server[0].seal",
            "must be true or false, not 'no'",
        )

    def test_targetHasNoBacklog(self) -> None:
        """Connecting endpoints (relay, targets) are kept as written."""
        config = skeletonConfig(parseToml(SKELETON), "s")
        self.assertEqual(config.servers[0].target, "tcp:127.0.0.1:8000")
        self.assertEqual(config.access.relay, "tcp:relay.example:7001")

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

    def test_secretFileRequired(self) -> None:
        """A [[server]] without a secret_file is refused: every server has a secret."""
        self.assertConfigError(
            skeletonConfig, SKELETON.replace('secret_file = "web.secret"\n', ""), "skel.toml",
            "server[0].secret_file", "missing",
        )

    def test_secretFileRelativeToConfigFile(self) -> None:
        """A server's secret_file is relative to the config file's folder."""
        config = skeletonConfig(parseToml(SKELETON), "/srv/edge/skeleton.toml")
        self.assertEqual(config.servers[0].secret_file, "/srv/edge/web.secret")

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
            skeletonConfig,
            SKELETON + '[[server]]\nid = "web"\ntarget = "tcp:h:1"\nsecret_file = "x"\n',
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
        text += 'secret_file = "/keys/web.secret"\n'
        self.assertEqual(
            clientConfig(parseToml(text), "c"),
            ClientConfig(
                access=access(
                    relay="tcp:relay.example:7000",
                    user="laptop",
                    password_file="laptop.password",
                ),
                tunnels=(
                    TunnelConfig(
                        "web", "tcp:8080:interface=127.0.0.1:backlog=1024", "web.secret"
                    ),
                    TunnelConfig("web", "unix:/tmp/web.sock", "/keys/web.secret"),
                ),
            ),
        )

    def test_needsTunnel(self) -> None:
        """
        A client with no [[tunnel]] is refused, unless it only lists servers
        (C{needTunnels=False}, for C{relaynat list}).
        """
        text = CLIENT[: CLIENT.index("[[tunnel]]")]
        self.assertConfigError(
            clientConfig, text, "client.toml", "tunnel", "a client needs at least one [[tunnel]]"
        )
        self.assertEqual(
            clientConfig(parseToml(text), "c", needTunnels=False),
            ClientConfig(
                access=access(
                    relay="tcp:relay.example:7000",
                    user="laptop",
                    password_file="laptop.password",
                )
            ),
        )

    def test_duplicateListen(self) -> None:
        """Two tunnels on one listening address are refused."""
        text = CLIENT + '[[tunnel]]\nserver = "db"\nlisten = "tcp:8080:interface=127.0.0.1"\n'
        text += 'secret_file = "db.secret"\n'
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

    def test_secretFileRequired(self) -> None:
        """A [[tunnel]] without a secret_file is refused."""
        self.assertConfigError(
            clientConfig, CLIENT.replace('secret_file = "web.secret"\n', ""), "client.toml",
            "tunnel[0].secret_file", "missing",
        )

    def test_secretFileRelativeToConfigFile(self) -> None:
        """A tunnel's secret_file is relative to the config file's folder."""
        config = clientConfig(parseToml(CLIENT), "/home/u/.relaynat/client.toml")
        self.assertEqual(config.tunnels[0].secret_file, "/home/u/.relaynat/web.secret")


class AccessConfigTests(ConfigErrorMixin, SynchronousTestCase):
    """
    How a skeleton or a client reaches and trusts the relay, and who it
    logs in as: the keys they share, checked alike under [skeleton] and
    [client].
    """

    def withKeys(self, **keys: str | None) -> str:
        """L{SKELETON} with [skeleton] keys replaced (None: removed) or added."""
        head, servers = SKELETON.split("[[server]]")
        lines = [line for line in head.splitlines() if line.split(" = ")[0] not in keys]
        lines += [f'{key} = "{value}"' for key, value in keys.items() if value is not None]
        return "\n".join(lines) + "\n[[server]]" + servers

    def test_pinByFingerprint(self) -> None:
        """
        By default the relay's key is pinned; a fingerprint is kept as a
        fingerprint, lower-cased.
        """
        text = self.withKeys(relay_key="SHA256:" + "AB" * 32)
        config = skeletonConfig(parseToml(text), "/srv/edge/skeleton.toml")
        self.assertEqual(
            (config.access.relay_verify, config.access.relay_key), ("pin", FINGERPRINT)
        )

    def test_pinByCertificateFile(self) -> None:
        """
        A relay_key that is not a fingerprint is the relay's certificate
        file, relative to the config file's folder (not read here).
        """
        for written, source, expected in [
            ("relay.pem", "/srv/edge/skeleton.toml", "/srv/edge/relay.pem"),
            ("certs/relay.pem", "/srv/edge/skeleton.toml", "/srv/edge/certs/relay.pem"),
            ("/etc/relay.pem", "/srv/edge/skeleton.toml", "/etc/relay.pem"),
            ("relay.pem", "<string>", "relay.pem"),
        ]:
            config = skeletonConfig(parseToml(self.withKeys(relay_key=written)), source)
            self.assertEqual(config.access.relay_key, expected)

    def test_otherFilesRelativeToConfigFile(self) -> None:
        """The password file and a CA certificate are relative to the config file too."""
        text = self.withKeys(relay_verify="hostname", relay_ca="ca.pem", relay_key=None)
        config = skeletonConfig(parseToml(text), "/srv/edge/skeleton.toml")
        self.assertEqual(
            (config.access.password_file, config.access.relay_ca),
            ("/srv/edge/edge.password", "/srv/edge/ca.pem"),
        )

    def test_badFingerprint(self) -> None:
        """
        A relay_key that starts like a fingerprint but is not one is
        refused, saying what a fingerprint looks like.
        """
        for bad in ("sha256:abc", "sha256:" + "zz" * 32, "sha256:" + "ab" * 33):
            self.assertConfigError(
                skeletonConfig, self.withKeys(relay_key=bad), "skel.toml",
                "skeleton.relay_key",
                f"not a fingerprint: {bad!r} (expected sha256: and 64 hex digits)",
            )

    def test_pinNeedsKey(self) -> None:
        """Pinning without a relay_key is refused."""
        self.assertConfigError(
            skeletonConfig, self.withKeys(relay_key=None), "skel.toml",
            "skeleton.relay_key", "missing",
        )

    def test_verifyValues(self) -> None:
        """relay_verify is "pin" or "hostname", nothing else."""
        for good in ("pin", "hostname"):
            config = skeletonConfig(parseToml(self.withKeys(relay_verify=good)), "s")
            self.assertEqual(config.access.relay_verify, good)
        for bad in ("ca", "", "PIN", "none"):
            self.assertConfigError(
                skeletonConfig, self.withKeys(relay_verify=bad), "skel.toml",
                "skeleton.relay_verify", 'must be "pin" or "hostname"',
            )
        self.assertConfigError(
            skeletonConfig, SKELETON.replace('name = "edge"', "relay_verify = true"),
            "skel.toml", "skeleton.relay_verify", "must be a string, not True",
        )

    def test_hostnameNameFromRelay(self) -> None:
        """
        Checking the host name needs no relay_key; the name is the relay
        endpoint's host, in either way of writing it, unless relay_name
        says otherwise.
        """
        for relay in ("tcp:relay.example:7001", "tcp:host=relay.example:port=7001"):
            text = self.withKeys(relay=relay, relay_verify="hostname", relay_key=None)
            config = skeletonConfig(parseToml(text), "s")
            self.assertEqual(
                config.access,
                access(relay=relay, relay_verify="hostname", relay_key=None),
            )
        text = self.withKeys(relay_verify="hostname", relay_name="relay.other")
        config = skeletonConfig(parseToml(text), "s")
        self.assertEqual(config.access.relay_name, "relay.other")

    def test_hostnameNeedsName(self) -> None:
        """
        Checking the host name of a relay reached by an endpoint without a
        host (a UNIX socket) needs relay_name.
        """
        text = self.withKeys(relay="unix:/run/relay.sock", relay_verify="hostname")
        self.assertConfigError(
            skeletonConfig, text, "skel.toml", "skeleton.relay_name",
            'needed with relay_verify = "hostname"',
        )
        text = self.withKeys(
            relay="unix:/run/relay.sock", relay_verify="hostname", relay_name="relay.example"
        )
        config = skeletonConfig(parseToml(text), "s")
        self.assertEqual(config.access.relay_name, "relay.example")

    def test_loginRequired(self) -> None:
        """A user and a password file must be given."""
        for key in ("user", "password_file"):
            self.assertConfigError(
                skeletonConfig, self.withKeys(**{key: None}), "skel.toml",
                f"skeleton.{key}", "missing",
            )

    def test_clientAlike(self) -> None:
        """A client's [client] is checked the same way, by its own key names."""
        self.assertConfigError(
            clientConfig, CLIENT.replace(FINGERPRINT, "sha256:1"), "client.toml",
            "client.relay_key",
            "not a fingerprint: 'sha256:1' (expected sha256: and 64 hex digits)",
        )
        text = CLIENT.replace(f'relay_key = "{FINGERPRINT}"', 'relay_verify = "hostname"')
        config = clientConfig(parseToml(text), "/home/u/client.toml")
        self.assertEqual(
            config.access,
            access(
                relay="tcp:relay.example:7000",
                user="laptop",
                password_file="/home/u/laptop.password",
                relay_key=None,
                relay_verify="hostname",
            ),
        )


class HostOfTests(SynchronousTestCase):
    """L{hostOf}, the host name a relay endpoint's certificate is checked for."""

    def test_examples(self) -> None:
        """The host of the endpoint kinds that have one; None for the others."""
        for endpoint, host in [
            ("tcp:relay.example:7001", "relay.example"),
            ("tcp:host=relay.example:port=7001", "relay.example"),
            ("tcp:port=7001:host=relay.example", "relay.example"),
            ("tcp:192.0.2.7:7001:timeout=5", "192.0.2.7"),
            ("tcp6:relay.example:7001", "relay.example"),
            ("tls:relay.example:7001", "relay.example"),
            ("tor:host=relay.example:port=7001", "relay.example"),
            ("unix:/run/relay.sock", None),
            ("tcp:port=7001", None),
        ]:
            self.assertEqual(hostOf(endpoint), host, endpoint)

    @settings(deadline=None)
    @given(
        host=st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}\Z"),
        port=st.integers(min_value=1, max_value=65535),
        named=st.booleans(),
    )
    def test_hostBack(self, host: str, port: int, named: bool) -> None:
        """Any DNS name in a C{tcp:} endpoint, either way of writing it, comes back."""
        endpoint = f"tcp:host={host}:port={port}" if named else f"tcp:{host}:{port}"
        self.assertEqual(hostOf(endpoint), host)

    def test_ipv6(self) -> None:
        """An IPv6 address, escaped as endpoint strings need, comes back unescaped."""
        self.assertEqual(hostOf("tcp6:\\:\\:1:7001"), "::1")
        self.assertEqual(hostOf("tcp6:host=2001\\:db8\\:\\:7:port=7001"), "2001:db8::7")



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
        """
        Every string that breaks the rule for ids raises L{BadRequest},
        which shows it quoted (cut short past 40 characters).
        """
        error = self.assertRaises(BadRequest, checkServerId, serverId)
        self.assertIn(printable(serverId, 40), str(error))

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


@functools.cache
def _relayKeyPair() -> tuple[bytes, bytes]:
    """A relay key and certificate (PEM), made once per test run."""
    return generate(["relay.example"])


class FilesMixin:
    """Real files for the options, which read them at once."""

    def folder(self) -> str:
        """A new empty folder, by its absolute name."""
        path = os.path.abspath(self.mktemp())  # type: ignore[attr-defined]
        os.makedirs(path)
        return path

    def relayFiles(self, folder: str) -> tuple[str, str, str]:
        """relay.key, relay.pem and users (alice) in C{folder}."""
        key, cert = _relayKeyPair()
        paths = tuple(os.path.join(folder, name) for name in ("relay.key", "relay.pem", "users"))
        writePrivate(paths[0], key)
        writePrivate(paths[1], cert)
        saveUsers(paths[2], {"alice": User.create("alice", "pw", Rights())})
        return paths  # type: ignore[return-value]

    def secret(self, folder: str, name: str = "web.secret") -> str:
        """A new secret file in C{folder}, readable by its owner only."""
        path = os.path.join(folder, name)
        generateSecret(path)
        return path

    def password(self, folder: str, name: str = "password") -> str:
        path = os.path.join(folder, name)
        writePrivate(path, b"correct horse\n")
        return path


class RelayOptionsTests(FilesMixin, SynchronousTestCase):
    """C{twistd relay}'s options, loaded."""

    def setUp(self) -> None:
        self.dir = self.folder()
        self.key, self.cert, self.users = self.relayFiles(self.dir)
        self.files = ["--key", self.key, "--cert", self.cert, "--users", self.users]

    def parse(self, argv: list[str]) -> LoadedRelay:
        """The configuration C{argv} gives, loaded as the role loads it."""
        options = relayTap.Options()
        options.parseOptions(argv)
        return options.load()

    def test_flagsOnly(self) -> None:
        """
        Flags alone make a complete relay configuration, and the identity
        and the users file are loaded from the files they name.
        """
        loaded = self.parse(
            ["--clients", "tcp:7000", "--skeletons", "tcp:7001", "--join-timeout", "2"]
            + self.files
        )
        self.assertEqual(
            loaded.config,
            RelayConfig(
                clients="tcp:7000:backlog=1024",
                skeletons="tcp:7001:backlog=1024",
                key=self.key,
                cert=self.cert,
                users=self.users,
                join_timeout=2.0,
            ),
        )
        self.assertEqual(loaded.identity.fingerprint, fingerprintOfFile(self.cert))
        self.assertEqual(list(loaded.users.users), ["alice"])

    def test_webFlag(self) -> None:
        """C{--web} gives the endpoint that publishes the certificate."""
        loaded = self.parse(
            ["--clients", "tcp:7000", "--skeletons", "tcp:7001", "--web", "tcp:7080"] + self.files
        )
        self.assertEqual(loaded.config.web, "tcp:7080:backlog=1024")

    def test_missing(self) -> None:
        """A missing address is a configuration error naming the key."""
        error = self.assertRaises(ConfigError, self.parse, ["--clients", "tcp:7000"] + self.files)
        self.assertEqual(str(error), "command line: relay.skeletons: missing")

    def test_missingFiles(self) -> None:
        """Without the key, the certificate or the users file, the relay does not start."""
        for flag, key in (("--key", "key"), ("--cert", "cert"), ("--users", "users")):
            argv = ["--clients", "tcp:7000", "--skeletons", "tcp:7001"]
            at = self.files.index(flag)
            argv += self.files[:at] + self.files[at + 2 :]
            error = self.assertRaises(ConfigError, self.parse, argv)
            self.assertEqual(str(error), f"command line: relay.{key}: missing")

    def test_keyFileMissing(self) -> None:
        """A key file that does not exist is a configuration error naming it."""
        missing = os.path.join(self.dir, "nope.key")
        argv = ["--clients", "tcp:7000", "--skeletons", "tcp:7001"] + self.files
        argv[argv.index(self.key)] = missing
        error = self.assertRaises(ConfigError, self.parse, argv)
        self.assertEqual(str(error), f"command line: relay.key: {missing}: No such file or directory")

    def test_keyAndCertificateDisagree(self) -> None:
        """A certificate of another key is a configuration error naming both files."""
        other = os.path.join(self.dir, "other.pem")
        writePrivate(other, generate(["relay.example"])[1])
        argv = ["--clients", "tcp:7000", "--skeletons", "tcp:7001"] + self.files
        argv[argv.index(self.cert)] = other
        error = self.assertRaises(ConfigError, self.parse, argv)
        self.assertEqual(
            str(error), f"command line: relay.key: {self.key} and {other} do not belong together"
        )

    def test_badUsersFile(self) -> None:
        """A users file that does not parse is a configuration error naming it and the line."""
        with open(self.users, "w") as f:
            f.write("alice\n")
        error = self.assertRaises(
            ConfigError,
            self.parse,
            ["--clients", "tcp:7000", "--skeletons", "tcp:7001"] + self.files,
        )
        self.assertEqual(
            str(error),
            f"command line: relay.users: {self.users}, line 1: expected NAME VERIFIER [RIGHTS]",
        )

    def test_outOfRange(self) -> None:
        """A join timeout out of range is a configuration error."""
        error = self.assertRaises(
            ConfigError,
            self.parse,
            ["--clients", "tcp:7000", "--skeletons", "tcp:7001", "--join-timeout", "0"]
            + self.files,
        )
        self.assertEqual(
            str(error), "command line: relay.join_timeout: must be between 0.1 and 3600"
        )

    def test_notANumber(self) -> None:
        """A join timeout that is not a number is a usage error naming the flag and the value."""
        error = self.assertRaises(
            UsageError,
            self.parse,
            ["--clients", "tcp:7000", "--skeletons", "tcp:7001", "--join-timeout", "soon"],
        )
        self.assertIn("--join-timeout must be a number, not 'soon'", str(error))

    def test_badEndpoint(self) -> None:
        """An endpoint that does not parse is a configuration error with the reason."""
        error = self.assertRaises(
            ConfigError,
            self.parse,
            ["--clients", "tpc:7000", "--skeletons", "tcp:7001"] + self.files,
        )
        self.assertEqual(
            str(error),
            "command line: relay.clients: not a valid listening endpoint 'tpc:7000':"
            " Unknown endpoint type: 'tpc'",
        )

    def test_fileAndFlags(self) -> None:
        """
        With a file and flags, the flags win and the file fills in the
        rest, its file names taken from the file's folder; errors in the
        file name the file.
        """
        path = os.path.join(self.dir, "relay.toml")
        with open(path, "w") as f:
            f.write(RELAY + "max_pool = 5\n")
        loaded = self.parse(["--config", path, "--clients", "tcp:9000"])
        self.assertEqual(
            loaded.config,
            RelayConfig(
                clients="tcp:9000:backlog=1024",
                skeletons="tcp:7001:backlog=1024",
                key=self.key,
                cert=self.cert,
                users=self.users,
                max_pool=5,
            ),
        )
        with open(path, "w") as f:
            f.write(RELAY + "colour = 'blue'\n")
        error = self.assertRaises(ConfigError, self.parse, ["--config", path])
        self.assertEqual(str(error), f"{path}: relay.colour: unknown key")

    def test_flagFilesRelativeToCwd(self) -> None:
        """
        A file named by a flag is relative to the current folder, as on any
        command line, even when a config file elsewhere gives the rest.
        """
        elsewhere = self.folder()
        path = os.path.join(elsewhere, "relay.toml")
        with open(path, "w") as f:
            f.write(
                RELAY.replace('"relay.key"', f'"{self.key}"')
                .replace('"relay.pem"', f'"{self.cert}"')
                .replace('"users"', '"no-such-users"')
            )
        loaded = self.parse(["--config", path, "--users", os.path.relpath(self.users)])
        self.assertEqual(os.path.abspath(loaded.config.users), self.users)


    def test_missingFile(self) -> None:
        """A config file that does not exist is a configuration error with its path."""
        path = self.mktemp()
        error = self.assertRaises(ConfigError, self.parse, ["-c", path])
        self.assertEqual(str(error), f"{path}: (file): No such file or directory")


class SkeletonOptionsTests(FilesMixin, SynchronousTestCase):
    """C{twistd skeleton}'s options, loaded."""

    def setUp(self) -> None:
        self.dir = self.folder()
        self.web = self.secret(self.dir, "web.secret")
        self.db = self.secret(self.dir, "db.secret")
        self.pw = self.password(self.dir)
        self.password(self.dir, "edge.password")
        self.access = ["--relay-key", FINGERPRINT, "--user", "edge", "--password-file", self.pw]

    def parse(self, argv: list[str]) -> LoadedSkeleton:
        """The configuration C{argv} gives, loaded as the role loads it."""
        options = skeletonTap.Options()
        options.parseOptions(argv)
        return options.load()

    def test_flagsOnly(self) -> None:
        """
        Flags alone make a complete skeleton configuration; a server from
        the command line is described by its id, and its secret is read
        from the file C{--secret} gives for its id.
        """
        loaded = self.parse(
            [
                "--relay", "tcp:relay.example:7001",
                *self.access,
                "--server", "web=tcp:127.0.0.1:8000",
                "--server", "db=unix:/run/db.sock",
                "--secret", f"web={self.web}",
                "--secret", f"db={self.db}",
                "--name", "edge", "--pool", "0",
            ]
        )
        self.assertEqual(
            loaded.config,
            SkeletonConfig(
                access=access(password_file=self.pw),
                name="edge",
                servers=(
                    ServerConfig("web", "tcp:127.0.0.1:8000", self.web, "web"),
                    ServerConfig("db", "unix:/run/db.sock", self.db, "db"),
                ),
                pool=0,
            ),
        )
        self.assertEqual(loaded.secrets, {"web": loadSecret(self.web), "db": loadSecret(self.db)})
        self.assertNotEqual(loaded.secrets["web"], loaded.secrets["db"])

    def test_secretFilledById(self) -> None:
        """
        C{--secret} flags find their server by id, whatever their order
        and wherever they stand among the C{--server} flags.
        """
        loaded = self.parse(
            [
                "--relay", "tcp:h:7001", *self.access,
                "--secret", f"db={self.db}",
                "--server", "web=tcp:h:1",
                "--secret", f"web={self.web}",
                "--server", "db=tcp:h:2",
            ]
        )
        self.assertEqual(
            [(s.id, s.secret_file) for s in loaded.config.servers],
            [("web", self.web), ("db", self.db)],
        )

    def test_secretMissing(self) -> None:
        """A server without a secret is a configuration error naming the key."""
        error = self.assertRaises(
            ConfigError,
            self.parse,
            ["--relay", "tcp:h:7001", *self.access, "--server", "web=tcp:h:1"],
        )
        self.assertEqual(str(error), "command line: server[0].secret_file: missing")

    def test_secretWithoutEquals(self) -> None:
        """C{--secret} without C{=} is a usage error naming the flag."""
        error = self.assertRaises(UsageError, self.parse, ["--secret", self.web])
        self.assertTrue(str(error).startswith(f"--secret: {self.web}: expected ID="), str(error))

    def test_secretWithoutEqualsShowsForm(self) -> None:
        """The usage error for C{--secret} without C{=} shows the flag's own form."""
        error = self.assertRaises(UsageError, self.parse, ["--secret", "web.secret"])
        self.assertEqual(str(error), "--secret: web.secret: expected ID=FILE")


    def test_secretForNoServer(self) -> None:
        """A C{--secret} for an id no server has is a configuration error, not ignored."""
        error = self.assertRaises(
            ConfigError,
            self.parse,
            [
                "--relay", "tcp:h:7001", *self.access,
                "--server", "web=tcp:h:1",
                "--secret", f"web={self.web}",
                "--secret", f"wbe={self.db}",
            ],
        )
        self.assertIn("wbe", str(error))


    def test_groupReadableSecret(self) -> None:
        """
        A secret file everyone can read stops the skeleton with a usage
        error that names the file and says how to fix it (its group may
        read it: L{relaynat.test.test_files} has the rule).
        """
        for mode in (0o644, 0o604):
            os.chmod(self.web, mode)
            error = self.assertRaises(
                ConfigError,
                self.parse,
                [
                    "--relay", "tcp:h:7001", *self.access,
                    "--server", "web=tcp:h:1", "--secret", f"web={self.web}",
                ],
            )
            self.assertTrue(
                str(error).startswith(f"command line: server[0].secret_file: {self.web}: "),
                str(error),
            )
            self.assertIn(f"readable by everyone (mode {mode:04o}); run chmod", str(error))

    def test_unreadableSecret(self) -> None:
        """
        A secret file that cannot be read (missing, a folder) stops the
        skeleton with a configuration error that names the file and the reason.
        """
        missing = os.path.join(self.dir, "nope.secret")
        for path, reason in ((missing, "No such file or directory"), (self.dir, "Is a directory")):
            error = self.assertRaises(
                ConfigError,
                self.parse,
                [
                    "--relay", "tcp:h:7001", *self.access,
                    "--server", "web=tcp:h:1", "--secret", f"web={path}",
                ],
            )
            self.assertEqual(str(error), f"command line: server[0].secret_file: {path}: {reason}")

    def test_secretWithoutReadPermission(self) -> None:
        """A secret file its reader may not open is a configuration error naming it."""
        if os.getuid() == 0:
            raise self.skipTest("root reads files whatever their mode")
        os.chmod(self.web, 0o000)
        error = self.assertRaises(
            ConfigError,
            self.parse,
            ["--relay", "tcp:h:7001", *self.access, "--server", "web=tcp:h:1",
             "--secret", f"web={self.web}"],
        )
        self.assertEqual(
            str(error), f"command line: server[0].secret_file: {self.web}: Permission denied"
        )

    def test_notASecret(self) -> None:
        """A file that holds no secret is a configuration error naming it."""
        with open(self.web, "w") as f:
            f.write("not base64 at all!\n")
        error = self.assertRaises(
            ConfigError,
            self.parse,
            ["--relay", "tcp:h:7001", *self.access, "--server", "web=tcp:h:1",
             "--secret", f"web={self.web}"],
        )
        self.assertIn(f"server[0].secret_file: {self.web}: not a secret file", str(error))

    def test_relayVerifyFlags(self) -> None:
        """
        C{--relay-verify hostname} needs no C{--relay-key} and checks the
        relay endpoint's host; another value is a configuration error.
        """
        login = ["--user", "edge", "--password-file", self.pw]
        server = ["--server", "web=tcp:h:1", "--secret", f"web={self.web}"]
        loaded = self.parse(
            ["--relay", "tcp:relay.example:7001", "--relay-verify", "hostname", *login, *server]
        )
        self.assertEqual(
            loaded.config.access,
            access(password_file=self.pw, relay_key=None, relay_verify="hostname"),
        )
        error = self.assertRaises(
            ConfigError,
            self.parse,
            ["--relay", "tcp:relay.example:7001", "--relay-verify", "ca", *login, *server],
        )
        self.assertEqual(
            str(error), 'command line: skeleton.relay_verify: must be "pin" or "hostname"'
        )

    def test_relayKeyFlag(self) -> None:
        """
        C{--relay-key} takes a fingerprint, or a certificate file relative
        to the current folder; a malformed fingerprint is a configuration error.
        """
        rest = ["--relay", "tcp:h:7001", "--user", "edge", "--password-file", self.pw,
                "--server", "web=tcp:h:1", "--secret", f"web={self.web}"]
        os.makedirs("certs", exist_ok=True)
        writePrivate(os.path.join("certs", "relay.pem"), _relayKeyPair()[1])
        loaded = self.parse(["--relay-key", "certs/relay.pem", *rest])
        # A flag's file name is relative to where the command runs.
        self.assertEqual(loaded.config.access.relay_key, os.path.abspath(os.path.join("certs", "relay.pem")))
        loaded = self.parse(["--relay-key", FINGERPRINT.upper().replace("SHA", "sha"), *rest])
        self.assertEqual(loaded.config.access.relay_key, FINGERPRINT)
        error = self.assertRaises(ConfigError, self.parse, ["--relay-key", "sha256:12", *rest])
        self.assertEqual(
            str(error),
            "command line: skeleton.relay_key: not a fingerprint: 'sha256:12'"
            " (expected sha256: and 64 hex digits)",
        )

    def test_serverWithoutEquals(self) -> None:
        """C{--server} without C{=} is a usage error that shows the form."""
        error = self.assertRaises(
            UsageError, self.parse, ["--relay", "tcp:h:7001", "--server", "web"]
        )
        self.assertEqual(str(error), "--server: web: expected ID=ENDPOINT")

    def test_badServerId(self) -> None:
        """A malformed id in C{--server} is a configuration error."""
        error = self.assertRaises(
            ConfigError, self.parse, ["--relay", "tcp:h:7001", "--server", "w b=tcp:h:1"]
        )
        self.assertTrue(
            str(error).startswith("command line: server[0].id: bad server id 'w b'"),
            str(error),
        )

    def test_badTarget(self) -> None:
        """A target that does not parse is a configuration error."""
        error = self.assertRaises(
            ConfigError, self.parse, ["--relay", "tcp:h:7001", "--server", "web=nope"]
        )
        self.assertEqual(
            str(error),
            "command line: server[0].target: not a valid connecting endpoint 'nope':"
            " Unknown endpoint type: 'nope'",
        )

    def test_noServer(self) -> None:
        """A skeleton with no server is a configuration error."""
        error = self.assertRaises(ConfigError, self.parse, ["--relay", "tcp:h:7001"])
        self.assertEqual(
            str(error), "command line: server: a skeleton needs at least one [[server]]"
        )

    def test_duplicateServer(self) -> None:
        """The same id twice on the command line is a configuration error."""
        error = self.assertRaises(
            ConfigError,
            self.parse,
            ["--relay", "tcp:h:7001", "--server", "web=tcp:h:1", "--server", "web=tcp:h:2",
             "--secret", f"web={self.web}"],
        )
        self.assertEqual(str(error), "command line: server: server id 'web' appears twice")

    def test_poolOutOfRange(self) -> None:
        """A pool out of range is a configuration error."""
        error = self.assertRaises(
            ConfigError,
            self.parse,
            ["--relay", "tcp:h:7001", *self.access, "--server", "web=tcp:h:1",
             "--secret", f"web={self.web}", "--pool", "1001"],
        )
        self.assertEqual(str(error), "command line: skeleton.pool: must be between 0 and 1000")

    def test_fileAndFlags(self) -> None:
        """
        Flags override the file's keys and add servers after the file's;
        what the flags do not give comes from the file, its file names taken
        from the file's folder.
        """
        path = os.path.join(self.dir, "skeleton.toml")
        with open(path, "w") as f:
            f.write(SKELETON.replace('name = "edge"', 'name = "edge"\npool = 3'))
        loaded = self.parse(
            ["--config", path, "--pool", "5", "--server", "db=tcp:127.0.0.1:5432",
             "--secret", f"db={self.db}"]
        )
        self.assertEqual(loaded.config.pool, 5)
        self.assertEqual(loaded.config.name, "edge")
        self.assertEqual(
            loaded.config.access,
            access(password_file=os.path.join(self.dir, "edge.password")),
        )
        self.assertEqual(
            [(s.id, s.secret_file) for s in loaded.config.servers],
            [("web", self.web), ("db", self.db)],
        )
        self.assertEqual(loaded.secrets["web"], loadSecret(self.web))

    def test_secretFlagOverridesFile(self) -> None:
        """A C{--secret} for a server of the file replaces the file's secret_file."""
        path = os.path.join(self.dir, "skeleton.toml")
        with open(path, "w") as f:
            f.write(SKELETON)
        loaded = self.parse(["--config", path, "--secret", f"web={self.db}"])
        self.assertEqual(loaded.config.servers[0].secret_file, self.db)
        self.assertEqual(loaded.secrets, {"web": loadSecret(self.db)})

    def test_secretFlagRelativeToCwd(self) -> None:
        """
        A relative C{--secret} file is found from the current folder, even
        with a config file in another folder.
        """
        elsewhere = self.folder()
        self.password(elsewhere, "edge.password")
        path = os.path.join(elsewhere, "skeleton.toml")
        with open(path, "w") as f:
            f.write(SKELETON)
        loaded = self.parse(["--config", path, "--secret", f"web={os.path.relpath(self.web)}"])
        self.assertEqual(os.path.abspath(loaded.config.servers[0].secret_file), self.web)


    def test_flagDuplicatesFileServer(self) -> None:
        """A C{--server} reusing an id of the file is refused, naming the file."""
        path = os.path.join(self.dir, "skeleton.toml")
        with open(path, "w") as f:
            f.write(SKELETON)
        error = self.assertRaises(
            ConfigError,
            self.parse,
            ["--config", path, "--server", "web=tcp:h:1", "--secret", f"web={self.web}"],
        )
        self.assertEqual(str(error), f"{path}: server: server id 'web' appears twice")


class ClientOptionsTests(FilesMixin, SynchronousTestCase):
    """C{twistd client}'s options, loaded."""

    def setUp(self) -> None:
        self.dir = self.folder()
        self.web = self.secret(self.dir, "web.secret")
        self.db = self.secret(self.dir, "db.secret")
        self.pw = self.password(self.dir)
        self.password(self.dir, "laptop.password")
        self.access = ["--relay-key", FINGERPRINT, "--user", "laptop", "--password-file", self.pw]

    def parse(self, argv: list[str]) -> LoadedClient:
        """The configuration C{argv} gives, loaded as the role loads it."""
        options = clientTap.Options()
        options.parseOptions(argv)
        return options.load()

    def test_flagsOnly(self) -> None:
        """Flags alone make a complete client configuration, secrets read."""
        loaded = self.parse(
            [
                "--relay", "tcp:relay.example:7000",
                *self.access,
                "--tunnel", "web=tcp:8080:interface=127.0.0.1",
                "--secret", f"web={self.web}",
            ]
        )
        self.assertEqual(
            loaded.config,
            ClientConfig(
                access=access(
                    relay="tcp:relay.example:7000", user="laptop", password_file=self.pw
                ),
                tunnels=(
                    TunnelConfig("web", "tcp:8080:interface=127.0.0.1:backlog=1024", self.web),
                ),
            ),
        )
        self.assertEqual(loaded.secrets, {"web": loadSecret(self.web)})

    def test_secretByServer(self) -> None:
        """
        C{--secret} is given by server id: two tunnels to one server share
        it, a tunnel to another server has its own.
        """
        loaded = self.parse(
            [
                "--relay", "tcp:h:7000", *self.access,
                "--tunnel", "web=tcp:8080", "--tunnel", "web=tcp:8081",
                "--tunnel", "db=tcp:5432",
                "--secret", f"db={self.db}", "--secret", f"web={self.web}",
            ]
        )
        self.assertEqual(
            [(t.server, t.secret_file) for t in loaded.config.tunnels],
            [("web", self.web), ("web", self.web), ("db", self.db)],
        )
        self.assertEqual(loaded.secrets, {"web": loadSecret(self.web), "db": loadSecret(self.db)})

    def test_secretMissing(self) -> None:
        """A tunnel without a secret is a configuration error naming the key."""
        error = self.assertRaises(
            ConfigError, self.parse, ["--relay", "tcp:h:7000", *self.access, "--tunnel", "web=tcp:1"]
        )
        self.assertEqual(str(error), "command line: tunnel[0].secret_file: missing")

    def test_groupReadableSecret(self) -> None:
        """A secret file everyone can read is a configuration error naming the file."""
        os.chmod(self.web, 0o644)
        error = self.assertRaises(
            ConfigError,
            self.parse,
            ["--relay", "tcp:h:7000", *self.access, "--tunnel", "web=tcp:1",
             "--secret", f"web={self.web}"],
        )
        self.assertTrue(
            str(error).startswith(f"command line: tunnel[0].secret_file: {self.web}: "), str(error)
        )
        self.assertIn(f"run chmod 640 {self.web}", str(error))

    def test_tunnelWithoutEquals(self) -> None:
        """C{--tunnel} without C{=} is a usage error that shows the form."""
        error = self.assertRaises(
            UsageError, self.parse, ["--relay", "tcp:h:7000", "--tunnel", "tcp:8080"]
        )
        self.assertEqual(str(error), "--tunnel: tcp:8080: expected ID=ENDPOINT")

    def test_noTunnel(self) -> None:
        """A client with no tunnel is a configuration error."""
        error = self.assertRaises(ConfigError, self.parse, ["--relay", "tcp:h:7000", *self.access])
        self.assertEqual(
            str(error), "command line: tunnel: a client needs at least one [[tunnel]]"
        )

    def test_noRelay(self) -> None:
        """A client with no relay is a configuration error."""
        error = self.assertRaises(
            ConfigError, self.parse, ["--tunnel", "web=tcp:8080", "--secret", f"web={self.web}"]
        )
        self.assertEqual(str(error), "command line: client.relay: missing")

    def test_fileAndFlags(self) -> None:
        """
        C{--relay} overrides the file's relay; tunnels add to the file's;
        the file's file names are taken from its folder.
        """
        path = os.path.join(self.dir, "client.toml")
        with open(path, "w") as f:
            f.write(CLIENT)
        loaded = self.parse(
            ["--config", path, "--relay", "tcp:other.example:7000", "--tunnel", "db=tcp:5432",
             "--secret", f"db={self.db}"]
        )
        self.assertEqual(loaded.config.access.relay, "tcp:other.example:7000")
        self.assertEqual(
            loaded.config.access.password_file, os.path.join(self.dir, "laptop.password")
        )
        self.assertEqual(
            [(t.server, t.listen, t.secret_file) for t in loaded.config.tunnels],
            [
                ("web", "tcp:8080:interface=127.0.0.1:backlog=1024", self.web),
                ("db", "tcp:5432:backlog=1024", self.db),
            ],
        )
