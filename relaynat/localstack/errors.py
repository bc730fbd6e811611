"""The one error of the local stack: what went wrong, said so that a user can act."""

from __future__ import annotations


class LocalStackError(Exception):
    """A local stack cannot be made, started or reached: the message says why."""
