"""
Configuration of the three roles: TOML files and command-line flags parsed
into frozen objects, every key checked, every error naming where and why.

Every address is a Twisted endpoint string, checked here by parsing it (no
socket is opened), so C{tcp:}, C{unix:}, C{systemd:} and txtorcon's C{tor:}
work alike.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import attrs
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.testing import MemoryReactor

from relaynat.caps import Limits
from relaynat.identity import IdentityError, checkFingerprint
from relaynat.names import checkServerId, checkText
from relaynat.wire import BadRequest

#: Twisted listens with a backlog of 50, which drops connections when a
#: burst of clients arrives at once; a relay is such a server.
DEFAULT_BACKLOG = 1024


#: What a role's configuration is called in errors when it has no file, only flags.
COMMAND_LINE = "command line"


class ConfigError(Exception):
    """A configuration value is missing or wrong: says where, which and why."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        super().__init__(f"{source}: {key}: {problem}")
        self.source, self.key, self.problem = source, key, problem

    @property
    def lines(self) -> list[str]:
        """What to say: one line per problem."""
        return [str(self)]


class ConfigErrors(ConfigError):
    """Several problems at once (the files a configuration names): one line each."""

    def __init__(self, errors: list[ConfigError]) -> None:
        Exception.__init__(self, "\n".join(str(e) for e in errors))
        first = errors[0]
        self.source, self.key, self.problem = first.source, first.key, first.problem
        self.errors = errors

    @property
    def lines(self) -> list[str]:
        return [str(e) for e in self.errors]


@attrs.frozen
class RelayConfig:
    """
    C{[relay]}: where to listen for clients (X), skeletons (Y) and, if
    given, the web page that publishes the relay's certificate; the relay's
    key, certificate and users file.
    """

    clients: str
    skeletons: str
    key: str
    cert: str
    users: str
    web: str | None = None
    join_timeout: float = 10.0
    max_pool: int = 64
    session_lifetime: float = 86400.0
    limits: Limits = Limits()
    metrics_allow: tuple[str, ...] = ("127.0.0.0/8", "::1/128")


@attrs.frozen
class RelayAccess:
    """
    How a skeleton or client reaches the relay and trusts it, and who it
    logs in as: C{relay_key} pins the relay's key (a C{sha256:} fingerprint,
    or a file with the relay's certificate); C{relay_verify = "hostname"}
    checks a CA-issued certificate for C{relay_name} instead.
    """

    relay: str
    user: str
    password_file: str
    relay_key: str | None = None
    relay_verify: str = "pin"
    relay_ca: str | None = None
    relay_name: str | None = None


@attrs.frozen
class ServerConfig:
    """A C{[[server]]} a skeleton fronts, and the file with its secret."""

    id: str
    target: str
    secret_file: str
    description: str = ""
    #: Whether the tunnel's bytes are sealed end to end (see seal.py); off
    #: for protocols that encrypt themselves, where the ends splice raw.
    seal: bool = True


@attrs.frozen
class SkeletonConfig:
    """C{[skeleton]} and its C{[[server]]}s."""

    access: RelayAccess
    name: str
    servers: tuple[ServerConfig, ...]
    pool: int = 1
    metrics: str | None = None


@attrs.frozen
class TunnelConfig:
    """A C{[[tunnel]]}: a local listener carried to a server."""

    server: str
    listen: str
    secret_file: str


@attrs.frozen
class ClientConfig:
    """C{[client]} and its C{[[tunnel]]}s."""

    access: RelayAccess
    tunnels: tuple[TunnelConfig, ...] = ()
    metrics: str | None = None


