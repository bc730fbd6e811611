"""What the three roles' command lines share: a config file under the flags."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.python import usage

from relaynat.config import ConfigError, readToml


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
    Options with C{--config FILE}; subclasses turn the file plus the flags
    into a checked configuration in L{build}.
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
        return None if value is None else os.path.abspath(os.path.expanduser(value))

    def document(self) -> tuple[dict[str, Any], str]:
        """The parsed file (empty without one), and what to call it in errors."""
        path = self["config"]
        if path is None:
            return {}, "command line"
        return readToml(path), path

    def postOptions(self) -> None:
        try:
            self.build()
        except ConfigError as e:
            raise usage.UsageError(str(e)) from e

    def build(self) -> None:
        raise NotImplementedError
