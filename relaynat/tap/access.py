"""
What a skeleton and a client share: the flags that say how to reach and
trust the relay, their control service, and their reload on SIGHUP.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.application.internet import backoffPolicy
from twisted.logger import Logger
from twisted.python.usage import UsageError

from relaynat.config import ConfigError, splitAssignment
from relaynat.config import RelayAccess
from relaynat.link import ControlChannel, ControlService, RelayLink, linkFromConfig
from relaynat.secret import SecretFileError, loadSecret
from relaynat.tap.listening import CannotStart
from relaynat.tap.options import ConfigOptions

_log = Logger()

ACCESS_PARAMETERS: list[list[Any]] = [
    ["relay-key", None, None, "the relay's key: sha256:FINGERPRINT, or its certificate file"],
    ["relay-verify", None, None, 'how to check the relay: "pin" (default) or "hostname"'],
    ["relay-ca", None, None, 'with "hostname": the CA certificate file to trust'],
    ["relay-name", None, None, 'with "hostname": the name the certificate must carry'],
    ["user", None, None, "the user to log in as"],
    ["password-file", None, None, "a file whose first line is the password"],
]


class AccessOptions(ConfigOptions):
    """Options of a role that logs in to the relay and knows per-server secrets."""

    def __init__(self) -> None:
        super().__init__()
        self.secretFiles: dict[str, str] = {}

    def opt_secret(self, value: str) -> None:
        """A server's secret file, ID=FILE (e.g. web=web.secret); repeatable."""
        try:
            serverId, path = splitAssignment("--secret", value, "ID=FILE")
        except ConfigError as e:
            raise UsageError(str(e)) from e
        self.secretFiles[serverId] = os.path.abspath(os.path.expanduser(path))

    def accessFlags(self) -> dict[str, Any]:
        relayKey = self["relay-key"]
        if relayKey is not None and not relayKey.lower().startswith("sha256:"):
            relayKey = self.pathFlag("relay-key")
        return {
            "relay_key": relayKey,
            "relay_verify": self["relay-verify"],
            "relay_ca": self.pathFlag("relay-ca"),
            "relay_name": self["relay-name"],
            "user": self["user"],
            "password_file": self.pathFlag("password-file"),
        }

    def withSecrets(self, entries: list[dict[str, Any]], idKey: str) -> list[dict[str, Any]]:
        """Entries from flags and file, with C{--secret} files filled in by id."""
        ids = {e.get(idKey) for e in entries if isinstance(e, dict)}
        for serverId in self.secretFiles:
            if serverId not in ids:
                raise ConfigError("--secret", serverId, "no server of that id is configured")
        return [
            {**e, "secret_file": self.secretFiles[e[idKey]]}
            if isinstance(e, dict) and e.get(idKey) in self.secretFiles
            else e
            for e in entries
        ]


def controlService(
    link: RelayLink,
    channels: Callable[[], ControlChannel],
    reactor: Any,
    retryPolicy: Callable[[int], float] | None = None,
) -> ControlService:
    """
    The control connection to the relay, kept up: each new one a
    C{channels()}, logged in (and registered) before it is used; a lost or
    refused one is made again after 0.5 s, then 1.5 times longer after each
    failure in a row, up to 30 s (or as C{retryPolicy} says).
    """
    if retryPolicy is None:
        retryPolicy = backoffPolicy(initialDelay=0.5, maxDelay=30.0)
    return ControlService(link.endpoint, channels, reactor, retryPolicy)


def loadSecrets(paths: dict[str, str]) -> dict[str, bytes]:
    """Read every secret file now, so a bad one stops start-up with its name."""
    secrets = {}
    for serverId, path in paths.items():
        try:
            secrets[serverId] = loadSecret(path)
        except SecretFileError as e:
            problem = str(e).removeprefix(f"{path}: ")
            raise ConfigError(path, f"secret of {serverId}", problem) from None
    return secrets


def reloaded(options: AccessOptions, what: str) -> bool:
    """
    Read C{options}' configuration file again (under the same flags), with
    the files it names; a bad one is logged in one line and False returned,
    so that the running configuration stays.
    """
    try:
        options.build()
    except ConfigError as e:
        _log.error("{what} not reloaded, the running one stays: {why}", what=what, why=str(e))
        return False
    return True


def accessUnchanged(before: Any, after: Any) -> None:
    """Say that a change to how the relay is reached waits for a restart: a reload keeps it."""
    if before != after:
        _log.warn(
            "the relay's address, key, user or password file changed: a reload keeps"
            " the running ones; restart to use the new"
        )


def startingLink(access: RelayAccess, reactor: Any) -> RelayLink:
    """
    The role's way to the relay, its files read now: one that cannot be
    read (a missing password file, say) stops the start with one line.
    """
    try:
        return linkFromConfig(access, reactor)
    except ConfigError as e:
        raise CannotStart(f"twistd: {e}") from None
