"""
Picking a free TCP port on loopback for a child process to listen on: the one
port picker of the demo, the tests and C{bench/}.
"""

from __future__ import annotations

import random
import socket

from relaynat.localstack.errors import LocalStackError


def pickFreePort(interface: str = "127.0.0.1") -> int:
    """
    A TCP port on C{interface} that nobody used a moment ago, for a child
    process to listen on.  It is taken below the kernel's range of ephemeral
    ports where there is room, so that no outgoing connection (of the tests
    running beside, say) takes it as its source port before the child binds.
    """
    low = 32768
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    candidates = [random.randrange(10000, low) for _ in range(50)] if low > 11000 else []
    for port in [*candidates, 0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((interface, port))
            except OSError:
                continue
            chosen: int = s.getsockname()[1]
            return chosen
    raise LocalStackError(f"no free TCP port on {interface}")

