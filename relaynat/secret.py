"""
Per-server secrets: shared by a skeleton and the clients allowed to reach
one of its servers, never by the relay.

Each tunnel's handshake is keyed by it (L{relaynat.seal}): the client and
the skeleton each prove they know it, and the relay, which never has it,
can prove nothing.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets

from relaynat.identity import writePrivate

SECRET_BYTES = 32
_MIN_BYTES = 16


class SecretFileError(Exception):
    """A secret file cannot be used: names the file and why."""


def generateSecret(path: str) -> None:
    """Write a new random secret to C{path}, readable by its owner only."""
    text = base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")
    writePrivate(path, (text + "\n").encode("ascii"))


def loadSecret(path: str) -> bytes:
    """The secret in C{path}."""
    try:
        with open(path, "rb") as f:
            text = f.read().strip()
    except OSError as e:
        raise SecretFileError(f"{path}: {e.strerror}") from e
    try:
        secret = base64.urlsafe_b64decode(text)
    except (binascii.Error, ValueError):
        raise SecretFileError(f"{path}: not a secret file (make one with 'relaynat secret')") from None
    if len(secret) < _MIN_BYTES:
        raise SecretFileError(f"{path}: the secret is too short (make one with 'relaynat secret')")
    if os.stat(path).st_mode & 0o077:
        raise SecretFileError(f"{path}: others can read it; run chmod 600 {path}")
    return secret
