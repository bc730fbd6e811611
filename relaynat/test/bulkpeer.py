"""
A bulk peer in a process of its own, for tests that move more than an
in-process Twisted peer could in a few seconds: it sends SIZE bytes, shuts
its write side, reads until end-of-stream and prints one JSON line with the
sha256 of what it sent and of what it received.

  python -m relaynat.test.bulkpeer listen SIZE SEED    (prints "PORT n" first)
  python -m relaynat.test.bulkpeer connect PORT SIZE SEED
"""

from __future__ import annotations

import hashlib
import json
import random
import selectors
import socket
import sys

BLOCK = 1 << 20


def blocks(size: int, seed: int):  # type: ignore[no-untyped-def]
    """SIZE bytes: a random block, numbered in its first 8 bytes, over and over."""
    base = bytearray(random.Random(seed).randbytes(BLOCK))
    index = 0
    while size > 0:
        base[:8] = index.to_bytes(8, "big")
        n = min(size, BLOCK)
        yield memoryview(bytes(base[:n]))
        size -= n
        index += 1


def run(conn: socket.socket, size: int, seed: int) -> dict[str, object]:
    conn.setblocking(False)
    sent, got = hashlib.sha256(), hashlib.sha256()
    gotBytes = 0
    source = blocks(size, seed)
    current = next(source, None)
    if current is not None:
        sent.update(current)
    sel = selectors.DefaultSelector()
    events = selectors.EVENT_READ | (selectors.EVENT_WRITE if current is not None else 0)
    sel.register(conn, events)
    if current is None:
        conn.shutdown(socket.SHUT_WR)
    reading = True
    buffer = bytearray(BLOCK)
    while reading or current is not None:
        for _, mask in sel.select():
            if mask & selectors.EVENT_READ:
                n = conn.recv_into(buffer)
                if n == 0:
                    reading = False
                else:
                    got.update(memoryview(buffer)[:n])
                    gotBytes += n
            if mask & selectors.EVENT_WRITE and current is not None:
                n = conn.send(current)
                current = current[n:]
                if not current:
                    current = next(source, None)
                    if current is None:
                        conn.shutdown(socket.SHUT_WR)
                    else:
                        sent.update(current)
        events = (selectors.EVENT_READ if reading else 0) | (
            selectors.EVENT_WRITE if current is not None else 0
        )
        if events:
            sel.modify(conn, events)
    conn.close()
    return {"sent": sent.hexdigest(), "got": got.hexdigest(), "gotBytes": gotBytes}


def main(argv: list[str]) -> None:
    if argv[0] == "listen":
        size, seed = int(argv[1]), int(argv[2])
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        print(f"PORT {listener.getsockname()[1]}", flush=True)
        conn, _ = listener.accept()
        listener.close()
    else:
        port, size, seed = int(argv[1]), int(argv[2]), int(argv[3])
        conn = socket.create_connection(("127.0.0.1", port))
    print(json.dumps(run(conn, size, seed)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
