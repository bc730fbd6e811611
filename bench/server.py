"""
The benchmark's echo/sink/source server: one process, one epoll loop, plain
non-blocking sockets, so that it costs as little as it can and never shares a
loop with the measuring client.  What it does on each connection is in
L{stream}.

    python server.py PORT      # 0 for any; prints the port it listens on
"""

from __future__ import annotations

import hashlib
import os
import resource
import selectors
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import stream  # noqa: E402

TICK = 0.01
READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE
_buffer = bytearray(1 << 20)
_view = memoryview(_buffer)


def raiseFileLimit() -> None:
    """As many descriptors as this process may have: 10,000 tunnels need them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (max(hard, 1 << 17), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return
        except (ValueError, OSError):
            continue


class Connection:
    def __init__(self, server: Server, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.header = b""
        self.mode = b""
        self.pending = memoryview(b"")
        self.events = READ
        # upload
        self.remaining = 0
        self.count = 0
        self.hash: hashlib._Hash | None = None
        # download
        self.source = None
        self.current = memoryview(b"")
        # slow sink
        self.rate = 0
        self.until = 0.0

    def setEvents(self, events: int) -> None:
        if events == self.events:
            return
        if self.events and events:
            self.server.selector.modify(self.sock, events, self)
        elif events:
            self.server.selector.register(self.sock, events, self)
        else:
            self.server.selector.unregister(self.sock)
        self.events = events

    def close(self, reset: bool = False) -> None:
        if self.sock.fileno() < 0:
            return
        if self.events:
            self.server.selector.unregister(self.sock)
            self.events = 0
        if reset:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()
        self.server.slow.discard(self)

    # Reading

    def _recv(self, size: int) -> int:
        """Bytes read into _buffer; 0 when there are none now or the connection ended."""
        try:
            n = self.sock.recv_into(_buffer, size)
        except BlockingIOError:
            return 0
        except OSError:
            n = 0
        if n == 0:
            self.close()
        return n

    def readable(self) -> None:
        if self.mode == stream.UPLOAD:
            self._sink()
            return
        n = self._recv(65536 if self.mode in (b"", stream.ECHO) else len(_buffer))
        if n == 0:
            return
        data = bytes(_view[:n])
        if not self.mode:
            self._start(data)
        elif self.mode == stream.ECHO:
            self._echo(data)
        # d waits for the close; s is not registered for reading

    def _start(self, data: bytes) -> None:
        self.header += data
        kind = self.header[:1]
        if kind == stream.ECHO:
            self.mode = stream.ECHO
            self._echo(self.header)
            return
        size = {stream.UPLOAD: stream.SIZED.size, stream.DOWNLOAD: stream.SIZED.size,
                stream.SLOW: stream.SLOW_ARGS.size}.get(kind)
        if size is None:
            self.close(reset=True)
            return
        if len(self.header) < 1 + size:
            return
        rest = self.header[1 + size:]
        if kind == stream.SLOW:
            self.rate, ms = stream.SLOW_ARGS.unpack(self.header[1:1 + size])
            self.mode = kind
            self.until = time.monotonic() + ms / 1000
            self.setEvents(0)
            self.server.slow.add(self)
            return
        total, flags = stream.SIZED.unpack(self.header[1:1 + size])
        checked = bool(flags & stream.CHECKED)
        self.mode = kind
        if kind == stream.UPLOAD:
            self.remaining = total
            self.hash = hashlib.sha256() if checked else None
            if rest:
                self._consume(memoryview(rest))
            if self.remaining == 0:
                self._answer()
        else:
            self.source = stream.chunks(total, checked)
            self.setEvents(WRITE)

    def _echo(self, data: bytes) -> None:
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close()
            return
        if sent < len(data):
            self.pending = memoryview(data)[sent:]
            self.setEvents(WRITE)

    def _consume(self, data: memoryview) -> None:
        take = min(len(data), self.remaining)
        if self.hash is not None:
            self.hash.update(data[:take])
        self.remaining -= take
        self.count += len(data)

    def _sink(self) -> None:
        while True:
            n = self._recv(len(_buffer))
            if n == 0:
                return
            if self.remaining:
                self._consume(_view[:n])
                if self.remaining == 0:
                    self._answer()
            else:
                self.count += n

    def _answer(self) -> None:
        digest = self.hash.digest() if self.hash is not None else bytes(32)
        self.pending = memoryview(stream.ANSWER.pack(self.count, digest))
        self.setEvents(WRITE)

    # Writing

    def writable(self) -> None:
        if self.mode == stream.DOWNLOAD:
            self._source()
            return
        try:
            sent = self.sock.send(self.pending)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        self.pending = self.pending[sent:]
        if not self.pending:
            self.setEvents(READ)

    def _source(self) -> None:
        assert self.source is not None
        while True:
            if not self.current:
                self.current = next(self.source, memoryview(b""))
                if not self.current:
                    self.setEvents(READ)  # until the peer closes
                    return
            try:
                sent = self.sock.send(self.current)
            except BlockingIOError:
                return
            except OSError:
                self.close()
                return
            self.current = self.current[sent:]

    # The slow sink

    def tick(self, now: float) -> None:
        if now >= self.until:
            self.close(reset=True)
            return
        budget = max(1, int(self.rate * TICK))
        while budget > 0:
            try:
                n = self.sock.recv_into(_buffer, min(budget, len(_buffer)))
            except BlockingIOError:
                return
            except OSError:
                self.close()
                return
            if n == 0:
                self.close()
                return
            budget -= n


class Server:
    def __init__(self, port: int) -> None:
        self.selector = selectors.EpollSelector()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(4096)
        self.listener.setblocking(False)
        self.selector.register(self.listener, READ, None)
        self.slow: set[Connection] = set()

    @property
    def port(self) -> int:
        return int(self.listener.getsockname()[1])

    def accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as e:  # EMFILE and friends: say so, keep serving
                print(f"server: accept failed: {e}", file=sys.stderr, flush=True)
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = Connection(self, sock)
            self.selector.register(sock, READ, connection)

    def run(self) -> None:
        nextTick = 0.0
        while True:
            timeout = None
            if self.slow:
                timeout = max(0.0, nextTick - time.monotonic())
            for key, events in self.selector.select(timeout):
                connection = key.data
                if connection is None:
                    self.accept()
                    continue
                if events & READ and connection.events & READ:
                    connection.readable()
                if events & WRITE and connection.events & WRITE:
                    connection.writable()
            if self.slow:
                now = time.monotonic()
                if now >= nextTick:
                    for connection in list(self.slow):
                        connection.tick(now)
                    nextTick = now + TICK


def main() -> None:
    raiseFileLimit()
    server = Server(int(sys.argv[1]))
    print(server.port, flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
