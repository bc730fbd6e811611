"""
What a skeleton and a client share: the flags that say how to reach and
trust the relay, their control service, and their reload on SIGHUP.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.internet import backoffPolicy
from twisted.logger import Logger
from twisted.python.usage import UsageError

from relaynat.config import ConfigError, splitAssignment
from relaynat.link import ControlChannel, ControlService, RelayLink
from relaynat.load import flagPath
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
        self.secretFiles[serverId] = flagPath(path)

    def accessFlags(self) -> dict[str, Any]:
        return accessFlags(self)


def accessFlags(given: Mapping[str, str | None]) -> dict[str, Any]:
    """
    The keys of a role's table that the access flags in C{given} (by flag
    name, None when not given) set: a file named by a flag is relative to
    where the command runs, not to the config file's folder; a C{sha256:}
    relay key is no file.
    """

    def path(flag: str) -> str | None:
        value = given[flag]
        return None if value is None else flagPath(value)

    relayKey = given["relay-key"]
    if relayKey is not None and not relayKey.lower().startswith("sha256:"):
        relayKey = path("relay-key")
    return {
        "relay_key": relayKey,
        "relay_verify": given["relay-verify"],
        "relay_ca": path("relay-ca"),
        "relay_name": given["relay-name"],
        "user": given["user"],
        "password_file": path("password-file"),
    }


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


def reloaded(options: ConfigOptions, what: str) -> Any:
    """
    C{options}' configuration loaded again (its file read again, under the
    same flags, with the files it names); a bad one is logged in one line
    and None returned, so that the running configuration stays.
    """
    try:
        return options.load()
    except ConfigError as e:
        _log.error(
            "{what} not reloaded, the running one stays: {why}", what=what, why="; ".join(e.lines)
        )
        return None


def accessUnchanged(before: Any, after: Any) -> None:
    """Say that a change to how the relay is reached waits for a restart: a reload keeps it."""
    if before != after:
        _log.warn(
            "the relay's address, key, user or password file changed: a reload keeps"
            " the running ones; restart to use the new"
        )