def parseToml(text: str, source: str = "<string>") -> dict[str, Any]:
    """The TOML document in C{text}."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(source, "(syntax)", str(e)) from e


def splitAssignment(flag: str, value: str, form: str = "ID=ENDPOINT") -> tuple[str, str]:
    """
    Split a flag's C{ID=ENDPOINT} value at the first C{=}: endpoint strings
    contain C{=} themselves (C{tcp:8080:interface=127.0.0.1}).
    """
    name, sep, rest = value.partition("=")
    if not sep or not name or not rest:
        raise ConfigError(flag, value, f"expected {form}")
    return name, rest


def relayConfig(document: dict[str, Any], source: str) -> RelayConfig:
    """
    Check and build a relay's configuration from a parsed document; file
    names are relative to the folder of the file C{source}.
    """
    _onlyTables(document, source, {"relay"}, set())
    table = _Table(document.get("relay", {}), source, "relay")
    config = RelayConfig(
        clients=table.endpoint("clients", server=True),
        skeletons=table.endpoint("skeletons", server=True),
        key=table.path("key"),
        cert=table.path("cert"),
        users=table.path("users"),
        web=table.endpoint("web", server=True, required=False),
        join_timeout=table.number("join_timeout", 10.0, low=0.1, high=3600),
        max_pool=int(table.number("max_pool", 64, low=0, high=10_000, integer=True)),
        session_lifetime=table.number("session_lifetime", 86400.0, low=60, high=365 * 86400),
        limits=_limits(table),
        metrics_allow=_networks(table, "metrics_allow", ("127.0.0.0/8", "::1/128")),
    )
    table.done()
    return config


#: The bounds of each of L{Limits}' keys in C{[relay]}: (low, high).
_LIMIT_BOUNDS: dict[str, tuple[float, float]] = {
    "first_bytes_timeout": (0.1, 3600),
    "handshake_timeout": (0.1, 3600),
    "login_timeout": (0.1, 3600),
    "login_burst": (1, 1_000_000),
    "login_prefix_burst": (1, 1_000_000),
    "login_interval": (0, 86400),
    "login_longest_refusal": (0, 86400),
    "max_unauthenticated": (1, 10_000_000),
    "max_unauthenticated_per_source": (1, 10_000_000),
    "max_pending_per_session": (1, 10_000_000),
    "max_pending_per_user": (1, 10_000_000),
    "max_tunnels_per_user": (1, 10_000_000),
    "max_servers_per_user": (1, 1_000_000),
}


def _networks(table: _Table, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """A list of networks (C{"192.0.2.0/24"}, C{"::1/128"}, or one address)."""
    values = table._take(key, list, list(default))
    networks = []
    for value in values:
        try:
            networks.append(str(ipaddress.ip_network(value, strict=False)))
        except (TypeError, ValueError):
            raise ConfigError(
                table.source, table._key(key), f"{value!r} is not a network such as 10.0.0.0/8"
            ) from None
    return tuple(networks)


def _limits(table: _Table) -> Limits:
    defaults = Limits()
    values: dict[str, Any] = {}
    for field in attrs.fields(Limits):
        low, high = _LIMIT_BOUNDS[field.name]
        default = getattr(defaults, field.name)
        values[field.name] = table.number(
            field.name, default, low=low, high=high, integer=isinstance(default, int)
        )
    return Limits(**values)


def _access(table: _Table) -> RelayAccess:
    verify = table.string("relay_verify", "pin")
    if verify not in ("pin", "hostname"):
        raise ConfigError(table.source, table._key("relay_verify"), 'must be "pin" or "hostname"')
    relay = table.endpoint("relay", server=False)
    access = RelayAccess(
        relay=relay,
        user=table.string("user"),
        password_file=table.path("password_file"),
        relay_key=table.relayKey("relay_key", required=verify == "pin"),
        relay_verify=verify,
        relay_ca=table.path("relay_ca", required=False),
        relay_name=table.string("relay_name", "") or hostOf(relay),
    )
    if verify == "hostname" and not access.relay_name:
        raise ConfigError(
            table.source, table._key("relay_name"), "needed with relay_verify = \"hostname\""
        )
    return access


def hostOf(endpoint: str) -> str | None:
    """The host of a C{tcp:HOST:PORT} or C{tcp:host=HOST:port=PORT} endpoint."""
    kind, _, rest = endpoint.partition(":")
    if kind not in ("tcp", "tcp6", "tls", "tor"):
        return None
    for i, part in enumerate(_unescapedParts(rest)):
        if part.startswith("host="):
            return part[len("host="):]
        if i == 0 and "=" not in part:
            return part
    return None


def _unescapedParts(text: str) -> list[str]:
    """C{text} split at the colons that endpoint strings do not escape."""
    parts, current, escaped = [], [], False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def skeletonConfig(
    document: dict[str, Any], source: str
) -> SkeletonConfig:
    """Check and build a skeleton's configuration from a parsed document."""
    _onlyTables(document, source, {"skeleton"}, {"server"})
    table = _Table(document.get("skeleton", {}), source, "skeleton")
    servers = _entries(
        document,
        source,
        "server",
        lambda server: ServerConfig(
            id=server.serverId("id"),
            target=server.endpoint("target", server=False),
            secret_file=server.path("secret_file"),
            description=server.text("description", "description", ""),
            seal=server.boolean("seal", True),
        ),
    )
    if not servers:
        raise ConfigError(source, "server", "a skeleton needs at least one [[server]]")
    _unique(source, "server", [s.id for s in servers], "server id")
    config = SkeletonConfig(
        access=_access(table),
        name=table.text("name", "skeleton name", socket.gethostname()),
        pool=int(table.number("pool", 1, low=0, high=1000, integer=True)),
        servers=tuple(servers),
        metrics=table.endpoint("metrics", server=True, required=False),
    )
    table.done()
    return config


