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
import secrets

from relaynat.identity import writePrivate
from relaynat.private import PrivateFileError, readPrivate

SECRET_BYTES = 32
_MIN_BYTES = 16


class SecretFileError(Exception):
    """A secret file cannot be used: names the file and why."""


def generateSecret(path: str) -> None:
    """Write a new random secret to C{path}, readable by its owner only."""
    text = base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")
    writePrivate(path, (text + "\n").encode("ascii"))


def loadSecret(path: str) -> bytes:
    """The secret in C{path}, a private file (L{relaynat.private})."""
    try:
        text = readPrivate(path).strip()
    except PrivateFileError as e:
        raise SecretFileError(str(e)) from e
    try:
        secret = base64.urlsafe_b64decode(text)
    except (binascii.Error, ValueError):
        raise SecretFileError(f"{path}: not a secret file (make one with 'relaynat secret')") from None
    if len(secret) < _MIN_BYTES:
        raise SecretFileError(f"{path}: the secret is too short (make one with 'relaynat secret')")
    return secret
