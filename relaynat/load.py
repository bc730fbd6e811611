"""
The roles' one configuration loader: a role's TOML text, with its
command-line flags laid over it, checked into its configuration
(L{relaynat.config}), and then the files it names read (the relay's key
and certificate and its users file; a skeleton's or a client's password
file, the relay's certificate or CA file, and each server's secret).

It reads from a string (L{readConfig} reads the file): a test needs no
file but those the configuration names.  Every problem is a
L{ConfigError}.  A wrong text stops at its first problem; once the text is
right, every named file is read and each bad one is said, one line each
(L{ConfigErrors}), so that one run of C{relaynat check} or of a role shows
them all.  The roles call it from their C{makeService}, a skeleton and a
client on SIGHUP too (a relay's SIGHUP rereads its users file only), and
C{relaynat check}, C{list} and C{connect} call it (the last two reading only
the secrets they use): a file one accepts, the others accept.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

import attrs
from twisted.internet.endpoints import clientFromString

from relaynat.auth import Users
from relaynat.config import (
    COMMAND_LINE,
    ClientConfig,
    ConfigError,
    ConfigErrors,
    RelayAccess,
    RelayConfig,
    SkeletonConfig,
    clientConfig,
    parseToml,
    relayConfig,
    skeletonConfig,
)
from relaynat.identity import IdentityError, PinnedRelay, RelayIdentity, fingerprintOfFile
from relaynat.link import Credentials, RelayLink, hostnameVerifier
from relaynat.private import PrivateFileError, readPrivate
from relaynat.secret import SecretFileError, loadSecret
from relaynat.users import UsersFileError

#: The role tables, in the order L{roleOf} tells them.
ROLES = ("relay", "skeleton", "client")

T = TypeVar("T")


def flagPath(value: str) -> str:
    """
    A file named by a flag: relative to where the command runs, not to a
    configuration file's folder (as the file's own names are), C{~} expanded.
    """
    return os.path.abspath(os.path.expanduser(value))


@attrs.frozen
class Flags:
    """
    What a role's command line says over its file: C{table} replaces keys
    of the role's table (None: not given), C{entries} add C{[[server]]}s or
    C{[[tunnel]]}s, and C{secrets} name the secret file of a server by id
    (C{--secret ID=FILE}), over the file's.
    """

    table: Mapping[str, Any] = attrs.field(factory=dict)
    entries: Sequence[Mapping[str, Any]] = ()
    secrets: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class LoadedRelay:
    """A relay's configuration, its identity (key and certificate) and its users."""

    config: RelayConfig
    identity: RelayIdentity
    users: Users


@attrs.frozen
class LoadedAccess:
    """How a skeleton or client reaches and trusts the relay, its files read."""

    config: RelayAccess
    verifier: Any
    credentials: Credentials

    def link(self, reactor: Any) -> RelayLink:
        """The way to the relay this describes (nothing is connected yet)."""
        return RelayLink(
            clientFromString(reactor, self.config.relay),
            self.verifier,
            self.credentials,
            reactor,
            self.config.password_file,
        )


@attrs.frozen
class LoadedSkeleton:
    """A skeleton's configuration, how it reaches the relay, and its servers' secrets."""

    config: SkeletonConfig
    access: LoadedAccess
    #: Each server's secret, by its id.
    secrets: Mapping[str, bytes] = attrs.field(repr=False)


@attrs.frozen
class LoadedClient:
    """A client's configuration, how it reaches the relay, and its tunnels' secrets."""

    config: ClientConfig
    access: LoadedAccess
    #: Each tunnel's secret, by its server's id.
    secrets: Mapping[str, bytes] = attrs.field(repr=False)


def readConfig(path: str | None) -> tuple[str, str]:
    """
    The text of the configuration file C{path}, and what to call it in
    errors; no file (C{None}) is an empty text, called the command line.
    """
    if path is None:
        return "", COMMAND_LINE
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(path, "(file)", e.strerror or str(e)) from e
    try:
        return data.decode("utf-8"), path
    except UnicodeDecodeError as e:
        raise ConfigError(path, "(file)", f"not UTF-8 text ({e.reason} at byte {e.start})") from e


def loadRelay(text: str, source: str, flags: Flags = Flags()) -> LoadedRelay:
    """The relay's configuration in C{text} under C{flags}, and its files."""
    config = relayConfig(_document(text, source, "relay", flags, None, "id"), source)
    files = _Files(source)
    identity = files.read(
        "relay.key", lambda: RelayIdentity.load(config.key, config.cert), IdentityError
    )
    users = files.read("relay.users", lambda: Users(config.users), UsersFileError)
    files.done()
    return LoadedRelay(config, identity, users)


def loadSkeleton(text: str, source: str, flags: Flags = Flags()) -> LoadedSkeleton:
    """A skeleton's configuration in C{text} under C{flags}, and its files."""
    config = skeletonConfig(_document(text, source, "skeleton", flags, "server", "id"), source)
    files = _Files(source)
    access = _access(files, "skeleton", config.access)
    secrets = {
        s.id: files.read(f"server[{i}].secret_file", _secret(s.secret_file), SecretFileError)
        for i, s in enumerate(config.servers)
    }
    files.done()
    return LoadedSkeleton(config, access, secrets)


