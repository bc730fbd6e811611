"""
Network namespaces for the round-trip benchmark (bench/rtt.py): made and
removed with ip(8), entered by one thread at a time with setns(2) so that a
socket or a TUN descriptor opened there belongs to that namespace, and kept
there after the thread has come back.  Root only.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
#: TCP_LISTEN in /proc/net/tcp's "st" column.
LISTEN = "0A"

_libc = ctypes.CDLL(None, use_errno=True)


class NamespaceError(Exception):
    """A namespace could not be made, entered or removed; the message says why."""


def ip(*argv: str, namespace: str | None = None) -> str:
    """Run C{ip ARGV} (in C{namespace}, with C{ip -n}); its output, or NamespaceError."""
    command = ["ip", *(["-n", namespace] if namespace else []), *argv]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise NamespaceError(f"{' '.join(command)}: {done.stderr.strip()}")
    return done.stdout


def execArgv(namespace: str, argv: list[str]) -> list[str]:
    """C{argv} run in C{namespace}: ip(8) enters it and execs the program, same pid."""
    return ["ip", "netns", "exec", namespace, *argv]


def names() -> list[str]:
    """The named namespaces there are now."""
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def pids(namespace: str) -> list[int]:
    """The processes in C{namespace}."""
    try:
        return [int(p) for p in ip("netns", "pids", namespace).split()]
    except NamespaceError:
        return []


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise NamespaceError(f"setns: {os.strerror(errno)}")


@contextmanager
def entered(namespace: str) -> Iterator[None]:
    """
    The calling thread in C{namespace}, then back where it was.  Sockets and
    TUN descriptors opened inside stay in C{namespace}; their calls made
    later, from anywhere, act there.
    """
    try:
        target = os.open(f"/run/netns/{namespace}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise NamespaceError(f"no namespace {namespace}: {e}") from None
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def socketIn(namespace: str) -> socket.socket:
    """A TCP socket of C{namespace}."""
    with entered(namespace):
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM)


def openTun(namespace: str, device: str) -> int:
    """
    A non-blocking descriptor on the TUN device C{device} of C{namespace}
    (made with C{ip tuntap add ... mode tun}): raw IP packets, no header.
    """
    with entered(namespace):
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", device.encode(), IFF_TUN | IFF_NO_PI))
        except OSError as e:
            os.close(fd)
            raise NamespaceError(f"TUNSETIFF {device} in {namespace}: {e}") from None
    return fd


def listens(namespace: str, port: int) -> bool:
    """
    Whether a TCP socket listens on C{port} in C{namespace}, read from
    /proc: no connection is made, so no program sees one (a probe connection
    would itself open a tunnel in a relaynat client or an ssh -L).
    """
    needle = f":{port:04X}"
    with entered(namespace):
        for table in ("/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"):
            try:
                with open(table) as f:
                    next(f)
                    for line in f:
                        fields = line.split()
                        if fields[1].endswith(needle) and fields[3] == LISTEN:
                            return True
            except (OSError, StopIteration):
                continue
    return False