def clientConfig(
    document: dict[str, Any], source: str, needTunnels: bool = True
) -> ClientConfig:
    """Check and build a client's configuration from a parsed document."""
    _onlyTables(document, source, {"client"}, {"tunnel"})
    table = _Table(document.get("client", {}), source, "client")
    tunnels = _entries(
        document,
        source,
        "tunnel",
        lambda tunnel: TunnelConfig(
            server=tunnel.serverId("server"),
            listen=tunnel.endpoint("listen", server=True),
            secret_file=tunnel.path("secret_file"),
        ),
    )
    if needTunnels and not tunnels:
        raise ConfigError(source, "tunnel", "a client needs at least one [[tunnel]]")
    _unique(source, "tunnel", [t.listen for t in tunnels], "listen address")
    config = ClientConfig(
        access=_access(table),
        tunnels=tuple(tunnels),
        metrics=table.endpoint("metrics", server=True, required=False),
    )
    table.done()
    return config


def withDefaultBacklog(description: str) -> str:
    """A C{tcp:}/C{tcp6:} listening endpoint with L{DEFAULT_BACKLOG} unless set."""
    kind = description.split(":", 1)[0]
    if kind in ("tcp", "tcp6") and "backlog=" not in description:
        return f"{description}:backlog={DEFAULT_BACKLOG}"
    return description


T = TypeVar("T")


