"""What the three roles' command lines share: a config file under the flags."""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from relaynat.config import ConfigError, readToml


class ConfigOptions(usage.Options):
    """
    Options with C{--config FILE}; subclasses turn the file plus the flags
    into a checked configuration in L{build}.
    """

    optParameters: list[list[Any]] = [
        ["config", "c", None, "TOML configuration file (flags override it)"],
    ]

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
