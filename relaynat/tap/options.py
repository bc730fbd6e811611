"""
What the three roles' command lines share: a config file under the flags,
loaded by the one loader (L{relaynat.load}) when the role starts and when it
reloads, never while the command line is parsed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.python import usage

from relaynat.config import ConfigError
from relaynat.load import Flags, flagPath, readConfig
from relaynat.tap.listening import CannotStart


def number(flag: str, kind: type[float] | type[int]) -> Callable[[str], float]:
    """A coercer for a numeric flag whose error names the flag."""

    def coerce(value: str) -> float:
        try:
            return kind(value)
        except ValueError:
            noun = "a whole number" if kind is int else "a number"
            raise ValueError(f"--{flag} must be {noun}, not {value!r}") from None

    coerce.coerceDoc = ""  # type: ignore[attr-defined]
    return coerce


class ConfigOptions(usage.Options):
    """
    Options with C{--config FILE}; subclasses say what their flags lay over
    the file (L{flags}) and load the two with their role's loader (L{load}).
    """

    optParameters: list[list[Any]] = [
        ["config", "c", None, "TOML configuration file (flags override it)"],
    ]

    def opt_version(self) -> None:
        """Print relaynat's version and exit."""
        from relaynat import __version__

        print(f"relaynat {__version__}")
        raise SystemExit(0)

    def pathFlag(self, name: str) -> str | None:
        """
        A file name given as a flag, made absolute: a flag is relative to
        where the command runs, not to the config file's folder.
        """
        value = self[name]
        return None if value is None else flagPath(value)

    def flags(self) -> Flags:
        raise NotImplementedError

    def source(self) -> tuple[str, str]:
        """The configuration file's text as it is now, and its name."""
        return readConfig(self["config"])

    def load(self) -> Any:
        """The role's configuration as its file says now, under the flags."""
        raise NotImplementedError

    def starting(self) -> Any:
        """L{load}, at the start: a problem stops it, one line each."""
        try:
            return self.load()
        except ConfigError as e:
            raise CannotStart("\n".join(f"twistd: {line}" for line in e.lines)) from None
