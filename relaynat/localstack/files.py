"""
The files of a local stack: the three example configurations of C{conf/}
with every endpoint moved to a free port on 127.0.0.1, and the relay's key,
the users, their passwords (mode 0600) and the servers' secrets they name,
made with the C{relaynat} tools as an operator would.
"""

from __future__ import annotations

import io
import os
import re
import secrets
import shutil
from collections.abc import Mapping

import attrs

import relaynat
from relaynat.cli import Options as CommandOptions
from relaynat.cli import runLocal
from relaynat.config import clientConfig, parseToml, readToml, relayConfig, skeletonConfig
from relaynat.identity import CERT_FILE, KEY_FILE
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

_HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.-]+)\s*\]\]?\s*(#.*)?$")
_STRING_VALUE = re.compile(r'^(\s*)([A-Za-z0-9_-]+)(\s*=\s*)"((?:[^"\\]|\\.)*)"(.*)$')
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


def moveEndpoint(description: str, listening: bool, ports: Mapping[int, int]) -> str:
    """
    C{description} with its port replaced through C{ports}, and, when it
    listens on every interface, bound to 127.0.0.1 instead: nothing the demo
    or the tests start is reachable from another host.
    """
    old = endpointPort(description, listening)
    if old not in ports:
        raise LocalStackError(f"no new port given for {old} in endpoint {description!r}")
    fields = _fields(description)
    index, keyword = _portField(fields, listening)
    fields[index] = f"port={ports[old]}" if keyword else str(ports[old])
    if listening and fields[0] == "tcp":
        positional = [f for f in fields[1:] if "=" not in f]
        if not any(f.startswith("interface=") for f in fields) and len(positional) < 2:
            fields.append("interface=127.0.0.1")
    return ":".join(fields)


def moveConfig(text: str, ports: Mapping[int, int]) -> str:
    """
    The TOML C{text} of a role's configuration with every endpoint string
    moved by L{moveEndpoint}; everything else, comments included, is kept.
    """
    table = ""
    lines = []
    for line in text.splitlines(keepends=True):
        header = _HEADER.match(line)
        if header:
            table = header.group(1)
        value = _STRING_VALUE.match(line.rstrip("\r\n"))
        if value and (table, value.group(2)) in ENDPOINT_KEYS:
            indent, key, equals, old, rest = value.groups()
            listening = ENDPOINT_KEYS[(table, key)]
            # Endpoint strings hold backslash escapes (\:): a TOML basic
            # string doubles them, so move the decoded value and re-encode.
            decoded = parseToml(f'v = "{old}"')["v"]
            new = moveEndpoint(decoded, listening, ports)
            encoded = new.replace("\\", "\\\\").replace('"', '\\"')
            ending = line[len(line.rstrip("\r\n")) :]
            line = f'{indent}{key}{equals}"{encoded}"{rest}{ending}'
        lines.append(line)
    return "".join(lines)


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
    def tunnelUrl(self) -> str:
        return f"http://127.0.0.1:{self.tunnelPorts[0]}/"


def writeConfigs(outDir: str, targetPort: int, confDir: str = CONF) -> StackConfigs:
    """
    Copy C{conf/relay.toml}, C{skeleton.toml} and C{client.toml} into
    C{outDir} with ports X and Y and every tunnel's port moved to free ports
    on 127.0.0.1, and every server's target moved to C{targetPort}.  The
    copies are checked by L{relaynat.config} as the roles will check them.
    """
    texts = {}
    for role in ROLES:
        with open(os.path.join(confDir, f"{role}.toml"), encoding="utf-8") as f:
            texts[role] = f.read()
    relay = parseToml(texts["relay"])["relay"]
    skeleton = parseToml(texts["skeleton"])
    client = parseToml(texts["client"])
    ports: dict[int, int] = {}

    def move(old: int, new: int) -> int:
        if ports.setdefault(old, new) != new:
            raise LocalStackError(f"port {old} is used for two purposes in {confDir}")
        return new

    clientsPort = move(endpointPort(relay["clients"], True), pickFreePort())
    skeletonsPort = move(endpointPort(relay["skeletons"], True), pickFreePort())
    webPort = move(endpointPort(relay["web"], True), pickFreePort()) if "web" in relay else None
    for server in skeleton["server"]:
        move(endpointPort(server["target"], False), targetPort)
    tunnelPorts = tuple(
        move(endpointPort(tunnel["listen"], True), pickFreePort())
        for tunnel in client["tunnel"]
    )
    os.makedirs(outDir, exist_ok=True)
    paths = {role: os.path.join(outDir, f"{role}.toml") for role in ROLES}
    moved = {role: moveConfig(texts[role], ports) for role in ROLES}
    relayConfig(parseToml(moved["relay"], paths["relay"]), paths["relay"])
    servers = skeletonConfig(parseToml(moved["skeleton"], paths["skeleton"]), paths["skeleton"])
    clientConfig(parseToml(moved["client"], paths["client"]), paths["client"])
    for role in ROLES:
        with open(paths[role], "w", encoding="utf-8") as f:
            f.write(moved[role])
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


# The relay's key, the users and the servers' secrets.


def relaynatTool(*argv: str) -> str:
    """
    Run one of the C{relaynat} tools that need no network (C{keygen},
    C{passwd}, C{secret}) in this process, as the command would; its output.
    """
    options = CommandOptions()
    options.parseOptions(list(argv))
    assert options.subCommand is not None
    out, err = io.StringIO(), io.StringIO()
    if runLocal(options.subCommand, options.subOptions, out, err) != 0:
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


def writeKeysAndUsers(configs: StackConfigs) -> list[str]:
    """
    Make every file the moved configurations name, as an operator would
    with the C{relaynat} tools: the relay's key and certificate (the
    certificate is also what the skeleton and the client pin), a password
    for the skeleton's and the client's users and the users file giving them
    their rights, and each server's secret, shared by its skeleton and the
    client.  Returns the commands, as a user would type them.
    """
    relay = relayConfig(readToml(configs.relay), configs.relay)
    skeleton = skeletonConfig(readToml(configs.skeleton), configs.skeleton)
    client = clientConfig(readToml(configs.client), configs.client)
    typed: list[str] = []

    def run(*argv: str) -> None:
        relaynatTool(*argv)
        typed.append(" ".join(["relaynat", *argv]))

    keyDir = os.path.dirname(relay.key)
    run("keygen", keyDir, "--name", "127.0.0.1", "--name", "localhost")
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


