"""
The one rule for the files that hold something private: the relay's key,
its users file, a password file and a secret file.

Such a file may be read by its owner and by its group (mode 0640, so that a
service's group can read a file root owns), but not by everyone, and
written by its owner only: a file others could change could hand relaynat
a key, a user or a secret of their choosing.  The mode is checked on the
descriptor that is then read, so the file cannot be swapped in between.
"""

from __future__ import annotations

import os
import shlex
import stat

#: The permission bits a private file must not have: any for everyone,
#: and writing for the group.
FORBIDDEN = stat.S_IRWXO | stat.S_IWGRP


class PrivateFileError(Exception):
    """A private file cannot be read, or others could read or change it."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = path, problem


def modeProblem(path: str, mode: int) -> str | None:
    """
    What is wrong with a private file at C{path} that has C{mode}, and the
    command that mends it, or C{None} if nothing is.
    """
    bits = stat.S_IMODE(mode)
    if not bits & FORBIDDEN:
        return None
    if bits & stat.S_IWOTH:
        who = "writable by everyone"
    elif bits & stat.S_IROTH:
        who = "readable by everyone"
    elif bits & stat.S_IWGRP:
        who = "writable by its group"
    else:
        who = "executable by everyone"
    # Only the offending bits go, so the fix never widens what is allowed
    # (0644 becomes 0640, 0602 becomes 0600).
    return f"{who} (mode {bits:04o}); run chmod {bits & ~FORBIDDEN:03o} {shlex.quote(path)}"


def readPrivate(path: str) -> bytes:
    """
    The contents of the private file C{path}, once its mode is checked; a
    L{PrivateFileError} naming the file if it cannot be read or its mode
    lets others read or change it.
    """
    try:
        with open(path, "rb") as f:
            problem = modeProblem(path, os.fstat(f.fileno()).st_mode)
            if problem is not None:
                raise PrivateFileError(path, problem)
            return f.read()
    except OSError as e:
        raise PrivateFileError(path, e.strerror or str(e)) from e
