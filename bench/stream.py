"""
What the benchmark's client and server agree on: the header that opens each
connection, and the bytes of a bulk transfer.

The first byte of a connection says what the server does with it:

  e ...            echo every byte, this one included, until the peer closes
  u SIZE FLAGS     read SIZE bytes, then answer COUNT (8 bytes) and DIGEST (32)
  d SIZE FLAGS     send SIZE bytes, then wait for the peer to close
  s RATE MS        read at most RATE bytes/s for MS milliseconds, then reset

SIZE and COUNT are 8-byte big-endian, RATE and MS 4-byte. FLAGS bit 0 asks for
the checked stream (each MiB tagged with its index, sha256 over all of it);
without it the stream is one random MiB repeated and DIGEST is zeros, so a
1 GiB transfer costs no hashing and no copying on either end.
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections.abc import Iterator

BLOCK = 1 << 20
CHECKED = 1

ECHO = b"e"
UPLOAD = b"u"
DOWNLOAD = b"d"
SLOW = b"s"

SIZED = struct.Struct(">QB")  # after u or d
SLOW_ARGS = struct.Struct(">II")  # after s
ANSWER = struct.Struct(">Q32s")  # the server's reply to u

_block = random.Random(20261122).randbytes(BLOCK)


def chunks(size: int, checked: bool) -> Iterator[memoryview]:
    """The bytes of a transfer of C{size}, one MiB (or less, last) at a time."""
    whole = memoryview(_block)
    index = 0
    while size > 0:
        if checked:
            block = memoryview(index.to_bytes(8, "big") + _block[8:])
        else:
            block = whole
        take = min(size, BLOCK)
        yield block[:take]
        size -= take
        index += 1


def digest(size: int) -> bytes:
    """The sha256 of the checked stream of C{size} bytes."""
    h = hashlib.sha256()
    for c in chunks(size, True):
        h.update(c)
    return h.digest()