def loadClient(
    text: str,
    source: str,
    flags: Flags = Flags(),
    needTunnels: bool = True,
    secretsOf: Collection[str] | None = None,
) -> LoadedClient:
    """
    A client's configuration in C{text} under C{flags}, and its files; with
    C{needTunnels} false (C{relaynat list}, C{connect}), it may have none.
    The secrets read are those of every tunnel, or of the tunnels to the
    servers in C{secretsOf} (C{relaynat connect} needs one, C{list} none).
    """
    document = _document(text, source, "client", flags, "tunnel", "server")
    config = clientConfig(document, source, needTunnels=needTunnels)
    files = _Files(source)
    access = _access(files, "client", config.access)
    secrets = {
        t.server: files.read(f"tunnel[{i}].secret_file", _secret(t.secret_file), SecretFileError)
        for i, t in enumerate(config.tunnels)
        if secretsOf is None or t.server in secretsOf
    }
    files.done()
    return LoadedClient(config, access, secrets)


def load(text: str, source: str) -> LoadedRelay | LoadedSkeleton | LoadedClient:
    """Whichever role's file C{text} is (L{roleOf}), loaded."""
    role = roleOf(parseToml(text, source), source)
    if role == "relay":
        return loadRelay(text, source)
    if role == "skeleton":
        return loadSkeleton(text, source)
    return loadClient(text, source)


def roleOf(document: Mapping[str, Any], source: str) -> str:
    """Which role's file C{document} is, from the one role table it has."""
    found = [role for role in ROLES if role in document]
    if len(found) != 1:
        tables = ", ".join(f"[{role}]" for role in ROLES)
        what = "none" if not found else " and ".join(f"[{role}]" for role in found)
        raise ConfigError(source, "(file)", f"a role's file has one of {tables}; this one has {what}")
    return found[0]


def _document(
    text: str, source: str, table: str, flags: Flags, array: str | None, idKey: str
) -> dict[str, Any]:
    """The parsed C{text} with C{flags} laid over it."""
    document = parseToml(text, source)
    given = {key: value for key, value in flags.table.items() if value is not None}
    if given:
        section = document.get(table, {})
        document[table] = {**section, **given} if isinstance(section, dict) else section
    if array is not None:
        entries = document.get(array, [])
        if flags.entries and isinstance(entries, list):
            entries = [*entries, *flags.entries]
        if isinstance(entries, list):
            entries = _withSecrets(entries, flags.secrets, idKey)
        if entries:
            document[array] = entries
    elif flags.secrets:
        raise ConfigError("--secret", next(iter(flags.secrets)), "this role has no servers")
    return document


def _withSecrets(
    entries: list[Any], secrets: Mapping[str, str], idKey: str
) -> list[Any]:
    """C{entries}, with the secret files of C{--secret} filled in by id."""
    if not secrets:
        return entries

    def idOf(entry: Any) -> str | None:
        # What is not a table or has no string id is left for the check to say.
        value = entry.get(idKey) if isinstance(entry, dict) else None
        return value if isinstance(value, str) else None

    ids = {idOf(e) for e in entries}
    for wanted in secrets:
        if wanted not in ids:
            raise ConfigError("--secret", wanted, "no server of that id is configured")
    return [
        {**e, "secret_file": secrets[serverId]}
        if (serverId := idOf(e)) is not None and serverId in secrets
        else e
        for e in entries
    ]


class _Files:
    """
    The named files of one configuration, read one by one: each one's
    problem is kept, under the key that names it, and all are said at the
    end.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[ConfigError] = []

    def read(
        self,
        key: str,
        read: Callable[[], T],
        *errors: type[Exception],
    ) -> T:
        try:
            return read()
        except (ConfigError, *errors) as e:  # type: ignore[misc]
            # The file's own error names the file and its problem.
            self.problems.append(ConfigError(self.source, key, str(e)))
            return None  # type: ignore[return-value]

    def done(self) -> None:
        if len(self.problems) == 1:
            raise self.problems[0]
        if self.problems:
            raise ConfigErrors(self.problems)


def _secret(path: str) -> Callable[[], bytes]:
    return lambda: loadSecret(path)


def _access(files: _Files, table: str, config: RelayAccess) -> LoadedAccess:
    password = files.read(
        f"{table}.password_file", lambda: _password(config.password_file), PrivateFileError
    )
    if config.relay_verify == "hostname":
        name = config.relay_name
        assert name is not None
        verifier = files.read(
            f"{table}.relay_ca",
            lambda: hostnameVerifier(name, _caPem(config.relay_ca)),
            IdentityError,
        )
    else:
        assert config.relay_key is not None
        expected = config.relay_key
        verifier = files.read(
            f"{table}.relay_key",
            lambda: PinnedRelay(
                expected if expected.startswith("sha256:") else fingerprintOfFile(expected)
            ),
            IdentityError,
        )
    return LoadedAccess(config, verifier, Credentials(config.user, password or ""))


def _password(path: str) -> str:
    # The password file is held to the rule of every private file.
    lines = readPrivate(path).decode("utf-8", "replace").splitlines()
    if not lines or not lines[0]:
        raise PrivateFileError(path, "the first line must hold the password")
    return lines[0]


def _caPem(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise IdentityError(f"{path}: {e.strerror}") from None
