"""
The measuring client: one run of one measurement against one port, its
result as one JSON object on stdout.  Plain sockets, no framework, so the
client is never the slow part of a path that can go faster.

    python load.py bulk PORT --direction up|down --size BYTES [--checked]
    python load.py setup PORT --count N
    python load.py ping PORT --count N --size BYTES
    python load.py hold PORT --count N     # prints "open", waits for a line, echoes, prints "echo"
    python load.py push PORT --seconds S --rate BYTES_PER_S
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import resource
import selectors
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import stream  # noqa: E402

TIMEOUT = 10.0


def emit(result: dict) -> None:
    print(json.dumps(result), flush=True)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def receive(sock: socket.socket, size: int) -> bytes:
    parts, got = [], 0
    while got < size:
        data = sock.recv(size - got)
        if not data:
            raise ConnectionError(f"closed after {got} of {size} bytes")
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


# bulk: SIZE bytes one way, counted, and hashed when --checked.


def bulk(port: int, direction: str, size: int, checked: bool) -> dict:
    flags = stream.CHECKED if checked else 0
    result: dict = {"direction": direction, "size": size, "checked": checked}
    start = time.perf_counter()
    sock = connect(port)
    sock.settimeout(60)
    try:
        if direction == "up":
            sock.sendall(stream.UPLOAD + stream.SIZED.pack(size, flags))
            mine = hashlib.sha256() if checked else None
            for chunk in stream.chunks(size, checked):
                if mine is not None:
                    mine.update(chunk)
                sock.sendall(chunk)
            count, digest = stream.ANSWER.unpack(receive(sock, stream.ANSWER.size))
            result["seconds"] = time.perf_counter() - start
            result["bytes"] = count
            result["count_ok"] = count == size
            if mine is not None:
                result["sha256_ok"] = digest == mine.digest()
        else:
            sock.sendall(stream.DOWNLOAD + stream.SIZED.pack(size, flags))
            mine = hashlib.sha256() if checked else None
            buffer = bytearray(1 << 20)
            view = memoryview(buffer)
            got = 0
            while got < size:
                n = sock.recv_into(buffer)
                if n == 0:
                    break
                if mine is not None:
                    mine.update(view[:n])
                got += n
            result["seconds"] = time.perf_counter() - start
            result["bytes"] = got
            result["count_ok"] = got == size
            if mine is not None:
                result["sha256_ok"] = mine.digest() == stream.digest(size)
    except OSError as e:
        result["error"] = repr(e)
        result["count_ok"] = False
    finally:
        sock.close()
    if "seconds" in result:
        result["mb_per_s"] = result["bytes"] / result["seconds"] / 1e6
    return result


# setup: COUNT times connect, echo one byte, close; one after the other.


def setup(port: int, count: int) -> dict:
    times: list[float] = []
    failures: list[str] = []
    start = time.perf_counter()
    for _ in range(count):
        t0 = time.perf_counter()
        try:
            sock = connect(port)
            try:
                sock.sendall(stream.ECHO)
                if sock.recv(1) != stream.ECHO:
                    raise ConnectionError("no echo")
            finally:
                sock.close()
        except OSError as e:
            failures.append(repr(e))
            continue
        times.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start
    return {
        "count": count,
        "ok": len(times),
        "failed": len(failures),
        "errors": sorted(set(failures))[:5],
        "seconds": elapsed,
        "per_s": len(times) / elapsed,
        "p50_ms": percentile(times, 50) * 1e3,
        "p99_ms": percentile(times, 99) * 1e3,
        "max_ms": max(times, default=float("nan")) * 1e3,
        "samples_us": [round(t * 1e6) for t in times],
    }


# ping: COUNT round trips of SIZE bytes on one connection.


def ping(port: int, count: int, size: int) -> dict:
    sock = connect(port)
    try:
        sock.sendall(stream.ECHO)
        receive(sock, 1)  # the tunnel is up: its setup is not a ping
        message = b"p" * size
        times: list[float] = []
        for _ in range(count):
            t0 = time.perf_counter()
            sock.sendall(message)
            receive(sock, size)
            times.append(time.perf_counter() - t0)
    finally:
        sock.close()
    return {
        "count": count,
        "size": size,
        "p50_us": percentile(times, 50) * 1e6,
        "p99_us": percentile(times, 99) * 1e6,
        "mean_us": sum(times) / len(times) * 1e6,
        "samples_us": [round(t * 1e6, 1) for t in times],
    }


# hold: COUNT connections open at once, each echoing a byte; then, when told,
# 16 bytes more on each.


def raiseFileLimit() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (max(hard, 1 << 17), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)


class Held:
    __slots__ = ("sock", "state", "want", "got")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.state = "connecting"
        self.want = b""
        self.got = b""


class Crowd:
    """Many connections driven by one selector, each through its echo steps."""

    def __init__(self, port: int, inflight: int) -> None:
        self.port = port
        self.inflight = inflight
        self.selector = selectors.EpollSelector()
        self.everyone: list[Held] = []
        self.busy: set[Held] = set()
        self.connecting = 0
        self.toOpen = 0

    def openMore(self) -> None:
        while self.toOpen > 0 and self.connecting < self.inflight:
            self.toOpen -= 1
            sock = socket.socket()
            sock.setblocking(False)
            held = Held(sock)
            self.everyone.append(held)
            try:
                code = sock.connect_ex(("127.0.0.1", self.port))
            except OSError as e:
                held.state = f"failed:connect: {e!r}"
                sock.close()
                continue
            if code not in (0, errno.EINPROGRESS):
                held.state = f"failed:connect: {os.strerror(code)}"
                sock.close()
                continue
            self.selector.register(sock, selectors.EVENT_WRITE, held)
            self.busy.add(held)
            self.connecting += 1

    def fail(self, held: Held, why: str) -> None:
        if held.state == "connecting":
            self.connecting -= 1
        held.state = "failed:" + why
        self.busy.discard(held)
        try:
            self.selector.unregister(held.sock)
        except (KeyError, ValueError):
            pass

    def drive(self, stall: float, deadline: float) -> None:
        """Run until every connection is through its step, or none moved for C{stall} s."""
        last = time.monotonic()
        while (self.busy or self.toOpen) and time.monotonic() < deadline:
            self.openMore()
            events = self.selector.select(0.2)
            now = time.monotonic()
            if events:
                last = now
            elif now - last > stall:
                return
            for key, _ in events:
                self.step(key.data)

    def step(self, held: Held) -> None:
        if held.state == "connecting":
            err = held.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.fail(held, f"connect: {os.strerror(err)}")
                return
            self.connecting -= 1
            held.state = "echo1"
            held.want, held.got = stream.ECHO, b""
            try:
                held.sock.send(held.want)
            except OSError as e:
                self.fail(held, repr(e))
                return
            self.selector.modify(held.sock, selectors.EVENT_READ, held)
            return
        try:
            data = held.sock.recv(64)
        except BlockingIOError:
            return
        except OSError as e:
            self.fail(held, repr(e))
            return
        if not data:
            self.fail(held, "closed by the path")
            return
        if held.state not in ("echo1", "echo2"):
            self.fail(held, "bytes nobody asked for")
            return
        held.got += data
        if held.got == held.want:
            held.state = "open" if held.state == "echo1" else "done"
            self.busy.discard(held)
        elif not held.want.startswith(held.got):
            self.fail(held, "wrong echo")

    def errors(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for h in self.everyone:
            if h.state.startswith("failed:"):
                counts[h.state[7:]] = counts.get(h.state[7:], 0) + 1
        return counts

    def failed(self) -> int:
        return sum(1 for h in self.everyone if h.state.startswith("failed"))


def hold(port: int, count: int, stall: float, deadline: float, inflight: int) -> None:
    limit = raiseFileLimit()
    crowd = Crowd(port, inflight)
    crowd.toOpen = count
    start = time.monotonic()
    crowd.drive(stall, start + deadline)
    opened = [h for h in crowd.everyone if h.state == "open"]
    emit({
        "phase": "open",
        "count": count,
        "ok": len(opened),
        "failed": crowd.failed(),
        "stalled": len(crowd.busy) + crowd.toOpen,
        "errors": crowd.errors(),
        "seconds": time.monotonic() - start,
        "nofile": list(limit),
    })
    sys.stdin.readline()  # the memory is measured now
    start = time.monotonic()
    crowd.busy = set()
    for held in opened:
        held.state = "echo2"
        held.want, held.got = b"0123456789abcdef", b""
        crowd.busy.add(held)
        try:
            held.sock.send(held.want)
        except OSError as e:
            crowd.fail(held, repr(e))
    crowd.drive(stall, start + deadline)
    emit({
        "phase": "echo",
        "ok": sum(1 for h in crowd.everyone if h.state == "done"),
        "failed": crowd.failed(),
        "stalled": len(crowd.busy),
        "errors": crowd.errors(),
        "seconds": time.monotonic() - start,
    })
    for held in crowd.everyone:
        held.sock.close()


# push: as fast as the path takes it, into a server that reads RATE bytes/s.


def push(port: int, seconds: float, rate: int) -> dict:
    sock = connect(port)
    # The server gives up a little after the client, so it never outlives it.
    sock.sendall(stream.SLOW + stream.SLOW_ARGS.pack(rate, int((seconds + 1.5) * 1000)))
    sock.setblocking(False)
    chunk = memoryview(stream._block)[:65536]
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_WRITE)
    accepted = 0
    start = time.monotonic()
    end = start + seconds
    timeline = []
    error = None
    nextMark = start + 0.5
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if now >= nextMark:
            timeline.append([round(now - start, 2), accepted])
            nextMark += 0.5
        if not selector.select(min(0.1, end - now)):
            continue
        try:
            accepted += sock.send(chunk)
        except BlockingIOError:
            continue
        except OSError as e:
            error = repr(e)
            break
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    return {"seconds": seconds, "rate": rate, "accepted": accepted, "send_error": error,
            "timeline": timeline}


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="test", required=True)
    p = sub.add_parser("bulk")
    p.add_argument("port", type=int)
    p.add_argument("--direction", choices=["up", "down"], required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--checked", action="store_true")
    p = sub.add_parser("setup")
    p.add_argument("port", type=int)
    p.add_argument("--count", type=int, required=True)
    p = sub.add_parser("ping")
    p.add_argument("port", type=int)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--size", type=int, default=64)
    p = sub.add_parser("hold")
    p.add_argument("port", type=int)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--stall", type=float, default=15.0)
    p.add_argument("--deadline", type=float, default=120.0)
    p.add_argument("--inflight", type=int, default=100)
    p = sub.add_parser("push")
    p.add_argument("port", type=int)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--rate", type=int, required=True)
    a = parser.parse_args()
    if a.test == "bulk":
        emit(bulk(a.port, a.direction, a.size, a.checked))
    elif a.test == "setup":
        emit(setup(a.port, a.count))
    elif a.test == "ping":
        emit(ping(a.port, a.count, a.size))
    elif a.test == "hold":
        hold(a.port, a.count, a.stall, a.deadline, a.inflight)
    else:
        emit(push(a.port, a.seconds, a.rate))


if __name__ == "__main__":
    main()
