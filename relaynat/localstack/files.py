"""
The files of a local stack: the three example configurations of C{conf/}
with every endpoint moved to a free port on 127.0.0.1, and the relay's key,
the users, their passwords (mode 0600) and the servers' secrets they name,
made with the C{relaynat} tools as an operator would.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

import relaynat
from relaynat.cli import parse, runLocal
from relaynat.config import (
    ClientConfig,
    ConfigError,
    RelayConfig,
    SkeletonConfig,
    clientConfig,
    parseToml,
    relayConfig,
    skeletonConfig,
)
from relaynat.identity import CERT_FILE, KEY_FILE
from relaynat.load import readConfig
from relaynat.localstack.errors import LocalStackError
from relaynat.localstack.ports import pickFreePort

#: The checkout this module runs from: C{conf/} lives here, and the children
#: find this source first on their C{PYTHONPATH}.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(relaynat.__file__)))
CONF = os.path.join(REPO, "conf")
ROLES = ("relay", "skeleton", "client")


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

# A field of an endpoint string: runs to the next colon not escaped with \.
_FIELD = re.compile(r"(?:\\.|[^:\\])*")


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
        raise LocalStackError(f"no port in endpoint {':'.join(fields)!r}")
    return positional[index], None


def endpointPort(description: str, listening: bool) -> int:
    """The port of a C{tcp:}/C{tcp6:} endpoint string."""
    fields = _fields(description)
    if fields[0] not in ("tcp", "tcp6"):
        raise LocalStackError(f"a local stack moves only tcp: endpoints, not {description!r}")
    index, keyword = _portField(fields, listening)
    value = fields[index].split("=", 1)[1] if keyword else fields[index]
    try:
        return int(value)
    except ValueError:
        raise LocalStackError(f"bad port {value!r} in endpoint {description!r}") from None


def _escaped(host: str) -> str:
    # An IPv6 address in an endpoint string: its colons escaped.
    return host.replace(":", "\\:")


def _setHost(fields: list[str], listening: bool, host: str) -> None:
    """Name C{host} in C{fields}: the interface a listener binds, or the host a connection reaches."""
    keyword = "interface" if listening else "host"
    for i, f in enumerate(fields):
        if i > 0 and f.startswith(keyword + "="):
            fields[i] = f"{keyword}={_escaped(host)}"
            return
    positional = [i for i, f in enumerate(fields) if i > 0 and "=" not in f]
    portByKeyword = any(f.startswith("port=") for f in fields[1:])
    # Listening: tcp:PORT:INTERFACE. Connecting: tcp:HOST:PORT.
    index = (0 if portByKeyword else 1) if listening else 0
    if len(positional) > index:
        fields[positional[index]] = _escaped(host)
    else:
        fields.append(f"{keyword}={_escaped(host)}")


def moveEndpoint(
    description: str, listening: bool, ports: Mapping[int, int], host: str | None = None
) -> str:
    """
    C{description} with its port replaced through C{ports}, and its host set
    to C{host} if given (the interface a listener binds, the host a connection
    reaches).  With no C{host}, one that listens on every interface is bound
    to 127.0.0.1 instead: nothing a local stack starts is reachable from
    another host unless asked.
    """
    old = endpointPort(description, listening)
    if old not in ports:
        raise LocalStackError(f"no new port given for {old} in endpoint {description!r}")
    fields = _fields(description)
    index, keyword = _portField(fields, listening)
    fields[index] = f"port={ports[old]}" if keyword else str(ports[old])
    if host is not None:
        _setHost(fields, listening, host)
    elif listening and fields[0] == "tcp":
        positional = [f for f in fields[1:] if "=" not in f]
        if not any(f.startswith("interface=") for f in fields) and len(positional) < 2:
            fields.append("interface=127.0.0.1")
    return ":".join(fields)


def moveEndpoints(
    document: Mapping[str, Any],
    ports: Mapping[int, int],
    hosts: Mapping[tuple[str, str], str] | None = None,
) -> dict[str, Any]:
    """
    A copy of a role's configuration, as data, with every endpoint moved by
    L{moveEndpoint}, each to the host C{hosts} gives for its (table, key).
    """
    moved: dict[str, Any] = {}
    for name, table in document.items():
        entries = table if isinstance(table, list) else [table]
        copies = []
        for entry in entries:
            copy = dict(entry)
            for key, value in entry.items():
                if (name, key) in ENDPOINT_KEYS:
                    copy[key] = moveEndpoint(
                        value, ENDPOINT_KEYS[(name, key)], ports, (hosts or {}).get((name, key))
                    )
            copies.append(copy)
        moved[name] = copies if isinstance(table, list) else copies[0]
    return moved


def tomlValue(v: Any) -> str:
    """C{v} (a string, number, boolean, or a list or table of them) as a TOML value."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        # A TOML basic string: JSON's escapes are TOML's for these.
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(tomlValue(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{tomlKey(k)} = {tomlValue(x)}" for k, x in v.items()) + "}"
    raise LocalStackError(f"cannot write {v!r} as TOML")


def tomlKey(key: str) -> str:
    """C{key} as a TOML key: bare when it may be (as people write them), else quoted."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def tomlText(document: Mapping[str, Any]) -> str:
    """
    TOML for the tables and arrays of tables a role's configuration has (a
    section that is neither is written as the value it is).
    """
    lines = []
    for name, table in document.items():
        entries = table if isinstance(table, list) else [table]
        if not all(isinstance(entry, dict) for entry in entries):
            lines += [f"{tomlKey(name)} = {tomlValue(table)}", ""]
            continue
        for entry in entries:
            lines.append(f"[[{tomlKey(name)}]]" if isinstance(table, list) else f"[{tomlKey(name)}]")
            lines += [f"{tomlKey(k)} = {tomlValue(v)}" for k, v in entry.items()]
            lines.append("")
    return "\n".join(lines)


@attrs.frozen
class StackConfigs:
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
    def dir(self) -> str:
        """The folder of the three files, and of every file they name."""
        return os.path.dirname(self.relay)

    @property
    def tunnelUrl(self) -> str:
        return f"http://127.0.0.1:{self.tunnelPorts[0]}/"


def writeConfigs(
    outDir: str,
    targetPort: int,
    confDir: str = CONF,
    *,
    clientsHost: str = "127.0.0.1",
    skeletonsHost: str = "127.0.0.1",
    listenHost: str = "127.0.0.1",
    relay: Mapping[str, Any] | None = None,
    server: Mapping[str, Any] | None = None,
    pickPort: Callable[[], int] = pickFreePort,
) -> StackConfigs:
    """
    Write C{conf/relay.toml}, C{skeleton.toml} and C{client.toml} into
    C{outDir} from their data, with ports X and Y, the web port and every
    tunnel's port moved to ports from C{pickPort}, and every server's target
    moved to C{targetPort}.  The relay listens for clients (and on its web
    port) on C{clientsHost} and for skeletons on C{skeletonsHost}, where the
    client and the skeleton reach it; the tunnels listen on C{listenHost}.
    C{relay} and C{server}: keys set over conf/'s in C{[relay]} and every
    C{[[server]]}.  The files are checked by L{relaynat.config} as the roles
    will check them.
    """
    documents = {role: parseToml(*readConfig(os.path.join(confDir, f"{role}.toml"))) for role in ROLES}
    ports: dict[int, int] = {}

    def move(old: int, new: int) -> int:
        if ports.setdefault(old, new) != new:
            raise LocalStackError(f"port {old} is used for two purposes in {confDir}")
        return new

    relayTable = documents["relay"]["relay"]
    clientsPort = move(endpointPort(relayTable["clients"], True), pickPort())
    skeletonsPort = move(endpointPort(relayTable["skeletons"], True), pickPort())
    webPort = (
        move(endpointPort(relayTable["web"], True), pickPort()) if "web" in relayTable else None
    )
    for target in documents["skeleton"]["server"]:
        move(endpointPort(target["target"], False), targetPort)
    tunnelPorts = tuple(
        move(endpointPort(tunnel["listen"], True), pickPort())
        for tunnel in documents["client"]["tunnel"]
    )
    hosts = {
        ("relay", "clients"): clientsHost,
        ("relay", "web"): clientsHost,
        ("client", "relay"): clientsHost,
        ("relay", "skeletons"): skeletonsHost,
        ("skeleton", "relay"): skeletonsHost,
        ("tunnel", "listen"): listenHost,
    }
    moved = {role: moveEndpoints(documents[role], ports, hosts) for role in ROLES}
    moved["relay"]["relay"].update(relay or {})
    for entry in moved["skeleton"]["server"]:
        entry.update(server or {})

    os.makedirs(outDir, exist_ok=True)
    paths = {role: os.path.join(outDir, f"{role}.toml") for role in ROLES}
    texts = {role: tomlText(moved[role]) for role in ROLES}
    _, servers, _ = _roles(paths, texts)
    for role in ROLES:
        with open(paths[role], "w", encoding="utf-8") as f:
            f.write(texts[role])
    return StackConfigs(
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


def readConfigs(workDir: str) -> StackConfigs:
    """
    The stack whose three files L{writeConfigs} wrote in C{workDir} (with
    whatever hosts and overrides), read back from them as the roles will
    read them: a stack made once and started again, or by another process.
    """
    paths = {role: os.path.join(os.path.abspath(workDir), f"{role}.toml") for role in ROLES}
    try:
        relay, skeleton, client = _roles(paths)
    except ConfigError as e:
        raise LocalStackError(f"no local stack in {workDir}: {e}") from None
    return StackConfigs(
        relay=paths["relay"],
        skeleton=paths["skeleton"],
        client=paths["client"],
        clientsPort=endpointPort(relay.clients, True),
        skeletonsPort=endpointPort(relay.skeletons, True),
        webPort=None if relay.web is None else endpointPort(relay.web, True),
        targetPort=endpointPort(skeleton.servers[0].target, False),
        tunnelPorts=tuple(endpointPort(t.listen, True) for t in client.tunnels),
        servers=tuple((s.id, s.description) for s in skeleton.servers),
    )


# The relay's key, the users and the servers' secrets.


def _roles(
    paths: Mapping[str, str], texts: Mapping[str, str] | None = None
) -> tuple[RelayConfig, SkeletonConfig, ClientConfig]:
    """
    The three roles' configurations in the files at C{paths} (or in
    C{texts}, to be written there), checked as the roles check them; the
    files they name need not exist yet.
    """

    def parsed(role: str) -> dict[str, Any]:
        if texts is None:
            return parseToml(*readConfig(paths[role]))
        return parseToml(texts[role], paths[role])

    return (
        relayConfig(parsed("relay"), paths["relay"]),
        skeletonConfig(parsed("skeleton"), paths["skeleton"]),
        clientConfig(parsed("client"), paths["client"]),
    )


def relaynatTool(*argv: str) -> str:
    """
    Run one of the C{relaynat} tools that need no network (C{keygen},
    C{passwd}, C{secret}) in this process, as the command would; its output.
    """
    invocation = parse(list(argv))
    out, err = io.StringIO(), io.StringIO()
    if runLocal(invocation.name, invocation.options, out, err) != 0:
        raise LocalStackError(f"relaynat {' '.join(argv)}: {err.getvalue().strip()}")
    return out.getvalue()


def _writePassword(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secrets.token_urlsafe(24) + "\n")


def _copy(source: str, destination: str) -> None:
    if os.path.abspath(source) != os.path.abspath(destination):
        shutil.copyfile(source, destination)
        os.chmod(destination, 0o600)


def writeKeysAndUsers(
    configs: StackConfigs, names: Sequence[str] = ("127.0.0.1", "localhost")
) -> list[str]:
    """
    Make every file the moved configurations name, as an operator would
    with the C{relaynat} tools: the relay's key and certificate (the
    certificate is also what the skeleton and the client pin), a password
    for the skeleton's and the client's users and the users file giving them
    their rights, and each server's secret, shared by its skeleton and the
    client.  The certificate names C{names}, the hosts the relay is reached
    by.  Returns the commands, as a user would type them.
    """
    relay, skeleton, client = _roles({role: configs.path(role) for role in ROLES})
    typed: list[str] = []

    def run(*argv: str) -> None:
        relaynatTool(*argv)
        typed.append(" ".join(["relaynat", *argv]))

    keyDir = os.path.dirname(relay.key)
    run("keygen", keyDir, *[arg for name in names for arg in ("--name", name)])
    _copy(os.path.join(keyDir, KEY_FILE), relay.key)
    _copy(os.path.join(keyDir, CERT_FILE), relay.cert)
    for access in (skeleton.access, client.access):
        if access.relay_key is None or access.relay_key.startswith("sha256:"):
            raise LocalStackError(
                f"a local stack pins the relay by a certificate file; {configs.skeleton}"
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