class _Table:
    """One TOML table being read: takes keys off as they are checked."""

    def __init__(self, data: object, source: str, name: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(source, name, "must be a table")
        self.data = dict(data)
        self.source, self.name = source, name
        # Flags' file names are absolute already (relative to where the
        # command runs); a file's are relative to its folder.
        self.base = "." if source in (COMMAND_LINE, "<string>") else os.path.dirname(source)

    def _take(self, key: str, kind: type[T] | tuple[type, ...], default: Any) -> Any:
        if key not in self.data:
            if default is _REQUIRED:
                raise ConfigError(self.source, self._key(key), "missing")
            return default
        value = self.data.pop(key)
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            expected = _NOUNS.get(kind, "a number") if isinstance(kind, type) else "a number"
            raise ConfigError(self.source, self._key(key), f"must be {expected}, not {value!r}")
        return value

    def _key(self, key: str) -> str:
        return f"{self.name}.{key}"

    def string(self, key: str, default: Any = None) -> str:
        """A string; a required one (no C{default}) may not be empty."""
        value: str = self._take(key, str, _REQUIRED if default is None else default)
        if default is None and not value:
            raise ConfigError(self.source, self._key(key), "must not be empty")
        return value

    def text(self, key: str, what: str, default: str) -> str:
        """A name or description: short and printable, as the relay wants it."""
        return _checked(self.source, self._key(key), lambda v: checkText(what, v), self.string(key, default))

    def boolean(self, key: str, default: bool) -> bool:
        return self._take(key, bool, default)  # type: ignore[no-any-return]

    def number(
        self, key: str, default: float, low: float, high: float, integer: bool = False
    ) -> float:
        value = self._take(key, int if integer else (int, float), default)
        if not low <= value <= high:
            raise ConfigError(
                self.source, self._key(key), f"must be between {_plain(low)} and {_plain(high)}"
            )
        return float(value) if not integer else int(value)

    def serverId(self, key: str) -> str:
        value = self.string(key)
        return _checked(self.source, self._key(key), checkServerId, value)

    def endpoint(self, key: str, server: bool, required: bool = True) -> Any:
        value = self.string(key, None if required else "")
        if not value:
            return None
        checkEndpoint(value, server, self.source, self._key(key))
        return withDefaultBacklog(value) if server else value

    def path(self, key: str, required: bool = True) -> Any:
        """A file name, relative to the config file's folder."""
        value = self.string(key, None if required else "")
        if not value:
            return None
        return os.path.normpath(os.path.join(self.base, os.path.expanduser(value)))

    def relayKey(self, key: str, required: bool) -> str | None:
        """A C{sha256:} fingerprint as it is, or a certificate file's name."""
        value = self.string(key, None if required else "")
        if not value:
            return None
        if value.lower().startswith("sha256:"):
            try:
                return checkFingerprint(value)
            except IdentityError as e:
                raise ConfigError(self.source, self._key(key), str(e)) from None
        self.data[key] = value
        return self.path(key)

    def done(self) -> None:
        for key in self.data:
            raise ConfigError(self.source, self._key(key), "unknown key")


_REQUIRED = object()


def _plain(number: float) -> str:
    return str(int(number)) if number == int(number) else str(number)
_NOUNS = {
    str: "a string", int: "a whole number", float: "a number", bool: "true or false",
    list: "a list",
}


#: What a well-formed endpoint of each kind looks like, for error messages.
_EXAMPLES = {
    ("tcp", False): "tcp:relay.example.com:7000",
    ("tcp", True): "tcp:7000 or tcp:7000:interface=127.0.0.1",
    ("tcp6", False): "tcp6:[2001:db8::1]:7000",
    ("tcp6", True): "tcp6:7000",
    ("unix", False): "unix:/run/relaynat.sock",
    ("unix", True): "unix:/run/relaynat.sock",
}


def checkEndpoint(description: str, server: bool, source: str, key: str) -> None:
    """
    Raise L{ConfigError} unless C{description} parses as a listening
    (C{server}) or connecting endpoint.  Nothing is opened: the endpoint is
    built against a reactor that does nothing.
    """
    kind = description.split(":", 1)[0]
    if kind == "onion":
        # txtorcon would start looking for a Tor at parse time.
        return
    parse = serverFromString if server else clientFromString
    try:
        parse(MemoryReactor(), description)
    except Exception as e:
        role = "listening" if server else "connecting"
        why = str(e) or repr(e)
        if kind == "systemd":
            why = "systemd: endpoints work only under systemd socket activation (LISTEN_FDS)"
        missing = re.search(r"missing \d+ required positional arguments?: (.*)", why)
        if missing is not None:
            # Twisted's words name its constructor's arguments; say it as
            # an endpoint string's parts, with an example.
            parts = ", ".join(re.findall(r"'(\w+)'", missing.group(1)))
            example = _EXAMPLES.get((kind, server), "see the README's configuration reference")
            why = f"{kind}: needs its {parts}, e.g. {example}"
        raise ConfigError(source, key, f"not a valid {role} endpoint {description!r}: {why}") from e


def _checked(source: str, key: str, check: Callable[[str], str], value: str) -> str:
    try:
        return check(value)
    except BadRequest as e:
        raise ConfigError(source, key, str(e)) from e


def _onlyTables(
    document: dict[str, Any], source: str, tables: set[str], arrays: set[str]
) -> None:
    for key in document:
        if key not in tables | arrays:
            known = ", ".join(sorted([f"[{t}]" for t in tables] + [f"[[{a}]]" for a in arrays]))
            raise ConfigError(source, key, f"unknown section; expected {known}")


def _entries(
    document: dict[str, Any],
    source: str,
    key: str,
    build: Callable[[_Table], T],
) -> list[T]:
    """Each C{[[key]]} table, built by C{build} and checked for unknown keys."""
    built = []
    for i, entry in enumerate(_arrayOfTables(document, source, key)):
        table = _Table(entry, source, f"{key}[{i}]")
        built.append(build(table))
        table.done()
    return built


def _arrayOfTables(document: dict[str, Any], source: str, key: str) -> list[Any]:
    value = document.get(key, [])
    if not isinstance(value, list):
        raise ConfigError(source, key, f"must be written [[{key}]]")
    return value


def _unique(source: str, key: str, values: Iterable[str], what: str) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ConfigError(source, key, f"{what} {value!r} appears twice")
        seen.add(value)
