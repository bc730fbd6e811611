"""
relaynat's benchmark: the same measuring client and the same echo/sink server,
joined by several paths in turn, every measurement interleaved across the paths
and repeated; a Markdown table of the medians on stdout, every value in JSON.

    python bench/run.py [--quick] [--only PATH[,PATH]] [--json OUT] [--profile DIR]

Paths: direct, socat (two chained), ssh (ssh -L into ssh -R through one private
sshd, aes128-gcm@openssh.com), haproxy and haproxy-splice (two haproxy hops in
TCP mode, the second pair splicing in the kernel both ways), stunnel (two stunnel hops,
TLS between them), portforward (twistd portforward), relaynat (relay, skeleton
and client twistd processes, TLS on), relaynat-open (the same with its server
not sealed).  Everything listens on 127.0.0.1, on ports below the kernel's
ephemeral range; every process this script starts is stopped by its pid.
bench/README.md says what is measured and how.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import attrs

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
# The relaynat paths are made by the checkout's own local-stack builder, as
# the demo's and the tests' are.
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from relaynat.config import ConfigError, parseToml, relayConfig, skeletonConfig  # noqa: E402
from relaynat.load import readConfig  # noqa: E402
from relaynat.localstack import (  # noqa: E402
    ROLES,
    LocalStackError,
    childEnvironment,
    pickFreePort,
    pollUntilBlocking,
    writeConfigs,
    writeKeysAndUsers,
)
from relaynat.localstack.serve import READY_BOUND, STOP_BOUND, readReady, serveArgv  # noqa: E402

VENV_BIN = os.path.join(REPO, ".venv", "bin")
PYTHON = sys.executable
TWISTD = os.path.join(VENV_BIN, "twistd")
RELAYNAT = os.path.join(VENV_BIN, "relaynat")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
PATHS = ("direct", "socat", "ssh", "haproxy", "haproxy-splice", "stunnel", "portforward",
         "relaynat", "relaynat-open")
CIPHER = "aes128-gcm@openssh.com"

FULL = {
    "bulk": 1 << 30, "checked": 64 << 20, "setup": 2000, "ping": 10000, "hold": 1000,
    "hold_many": 10000, "push_seconds": 6.0, "reps": 3,
}
QUICK = {
    "bulk": 64 << 20, "checked": 16 << 20, "setup": 200, "ping": 1000, "hold": 100,
    "hold_many": 1000, "push_seconds": 2.0, "reps": 1,
}
PUSH_RATE = 1_000_000
#: Measurements of memory per connection, made on freshly started relay sides.
FRESH = ("hold", "hold_many")


def log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """The benchmark cannot go on; the message says why."""


#: What a failure the bench reports raises: its own error, or the local
#: stack's (a wait that ran out, in L{pollUntilBlocking}).
BENCH_ERRORS = (BenchError, LocalStackError)


# Processes: everything started is remembered and stopped by its pid.


class Processes:
    """The processes this run started, stopped by pid (never by name)."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen] = []
        #: Seconds each process may take to end after SIGTERM, by pid.
        self.graces: dict[int, float] = {}

    def start(self, argv: list[str], log_path: str, grace: float = 5.0,
              **kwargs: Any) -> subprocess.Popen:
        """C{argv}, logging to C{log_path}; stopped with SIGKILL C{grace} s after SIGTERM."""
        out = open(log_path, "ab")
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, **kwargs,
            )
        finally:
            out.close()
        self.running.append(proc)
        self.graces[proc.pid] = grace
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        """SIGTERM, then SIGKILL after its grace; then its stray children."""
        grace = self.graces.pop(proc.pid, 5.0)
        children = descendants([proc.pid]) - {proc.pid}
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc in self.running:
            self.running.remove(proc)
        # Forked helpers (socat's children, sshd's sessions) end with their
        # connections; any still here after a moment are stopped by pid too.
        deadline = time.monotonic() + 2
        while children and time.monotonic() < deadline:
            children = {p for p in children if alive(p)}
            time.sleep(0.05)
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stopAll(self) -> None:
        for proc in reversed(list(self.running)):
            self.stop(proc)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


# /proc: CPU, memory and the process tree of a path's relay side.


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    # Fields from the state on (3rd field of proc(5) is index 0 here).
    return text.rsplit(")", 1)[1].split()


def parents() -> dict[int, int]:
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat(int(name))
            if fields is not None:
                table[int(name)] = int(fields[1])
    return table


def descendants(roots: Iterable[int]) -> set[int]:
    """C{roots} and every process below them."""
    found = {r for r in roots if _stat(r) is not None}
    if not found:
        return set()
    table = parents()
    grew = True
    while grew:
        grew = False
        for pid, ppid in table.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    return found


def cpuSeconds(pids: Iterable[int]) -> float:
    """utime+stime of each process, and of its children it has reaped."""
    total = 0
    for pid in pids:
        fields = _stat(pid)
        if fields is not None:
            total += sum(int(x) for x in fields[11:15])
    return total / CLK_TCK


def rssBytes(pids: Iterable[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except OSError:
            pass
    return total


def rollup(pids: Iterable[int]) -> dict[str, int]:
    """Rss and Pss in bytes, summed over C{pids}, from smaps_rollup."""
    total = {"rss": 0, "pss": 0}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        total["rss"] += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        total["pss"] += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def openFileLimit(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    soft, hard = line.split()[3:5]
                    return f"{soft}/{hard}"
    except OSError:
        return None
    return None


def fdCount(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


# Ports: below the ephemeral range, so the many outgoing connections of a run
# never take one, and checked free before use.


class Ports:
    """
    Free ports for one run, from the local stack's one port picker (below
    the ephemeral range, checked free), never the same one twice in a run.
    """

    def __init__(self) -> None:
        self.taken: set[int] = set()

    def take(self) -> int:
        for _ in range(100):
            try:
                port = pickFreePort()
            except LocalStackError as e:
                raise BenchError(str(e)) from None
            if port not in self.taken:
                self.taken.add(port)
                return port
        raise BenchError("no free port left that this run has not taken")


# Waiting: the local stack's one polling helper, with checks that raise
# until they hold.


def echo(port: int, timeout: float = 2.0) -> None:
    """One byte there and back through 127.0.0.1:C{port}; OSError or ValueError if not."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"e")
        got = s.recv(1)
    if got != b"e":
        raise ValueError(f"echoed {got!r}, not b'e'")


def echoWorks(port: int, timeout: float = 2.0) -> bool:
    try:
        echo(port, timeout)
    except (OSError, ValueError):
        return False
    return True


def connects(port: int) -> None:
    """A connection to 127.0.0.1:C{port} is accepted; OSError if not."""
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def running(procs: Iterable[subprocess.Popen]) -> Callable[[], None]:
    """A guard for L{pollUntilBlocking}: gives up once one of C{procs} has exited."""
    def guard() -> None:
        for p in procs:
            if p.poll() is not None:
                command = " ".join(os.path.basename(str(a)) for a in p.args[:4])
                raise BenchError(f"{command} exited with {p.returncode}")
    return guard


def logSize(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def lastLine(path: str, since: int = 0) -> str:
    """The last line a process wrote to its log C{path} after byte C{since}."""
    try:
        with open(path, errors="replace") as f:
            f.seek(since)
            lines = [line.strip() for line in f.read().splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][-300:] if lines else "(nothing)"


# Tools: installed from Debian's packages when missing.


def executable(*candidates: str | None) -> str | None:
    """The first of C{candidates} (paths, or names looked up on PATH) that runs."""
    for candidate in candidates:
        if candidate and os.path.sep not in candidate:
            candidate = shutil.which(candidate)
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def sshdPath() -> str | None:
    return executable("/usr/sbin/sshd", "sshd")


def haproxyPath() -> str | None:
    return executable("/usr/sbin/haproxy", "haproxy")


def stunnelPath() -> str | None:
    # Debian's stunnel4 installs stunnel4, and stunnel as a link to it.
    return executable("/usr/bin/stunnel4", "stunnel4", "stunnel")


#: What each path (or tool) needs from Debian: (package, whether it is there).
TOOLS: dict[str, list[tuple[str, Callable[[], bool]]]] = {
    "socat": [("socat", lambda: executable("socat") is not None)],
    "ssh": [("openssh-client", lambda: None not in (executable("ssh"), executable("ssh-keygen"))),
            ("openssh-server", lambda: sshdPath() is not None)],
    "haproxy": [("haproxy", lambda: haproxyPath() is not None)],
    "haproxy-splice": [("haproxy", lambda: haproxyPath() is not None)],
    "stunnel": [("stunnel4", lambda: stunnelPath() is not None),
                ("openssl", lambda: executable("openssl") is not None)],
    "curl": [("curl", lambda: executable("curl") is not None)],
}


def ensureTools(paths: Iterable[str]) -> None:
    """Install the Debian packages the C{paths} need and miss (as root)."""
    need = sorted({package for name in paths for package, there in TOOLS.get(name, [])
                   if not there()})
    if not need:
        return
    if os.geteuid() != 0:
        raise BenchError(f"missing {' '.join(need)}: run as root, or apt-get install them")
    log(f"installing {' '.join(need)} (apt-get update first)")
    # Installing openssh-server, haproxy or stunnel4 must not start the
    # system's service: a policy-rc.d that forbids starting services, only
    # for this install.  The bench runs private instances of its own.
    policy = "/usr/sbin/policy-rc.d"
    ours = not os.path.exists(policy)
    if ours:
        with open(policy, "w") as f:
            f.write("#!/bin/sh\n# relaynat bench: no service starts during its install\nexit 101\n")
        os.chmod(policy, 0o755)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *need],
                       check=True, env=env)
    finally:
        if ours:
            os.remove(policy)


# The paths.


class Path:
    """One way from the client to the server; its relay side is what is measured."""

    name = ""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.procs: list[subprocess.Popen] = []
        self.entry = 0

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        for proc in reversed(self.procs):
            self.bench.processes.stop(proc)
        self.procs = []

    def restart(self) -> None:
        self.stop()
        self.start()

    def roots(self) -> list[int]:
        return [p.pid for p in self.procs]

    def relaySide(self) -> set[int]:
        return descendants(self.roots())

    def relayOnly(self) -> set[int] | None:
        """The relay process alone, where the path has one (relaynat)."""
        return None

    def healthy(self) -> bool:
        return all(p.poll() is None for p in self.procs) and echoWorks(self.entry, 5)

    def logPath(self, name: str) -> str:
        return os.path.join(self.bench.tmp, f"{name}.log")

    def waitEcho(self, what: str, timeout: float = 15) -> None:
        """Wait until a byte comes back through the path's entry."""
        pollUntilBlocking(lambda: echo(self.entry), timeout, what, guard=running(self.procs))

    def spawn(self, argv: list[str], name: str, **kwargs: Any) -> subprocess.Popen:
        proc = self.bench.processes.start(argv, self.logPath(name), **kwargs)
        self.procs.append(proc)
        return proc


class Direct(Path):
    name = "direct"

    def start(self) -> None:
        self.entry = self.bench.serverPort


class Socat(Path):
    name = "socat"

    def start(self) -> None:
        ports = self.bench.ports
        self.entry, hop = ports.take(), ports.take()
        listen = "TCP4-LISTEN:{},bind=127.0.0.1,reuseaddr,fork,backlog=1024"
        self.spawn(["socat", listen.format(hop), f"TCP4:127.0.0.1:{self.bench.serverPort}"],
                   "socat-hop")
        self.spawn(["socat", listen.format(self.entry), f"TCP4:127.0.0.1:{hop}"], "socat-relay")
        self.waitEcho("socat")


def writeSshFiles(d: str, port: int, hosts: list[str]) -> None:
    """
    A private sshd's files in C{d}: host and user keys, an sshd_config
    listening on C{port} of each of C{hosts}, and the ssh_config and
    known_hosts that reach it as C{Host bench} (at C{hosts[0]}, or any of
    them with C{-o HostName=}).
    """
    os.makedirs(d, exist_ok=True)
    for key in ("host", "user"):
        if not os.path.exists(os.path.join(d, key)):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"bench-{key}",
                            "-f", os.path.join(d, key)], check=True)
    shutil.copy(os.path.join(d, "user.pub"), os.path.join(d, "authorized_keys"))
    listen = "".join(f"ListenAddress {host}\n" for host in hosts)
    with open(os.path.join(d, "sshd_config"), "w") as f:
        f.write(f"""\
Port {port}
{listen}HostKey {d}/host
PidFile {d}/sshd.pid
AuthorizedKeysFile {d}/authorized_keys
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin prohibit-password
AllowTcpForwarding yes
GatewayPorts no
X11Forwarding no
PermitTTY no
PrintMotd no
UseDNS no
Ciphers {CIPHER}
Compression no
MaxStartups 100:30:200
LogLevel ERROR
""")
    with open(os.path.join(d, "host.pub")) as f:
        hostKey = " ".join(f.read().split()[:2])
    with open(os.path.join(d, "known_hosts"), "w") as f:
        f.writelines(f"[{host}]:{port} {hostKey}\n" for host in hosts)
    with open(os.path.join(d, "ssh_config"), "w") as f:
        f.write(f"""\
Host bench
  HostName {hosts[0]}
  Port {port}
  User {getpass.getuser()}
  IdentityFile {d}/user
  IdentitiesOnly yes
  IdentityAgent none
  UserKnownHostsFile {d}/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  BatchMode yes
  Ciphers {CIPHER}
  Compression no
  ExitOnForwardFailure yes
  ControlMaster no
  ControlPath none
  LogLevel ERROR
""")


def sshdArgv(d: str) -> list[str]:
    """The private sshd of L{writeSshFiles}'s folder C{d}, in the foreground."""
    sshd = sshdPath()
    if sshd is None:
        raise BenchError("no sshd: apt-get install openssh-server")
    if os.geteuid() == 0:
        # sshd running as root wants its privilege separation directory.
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    return [sshd, "-D", "-e", "-f", f"{d}/sshd_config"]


def sshArgv(d: str, host: str | None = None) -> list[str]:
    """ssh to that sshd, no command (C{-N}); the forwarding flags and C{bench} follow."""
    return ["ssh", "-F", f"{d}/ssh_config", "-N", *(["-o", f"HostName={host}"] if host else [])]


class Ssh(Path):
    """ssh -L (the client's side) into ssh -R (the server's side) through one sshd."""

    name = "ssh"

    def start(self) -> None:
        b, ports = self.bench, self.bench.ports
        d = os.path.join(b.tmp, "ssh")
        sshPort, remote = ports.take(), ports.take()
        self.entry = ports.take()
        writeSshFiles(d, sshPort, ["127.0.0.1"])
        self.spawn(sshdArgv(d), "sshd")
        pollUntilBlocking(lambda: connects(sshPort), 15, "sshd", guard=running(self.procs))
        ssh = sshArgv(d)
        self.spawn(ssh + ["-R", f"127.0.0.1:{remote}:127.0.0.1:{b.serverPort}", "bench"], "ssh-R")
        pollUntilBlocking(lambda: connects(remote), 15, "ssh -R", guard=running(self.procs))
        self.spawn(ssh + ["-L", f"127.0.0.1:{self.entry}:127.0.0.1:{remote}", "bench"], "ssh-L")
        self.waitEcho("ssh -L")


#: Connections each haproxy process may hold: the 1,000-connection test with
#: room to spare.  haproxy sizes its open-file limit from it (two descriptors
#: a connection), within the hard limit it is given.
HAPROXY_MAXCONN = 4096


def haproxyConfig(listen: int, to: int, options: Iterable[str] = ()) -> str:
    """
    One TCP-mode hop from 127.0.0.1:C{listen} to 127.0.0.1:C{to}: no logs, no
    stats socket, no chroot or user switch (a private process, not the
    system's service); timeouts long enough for the bench's held and
    stalled connections; C{options} added to its C{defaults}.
    """
    extra = "".join(f"    {option}\n" for option in options)
    return f"""\
global
    maxconn {HAPROXY_MAXCONN}

defaults
    mode tcp
    maxconn {HAPROXY_MAXCONN}
    timeout connect 5s
    timeout client 10m
    timeout server 10m
{extra}
frontend hop
    bind 127.0.0.1:{listen} backlog 1024
    default_backend next

backend next
    server next 127.0.0.1:{to}
"""


class Haproxy(Path):
    """Two haproxy processes chained in TCP mode, each with its own file."""

    name = "haproxy"
    #: Lines added to both files' C{defaults}.
    options: tuple[str, ...] = ()

    def start(self) -> None:
        b, ports = self.bench, self.bench.ports
        haproxy = haproxyPath()
        if haproxy is None:
            raise BenchError("no haproxy: apt-get install haproxy")
        d = os.path.join(b.tmp, self.name)
        os.makedirs(d, exist_ok=True)
        self.entry, hop = ports.take(), ports.take()
        for role, listen, to in (("hop", hop, b.serverPort), ("relay", self.entry, hop)):
            config = os.path.join(d, f"{role}.cfg")
            with open(config, "w") as f:
                f.write(haproxyConfig(listen, to, self.options))
            # -db: in the foreground, one process, never daemonized.
            self.spawn([haproxy, "-db", "-f", config], f"{self.name}-{role}")
        self.waitEcho(self.name)


class HaproxySplice(Haproxy):
    """
    The same splicing in the kernel, forced both ways (C{option
    splice-request} and C{option splice-response}): C{option splice-auto},
    haproxy's heuristic, never spliced on loopback here (C{show info}:
    PipesUsed 0 through 1 GiB each way), so it measured plain haproxy again;
    forced, it is the faster of the two, the stricter anchor.
    """

    name = "haproxy-splice"
    options = ("option splice-request", "option splice-response")


def selfSignedCertificate(d: str, name: str = "127.0.0.1") -> tuple[str, str]:
    """A P-256 key and a self-signed certificate for C{name} (as relaynat keygen makes)."""
    key, cert = os.path.join(d, "key.pem"), os.path.join(d, "cert.pem")
    if not os.path.exists(cert):
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", key, "-out", cert, "-days", "7", "-subj", f"/CN={name}",
             "-addext", f"subjectAltName=IP:{name}"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return key, cert


def stunnelConfig(listen: int, to: int, key: str, cert: str, client: bool) -> str:
    """
    One stunnel hop from 127.0.0.1:C{listen} to 127.0.0.1:C{to}: with
    C{client}, plain in and TLS out, the other hop's certificate pinned
    (C{verifyPeer}: it must be the one in C{CAfile}); otherwise TLS in with
    that certificate and plain out.  In the foreground, no pid file, no
    syslog, warnings only (no line per connection).
    """
    ends = (f"client = yes\nCAfile = {cert}\nverifyPeer = yes\n" if client
            else f"cert = {cert}\nkey = {key}\n")
    return f"""\
foreground = yes
pid =
syslog = no
debug = warning

[hop]
accept = 127.0.0.1:{listen}
connect = 127.0.0.1:{to}
{ends}"""


class Stunnel(Path):
    """Two stunnel processes: plain in, TLS between them, plain out."""

    name = "stunnel"

    def start(self) -> None:
        b, ports = self.bench, self.bench.ports
        stunnel = stunnelPath()
        if stunnel is None:
            raise BenchError("no stunnel: apt-get install stunnel4")
        d = os.path.join(b.tmp, self.name)
        os.makedirs(d, exist_ok=True)
        key, cert = selfSignedCertificate(d)
        self.entry, hop = ports.take(), ports.take()
        for role, listen, to, client in (("hop", hop, b.serverPort, False),
                                         ("relay", self.entry, hop, True)):
            config = os.path.join(d, f"{role}.conf")
            with open(config, "w") as f:
                f.write(stunnelConfig(listen, to, key, cert, client))
            self.spawn([stunnel, config], f"{self.name}-{role}")
        self.waitEcho(self.name)


class Portforward(Path):
    name = "portforward"

    def start(self) -> None:
        self.entry = self.bench.ports.take()
        self.spawn([TWISTD, "-n", "--pidfile=", "portforward",
                    "-p", f"tcp:{self.entry}:interface=127.0.0.1:backlog=1024",
                    "-h", "127.0.0.1", "-d", str(self.bench.serverPort)], "portforward")
        self.waitEcho("twistd portforward", 30)


#: The open-file limit relaynat is started with, as systemd starts a service:
#: a low soft limit under a high hard one.  Each role holds two sockets per
#: tunnel, so 10,000 tunnels need more than 20,000 and the role must raise
#: its own soft limit at start-up.
SERVICE_NOFILE = (1024, 65536)


def serviceFileLimit() -> None:
    """
    In the child, before exec: L{SERVICE_NOFILE}, or the soft part of it
    under the hard limit there is where that cannot be raised (no
    CAP_SYS_RESOURCE, as in some containers).
    """
    soft, hard = SERVICE_NOFILE
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    except (ValueError, OSError):
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, hard), hard))


def startingFileLimit() -> str:
    """The soft/hard open-file limit L{serviceFileLimit} gives, as text."""
    out = subprocess.run(
        [sys.executable, "-c", "import resource; print(*resource.getrlimit(resource.RLIMIT_NOFILE),"
         " sep='/')"], preexec_fn=serviceFileLimit, capture_output=True, text=True, check=True)
    return out.stdout.strip()


@dataclass
class RelaynatFiles:
    """A folder with everything relaynat's three roles need, and where they listen."""

    dir: str
    clientsPort: int
    skeletonsPort: int
    #: The client's local listener: the tunnel's entry.
    entry: int
    settings: dict[str, Any]

    def serveArgv(self, namespaces: dict[str, str] | None = None) -> list[str]:
        """
        The local stack that runs the three roles from these files, as the
        demo runs them (run it with L{childEnvironment}); it writes its pids
        to L{ready} once the relay lists the skeleton's servers.
        """
        return serveArgv(self.dir, self.ready, namespaces)

    @property
    def ready(self) -> str:
        return os.path.join(self.dir, "ready.json")

    def started(self, stale: int | None = None) -> dict[str, int]:
        """
        The roles' pids, once the stack has written them (and a client other
        than C{stale}, after a restart); OSError or ValueError before.
        """
        pids: dict[str, int] = readReady(self.ready)["pids"]
        if pids["client"] == stale:
            raise ValueError(f"the client is still {stale}")
        return pids

    def roleLog(self, role: str) -> str:
        """Where the local stack keeps what C{role} logged, run after run."""
        return os.path.join(self.dir, f"{role}.log")


def writeRelaynatFiles(d: str, take: Callable[[], int], target: str, *,
                       clientsHost: str = "127.0.0.1", skeletonsHost: str = "127.0.0.1",
                       listenHost: str = "127.0.0.1",
                       server: dict[str, Any] | None = None) -> RelaynatFiles:
    """
    Keys, users, a secret and the three roles' files in C{d}, made from
    conf/ by the local stack's builder with only the addresses changed and
    L{BENCH_LIMITS} set: the relay listens for clients on C{clientsHost} and
    for skeletons on C{skeletonsHost}, the skeleton's server is C{target} (a
    C{tcp:} endpoint string), the client listens on C{listenHost}; ports
    come from C{take}.  C{server}: keys to set in the skeleton's
    C{[[server]]} over conf/'s.
    """
    try:
        configs = writeConfigs(
            d, targetPort(target), clientsHost=clientsHost, skeletonsHost=skeletonsHost,
            listenHost=listenHost, relay=BENCH_LIMITS, server={"target": target, **(server or {})},
            pickPort=take)
        writeKeysAndUsers(configs, names=[*dict.fromkeys((clientsHost, skeletonsHost))])
    except LocalStackError as e:
        raise BenchError(f"the relaynat files: {e}") from None
    # The settings as the roles will read them, defaults included: relaynat's
    # configuration owns those (the files the roles name are not read here).
    try:
        relay = relayConfig(parseToml(*readConfig(configs.relay)), configs.relay)
        skeleton = skeletonConfig(parseToml(*readConfig(configs.skeleton)), configs.skeleton)
    except ConfigError as e:
        raise BenchError(f"the relaynat files: {e}") from None
    settings = {"pool": skeleton.pool, "max_pool": relay.max_pool,
                "join_timeout": relay.join_timeout,
                "server": attrs.asdict(skeleton.servers[0])}
    return RelaynatFiles(configs.dir, configs.clientsPort, configs.skeletonsPort,
                         configs.tunnelPorts[0], settings)


def targetPort(target: str) -> int:
    """The port of the skeleton's server, a C{tcp:HOST:PORT} endpoint string."""
    try:
        return int(target.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        raise BenchError(f"the server must be tcp:HOST:PORT, not {target!r}") from None


#: The relay's caps raised for the benchmark, which is one client of one
#: user on one address opening 10,000 tunnels at once: the defaults (a
#: stranger's connections, one user's tunnels) are sized for a public relay.
BENCH_LIMITS = {
    "max_unauthenticated": 20_000,
    "max_unauthenticated_per_source": 20_000,
    "max_pending_per_session": 20_000,
    "max_pending_per_user": 20_000,
    "max_tunnels_per_user": 20_000,
}


#: The skeleton's [[server]] keys of the relaynat-open path: a server whose
#: bytes the client and skeleton do not seal end to end, so the relay may
#: pass them on as they are.
OPEN_SERVER = {"seal": False}


class Relaynat(Path):
    """
    The three roles as twistd processes, configured from conf/ with ports
    moved, started by relaynat's local stack as the demo's and the tests' are.
    """

    name = "relaynat"
    #: Keys set in the skeleton's [[server]] over conf/'s.
    server: dict[str, Any] = {}

    def prepare(self) -> None:
        """Keys, users, a secret and the three files, in a folder of their own."""
        b = self.bench
        self.files = writeRelaynatFiles(os.path.join(b.tmp, self.name), b.ports.take,
                                        f"tcp:127.0.0.1:{b.serverPort}", server=self.server)
        self.entry = self.files.entry
        self.settings = self.files.settings
        self.pids: dict[str, int] = {}

    def start(self) -> None:
        if not hasattr(self, "files"):
            self.prepare()
        files = self.files
        if os.path.exists(files.ready):
            os.remove(files.ready)
        # One process, relaynat's local stack, starts the three roles and
        # stops them when it is stopped; what is measured is the roles.
        mark = logSize(self.logPath(self.name))
        stack = self.spawn(files.serveArgv(), self.name, env=childEnvironment(),
                           preexec_fn=serviceFileLimit, grace=STOP_BOUND + 5)
        try:
            # The stack's own bound is the shorter: it gives up first, saying why.
            self.pids = pollUntilBlocking(files.started, READY_BOUND + 5,
                                          f"{self.name}'s local stack", guard=running([stack]))
            self.waitEcho(f"{self.name} tunnel", 30)
        except BENCH_ERRORS as e:
            raise BenchError(f"{e}{stackSaid(self.logPath(self.name), mark)}") from None

    def roots(self) -> list[int]:
        return list(self.pids.values())

    def relayOnly(self) -> set[int] | None:
        return {self.pids["relay"]}

    def logFile(self, role: str) -> str:
        return self.files.roleLog(role)

    def logMarks(self) -> dict[str, int]:
        return {role: logSize(self.logFile(role)) for role in ROLES}

    def logs(self, marks: dict[str, int]) -> str:
        """What the three processes logged since C{marks}."""
        text = []
        for role in ROLES:
            with open(self.logFile(role), errors="replace") as f:
                f.seek(marks.get(role, 0))
                text.append(f.read())
        return "\n".join(text)


def stackSaid(logPath: str, since: int = 0) -> str:
    """
    What a local stack that ended said of it after byte C{since} of its log:
    its line naming the role that failed, and that role's last line (a
    skeleton refusing its file says why).
    """
    try:
        with open(logPath, errors="replace") as f:
            f.seek(since)
            lines = [line.strip() for line in f.read().splitlines() if line.strip()]
    except OSError:
        return ""
    failed = [line for line in lines if line.startswith("relaynat local stack:")]
    if not failed:
        return ""
    said = f"; {failed[-1].rstrip(':')}"
    return said if lines[-1] == failed[-1] else f"{said}; it logged: {lines[-1][-300:]}"


class RelaynatOpen(Relaynat):
    """relaynat with its server not sealed (C{seal = false})."""

    name = "relaynat-open"
    server = OPEN_SERVER


PATH_CLASSES: dict[str, type[Path]] = {
    c.name: c for c in (Direct, Socat, Ssh, Haproxy, HaproxySplice, Stunnel, Portforward,
                        Relaynat, RelaynatOpen)
}


# The measurements.


class Sampler(threading.Thread):
    """Peak RSS and PSS of a path's relay side, sampled while a test runs."""

    def __init__(self, path: Path, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.path, self.interval = path, interval
        self.peakRss = self.peakPss = 0
        self.finished = threading.Event()

    def run(self) -> None:
        roots = self.path.roots()
        tick = 0
        while not self.finished.is_set():
            pids = descendants(roots)
            self.peakRss = max(self.peakRss, rssBytes(pids))
            if tick % 4 == 0:  # smaps_rollup walks the page tables: less often
                self.peakPss = max(self.peakPss, rollup(pids)["pss"])
            tick += 1
            self.finished.wait(self.interval)

    def stop(self) -> None:
        self.finished.set()
        self.join()


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sizes = dict(QUICK if args.quick else FULL)
        if args.reps:
            self.sizes["reps"] = args.reps
        self.processes = Processes()
        self.ports = Ports()
        self.tmp = tempfile.mkdtemp(prefix="relaynat-bench-")
        self.results: dict[str, dict[str, list]] = {}
        self.paths: dict[str, Path] = {}
        self.profiles: dict[str, Any] = {}

    # Running the client

    def load(self, *argv: str, timeout: float = 600) -> dict:
        out = subprocess.run([PYTHON, os.path.join(HERE, "load.py"), *argv], capture_output=True,
                             text=True, timeout=timeout)
        if out.returncode != 0:
            raise BenchError(f"load.py {' '.join(argv)} failed: {out.stderr.strip()[-600:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def quiesce(self, path: Path, timeout: float = 10.0) -> None:
        """Wait until the relay side is back to its own processes and idle."""
        deadline = time.monotonic() + timeout
        roots = set(path.roots())
        while time.monotonic() < deadline:
            pids = descendants(roots)
            before = cpuSeconds(pids)
            time.sleep(0.2)
            if pids <= roots | self.steady.get(path.name, set()) and \
                    cpuSeconds(pids) - before < 0.02:
                return

    # One measurement on one path

    def bulk(self, path: Path, direction: str) -> dict:
        pids = path.relaySide()
        only = path.relayOnly()
        cpu0 = cpuSeconds(pids)
        onlyCpu0 = cpuSeconds(only or ())
        r = self.load("bulk", str(path.entry), "--direction", direction,
                      "--size", str(self.sizes["bulk"]))
        # Children that came and went (socat) are in their parent's cutime
        # once reaped; the sleep lets that happen.
        time.sleep(0.3)
        cpu = cpuSeconds(descendants(path.roots()) | pids) - cpu0
        gb = r["bytes"] / 1e9 if r.get("bytes") else None
        r["relay_cpu_s"] = cpu
        r["cpu_s_per_gb"] = cpu / gb if gb else None
        if only:
            r["relay_only_cpu_s"] = cpuSeconds(only) - onlyCpu0
            r["relay_only_cpu_s_per_gb"] = r["relay_only_cpu_s"] / gb if gb else None
        return r

    def checked(self, path: Path) -> dict:
        size = str(self.sizes["checked"])
        up = self.load("bulk", str(path.entry), "--direction", "up", "--size", size, "--checked")
        down = self.load("bulk", str(path.entry), "--direction", "down", "--size", size,
                         "--checked")
        ok = all(x.get("count_ok") and x.get("sha256_ok") for x in (up, down))
        return {"ok": ok, "up": up, "down": down}

    def setup(self, path: Path) -> dict:
        pids = path.relaySide()
        cpu0 = cpuSeconds(pids)
        r = self.load("setup", str(path.entry), "--count", str(self.sizes["setup"]))
        time.sleep(0.3)
        r["relay_cpu_s"] = cpuSeconds(descendants(path.roots()) | pids) - cpu0
        return r

    def ping(self, path: Path) -> dict:
        return self.load("ping", str(path.entry), "--count", str(self.sizes["ping"]),
                         "--size", "64")

    def hold(self, path: Path, count: int) -> dict:
        """COUNT connections open at once; memory before and with them open."""
        side = path.relaySide()
        before = rollup(side)
        beforeOnly = rollup(path.relayOnly() or set())
        proc = subprocess.Popen(
            [PYTHON, os.path.join(HERE, "load.py"), "hold", str(path.entry), "--count", str(count),
             "--stall", "15", "--deadline", str(max(60, count / 50))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            assert proc.stdin is not None and proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                raise BenchError(f"load.py hold failed: {proc.stderr.read()[-600:]}")
            opened = json.loads(line)
            side = path.relaySide()
            withOpen = rollup(side)
            withOnly = rollup(path.relayOnly() or set())
            detail = {}
            if isinstance(path, Relaynat):
                for role, pid in path.pids.items():
                    detail[role] = {"fds": fdCount(pid), "nofile": openFileLimit(pid),
                                    "alive": alive(pid)}
            proc.stdin.write("go\n")
            proc.stdin.flush()
            echoed = json.loads(proc.stdout.readline() or "{}")
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        ok = echoed.get("ok", 0)
        per = max(1, opened["ok"])
        r = {
            "count": count, "open": opened, "echo": echoed, "ok": ok,
            "processes": len(side),
            "before": before, "with": withOpen,
            "rss_kb_per_conn": (withOpen["rss"] - before["rss"]) / per / 1024,
            "pss_kb_per_conn": (withOpen["pss"] - before["pss"]) / per / 1024,
            "per_conn_divisor": per,
            "roles": detail,
        }
        if path.relayOnly():
            r["relay_only"] = {
                "before": beforeOnly, "with": withOnly,
                "rss_kb_per_conn": (withOnly["rss"] - beforeOnly["rss"]) / per / 1024,
                "pss_kb_per_conn": (withOnly["pss"] - beforeOnly["pss"]) / per / 1024,
            }
        return r

    def push(self, path: Path) -> dict:
        pids = path.relaySide()
        base = rssBytes(pids)
        basePss = rollup(pids)["pss"]
        baseOnly = rssBytes(path.relayOnly() or set())
        sampler = Sampler(path)
        onlySampler = None
        if path.relayOnly():
            onlySampler = Sampler(path, 0.05)
            onlySampler.path = _Fixed(path.relayOnly() or set())
            onlySampler.start()
        sampler.start()
        try:
            r = self.load("push", str(path.entry), "--seconds", str(self.sizes["push_seconds"]),
                          "--rate", str(PUSH_RATE))
        finally:
            sampler.stop()
            if onlySampler:
                onlySampler.stop()
        r["rss_before"] = base
        r["rss_peak"] = sampler.peakRss
        r["rss_growth_mb"] = max(0, sampler.peakRss - base) / 1e6
        r["pss_growth_mb"] = max(0, sampler.peakPss - basePss) / 1e6
        if onlySampler:
            r["relay_only_rss_growth_mb"] = max(0, onlySampler.peakRss - baseOnly) / 1e6
        return r

    # The run

    def restart(self, path: Path) -> None:
        path.restart()
        self.steady[path.name] = path.relaySide()

    def record(self, path: str, test: str, value: Any) -> None:
        self.results.setdefault(path, {}).setdefault(test, []).append(value)

    def measure(self, path: Path, test: str, fn: Callable[[], Any]) -> None:
        if not path.healthy():
            log(f"{path.name} is not answering before {test}: restarting it")
            self.record(path.name, "restarts", {"before": test, "at": time.time()})
            self.restart(path)
        elif test in FRESH and path.procs:
            # Memory is measured on fresh processes: what an earlier test left
            # in a process's heap would otherwise hide what a connection costs.
            self.restart(path)
        self.quiesce(path)
        try:
            value = fn()
        except (*BENCH_ERRORS, OSError, subprocess.TimeoutExpired, ValueError) as e:
            value = {"error": str(e)}
            log(f"{path.name} {test}: {e}")
        self.record(path.name, test, value)
        log(f"{path.name:12} {test:10} {summary(test, value)}")

    def run(self) -> dict:
        a, sizes = self.args, self.sizes
        names = [p for p in PATHS if p in a.only] if a.only else list(PATHS)
        ensureTools(names)
        meta: dict[str, Any] = {"started": utcnow(), "load_before": os.getloadavg(),
                                "sizes": sizes, "quick": a.quick, "paths": names}
        self.steady: dict[str, set[int]] = {}
        self.serverPort = self.ports.take()
        server = self.processes.start([PYTHON, os.path.join(HERE, "server.py"),
                                       str(self.serverPort)],
                                      os.path.join(self.tmp, "server.log"))
        pollUntilBlocking(lambda: echo(self.serverPort), 15, "echo server",
                          guard=running([server]))
        for name in names:
            log(f"starting {name}")
            path = self.paths[name] = PATH_CLASSES[name](self)
            path.start()
            self.steady[name] = path.relaySide()
        meta["versions"] = versions(self.paths)
        meta["nofile_of_relay_side"] = list(resource.getrlimit(resource.RLIMIT_NOFILE))
        meta["nofile_of_relaynat"] = startingFileLimit()
        for name in ("relaynat", "relaynat-open"):
            if name in self.paths:
                meta[f"{name}_settings"] = self.paths[name].settings  # type: ignore[attr-defined]
        tests: list[tuple[str, Callable[[Path], Any]]] = [
            ("checked", self.checked),
            ("bulk_up", lambda p: self.bulk(p, "up")),
            ("bulk_down", lambda p: self.bulk(p, "down")),
            ("setup", self.setup),
            ("ping", self.ping),
            ("hold", lambda p: self.hold(p, sizes["hold"])),
            ("push", self.push),
        ]
        for rep in range(sizes["reps"]):
            order = names[rep % len(names):] + names[:rep % len(names)]
            log(f"repetition {rep + 1} of {sizes['reps']}: {', '.join(order)}")
            for test, fn in tests:
                for name in order:
                    path = self.paths[name]
                    if a.profile and name == "relaynat" and rep == 0 and \
                            test in ("bulk_up", "bulk_down", "setup"):
                        with Profile(self, path, test):
                            self.measure(path, test, lambda fn=fn, path=path: fn(path))
                    else:
                        self.measure(path, test, lambda fn=fn, path=path: fn(path))
        if "relaynat" in self.paths and not a.no_many:
            path = self.paths["relaynat"]
            log(f"relaynat: {sizes['hold_many']} tunnels at once")
            self.measure(path, "hold_many", lambda: self.holdMany(path))
        meta["finished"] = utcnow()
        meta["load_after"] = os.getloadavg()
        return meta

    def holdMany(self, path: Path) -> dict:
        assert isinstance(path, Relaynat)
        marks = path.logMarks()
        r = self.hold(path, self.sizes["hold_many"])
        r["alive_after"] = {role: alive(pid) for role, pid in path.pids.items()}
        logs = path.logs(marks)
        r["log_emfile"] = len(re.findall(r"Too many open files|EMFILE", logs))
        # What went wrong, as the relaynat processes logged it: the same
        # message with its numbers taken out, counted.
        problems: dict[str, int] = {}
        for line in logs.splitlines():
            if "#error]" in line or "#warn]" in line or "#critical]" in line:
                key = re.sub(r"\d+", "N", line.split("] ", 1)[-1])[:160]
                problems[key] = problems.get(key, 0) + 1
        r["log_problems"] = dict(sorted(problems.items(), key=lambda kv: -kv[1])[:10])
        r["failure"] = r["ok"] < r["count"]
        return r

    def cleanup(self) -> None:
        for path in reversed(list(self.paths.values())):
            path.stop()
        self.processes.stopAll()
        if not self.args.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)


class _Fixed:
    """A stand-in path whose relay side is a fixed set of pids."""

    def __init__(self, pids: set[int]) -> None:
        self.pids = pids

    def roots(self) -> list[int]:
        return list(self.pids)


class Profile:
    """py-spy on each relaynat process while one measurement runs."""

    def __init__(self, bench: Bench, path: Relaynat, test: str) -> None:
        self.bench, self.path, self.test = bench, path, test
        self.spies: list[tuple[str, subprocess.Popen, str]] = []

    def __enter__(self) -> None:
        spy = shutil.which("py-spy", path=VENV_BIN) or shutil.which("py-spy")
        if not spy:
            log("no py-spy: pip install py-spy into .venv to profile")
            return
        os.makedirs(self.bench.args.profile, exist_ok=True)
        for role, pid in self.path.pids.items():
            out = os.path.join(self.bench.args.profile, f"{self.test}-{role}.txt")
            proc = subprocess.Popen([spy, "record", "--nonblocking", "--function", "-r", "200",
                                     "-f", "raw", "-o", out, "-p", str(pid)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True)
            self.spies.append((role, proc, out))
        time.sleep(1.0)  # py-spy attaches
        self.started = time.monotonic()
        self.cpu = {role: cpuSeconds([pid]) for role, pid in self.path.pids.items()}

    def __exit__(self, *exc: Any) -> None:
        elapsed = time.monotonic() - getattr(self, "started", time.monotonic())
        busy = {role: (cpuSeconds([pid]) - self.cpu[role]) / elapsed
                for role, pid in self.path.pids.items()} if self.spies else {}
        for role, proc, out in self.spies:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            top = topFunctions(out, elapsed, 200)
            top["cpu_fraction"] = busy[role]
            self.bench.profiles[f"{self.test}/{role}"] = top


#: Frames under every sample (twistd, the reactor loop, its logging context):
#: left out of the cumulative list, which would otherwise show only them.
_FRAMEWORK = re.compile(
    r"^<module> |twisted/scripts/|twisted/application/|ReactorBase\.(run|mainLoop) "
    r"|EPollReactor\.doPoll |callWithLogger |callWithContext |_doReadOrWrite "
)


def topFunctions(raw: str, seconds: float, rate: int, n: int = 15) -> dict:
    selfCounts: dict[str, int] = {}
    cumCounts: dict[str, int] = {}
    total = 0
    try:
        with open(raw) as f:
            for line in f:
                stack, _, count = line.rstrip("\n").rpartition(" ")
                if not stack or not count.isdigit():
                    continue
                c = int(count)
                frames = stack.split(";")
                total += c
                selfCounts[frames[-1]] = selfCounts.get(frames[-1], 0) + c
                for frame in set(frames):
                    if not _FRAMEWORK.search(frame):
                        cumCounts[frame] = cumCounts.get(frame, 0) + c
    except OSError as e:
        return {"error": str(e)}
    top = lambda d: [[k, round(100 * v / total, 1)] for k, v in  # noqa: E731
                     sorted(d.items(), key=lambda kv: -kv[1])[:n]] if total else []
    return {"samples": total, "busy_fraction": total / max(1, seconds * rate),
            "self_pct": top(selfCounts), "cumulative_pct": top(cumCounts)}


def utcnow() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def command(argv: list[str]) -> str:
    """What C{argv} prints; a failure as one short line, never a traceback in the table."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"
    text = (out.stdout + out.stderr).strip()
    if out.returncode != 0:
        last = text.splitlines()[-1] if text else ""
        return f"unavailable (exit {out.returncode}: {last[:120]})"
    return text


def versions(paths: dict[str, Path]) -> dict[str, str]:
    v = {
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpu": next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                     if line.startswith("model name")), platform.machine()),
        "cores": str(os.cpu_count()),
        "memory": f"{os.sysconf('SC_PHYS_PAGES') * PAGE / 2**30:.1f} GiB",
        "os": next((line.split("=", 1)[1].strip().strip('"') for line in open("/etc/os-release")
                    if line.startswith("PRETTY_NAME=")), platform.platform()),
        "twisted": command([os.path.join(VENV_BIN, "python"), "-c",
                            "import twisted; print(twisted.__version__)"]),
        "openssl (relaynat)": command([os.path.join(VENV_BIN, "python"), "-c",
                                       "from OpenSSL import SSL; "
                                       "print(SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode())"]),
        "relaynat": command([RELAYNAT, "--version"]).removeprefix("relaynat").strip(),
        "git": command(["git", "-C", REPO, "describe", "--always", "--dirty"]),
    }
    if "socat" in paths:
        v["socat"] = command(["socat", "-V"]).splitlines()[1].strip()
    if "ssh" in paths:
        v["openssh"] = command(["ssh", "-V"])
    haproxy = haproxyPath()
    if haproxy and ("haproxy" in paths or "haproxy-splice" in paths):
        v["haproxy"] = command([haproxy, "-v"]).splitlines()[0].strip()
    stunnel = stunnelPath()
    if stunnel and "stunnel" in paths:
        v["stunnel"] = next((line.strip() for line in command([stunnel, "-version"]).splitlines()
                             if line.startswith("stunnel ")), "stunnel")
    return v


# The report


def summary(test: str, v: Any) -> str:
    if v.get("error"):
        return "ERROR " + str(v["error"])[:200]
    if test.startswith("bulk"):
        return f"{v.get('mb_per_s', 0):8.1f} MB/s  {v.get('cpu_s_per_gb') or 0:.2f} CPU s/GB " \
               f"count_ok={v.get('count_ok')}"
    if test == "checked":
        return f"sha256 ok={v['ok']}"
    if test == "setup":
        return f"{v['per_s']:8.1f}/s p50 {v['p50_ms']:.2f} ms p99 {v['p99_ms']:.2f} ms " \
               f"failed {v['failed']}"
    if test == "ping":
        return f"p50 {v['p50_us']:.0f} us p99 {v['p99_us']:.0f} us"
    if test in ("hold", "hold_many"):
        return f"{v['ok']}/{v['count']} ok, RSS {v['rss_kb_per_conn']:.1f} KB/conn, " \
               f"PSS {v['pss_kb_per_conn']:.1f} KB/conn, errors {v['open'].get('errors')}"
    if test == "push":
        return f"accepted {v['accepted'] / 1e6:.1f} MB, RSS growth {v['rss_growth_mb']:.1f} MB"
    return ""


def med(values: list[Any], key: Callable[[Any], Any]) -> float | None:
    got = []
    for v in values:
        if v.get("error"):
            continue
        x = key(v)
        if x is not None:
            got.append(x)
    return statistics.median(got) if got else None


def fmt(x: float | None, spec: str = ".0f") -> str:
    return "—" if x is None else format(x, spec)


def report(bench: Bench, meta: dict) -> str:
    res, sizes = bench.results, bench.sizes
    v = meta["versions"]
    reps = sizes["reps"]
    scale = "quick sizes (development only)" if meta["quick"] else "full sizes"
    lines = [
        f"### Benchmark, {meta['finished'][:10]}",
        "",
        f"Machine: {v['cpu']}, {v['cores']} cores, {v['memory']}, {v['os']}, "
        f"Linux {v['kernel']}. Python {v['python']}, Twisted {v['twisted']}, "
        f"{v['openssl (relaynat)']}, relaynat {v['relaynat']} ({v['git']})"
        + (f", {v['socat']}" if "socat" in v else "")
        + "".join(f", {v[tool]}" for tool in ("openssh", "haproxy", "stunnel") if tool in v)
        + ".",
        f"Load average before/after: {meta['load_before'][0]:.2f} / "
        f"{meta['load_after'][0]:.2f}. Open-file limit (soft/hard) of the other paths' "
        f"processes: {meta['nofile_of_relay_side'][0]}/{meta['nofile_of_relay_side'][1]}; "
        f"relaynat's roles are started with {meta.get('nofile_of_relaynat', '?')} and raise their own "
        "soft limit.",
        "",
        f"Medians of {reps} repetition{'s' if reps > 1 else ''}, {scale}: bulk "
        f"{sizes['bulk'] / 2**20:.0f} MiB each way (sha256 checked on "
        f"{sizes['checked'] / 2**20:.0f} MiB), {sizes['setup']} setups, {sizes['ping']} "
        f"ping-pongs of 64 B, {sizes['hold']} connections held, backpressure "
        f"{sizes['push_seconds']:.0f} s into a 1 MB/s reader. MB = 10^6 bytes; CPU is "
        "the relay side's user+system time per 10^9 bytes carried.",
        "",
        "| path | up MB/s | down MB/s | CPU s/GB up | CPU s/GB down | sha256 | setup conn/s "
        "| setup p50 ms | setup p99 ms | ping p50 µs | ping p99 µs | held ok "
        "| RSS KB/conn | PSS KB/conn | pushed MB | RSS growth MB | PSS growth MB |",
        "|---|---:|---:|---:|---:|:---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in meta["paths"]:
        r = res.get(name, {})
        get = lambda t, r=r: r.get(t, [])  # noqa: E731
        sha = get("checked")
        shaText = "ok" if sha and all(x.get("ok") for x in sha) else ("FAIL" if sha else "—")
        counts = get("bulk_up") + get("bulk_down")
        bad = [x for x in counts if x.get("error") or not x.get("count_ok")]
        held = med(get("hold"), lambda x: x["ok"])
        direct = name == "direct"
        row = [
            name + (" (count FAIL)" if bad else ""),
            fmt(med(get("bulk_up"), lambda x: x.get("mb_per_s"))),
            fmt(med(get("bulk_down"), lambda x: x.get("mb_per_s"))),
            "—" if direct else fmt(med(get("bulk_up"), lambda x: x.get("cpu_s_per_gb")), ".2f"),
            "—" if direct else fmt(med(get("bulk_down"), lambda x: x.get("cpu_s_per_gb")), ".2f"),
            shaText,
            fmt(med(get("setup"), lambda x: x["per_s"])),
            fmt(med(get("setup"), lambda x: x["p50_ms"]), ".2f"),
            fmt(med(get("setup"), lambda x: x["p99_ms"]), ".2f"),
            fmt(med(get("ping"), lambda x: x["p50_us"])),
            fmt(med(get("ping"), lambda x: x["p99_us"])),
            f"{fmt(held)}/{sizes['hold']}",
            "—" if direct else fmt(med(get("hold"), lambda x: x["rss_kb_per_conn"]), ".1f"),
            "—" if direct else fmt(med(get("hold"), lambda x: x["pss_kb_per_conn"]), ".1f"),
            fmt(med(get("push"), lambda x: x["accepted"] / 1e6), ".1f"),
            "—" if direct else fmt(med(get("push"), lambda x: x["rss_growth_mb"]), ".1f"),
            "—" if direct else fmt(med(get("push"), lambda x: x["pss_growth_mb"]), ".1f"),
        ]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append("Relay side: socat = both socat listeners and their forked children; ssh = "
                 "sshd and its session processes, ssh -L and ssh -R; haproxy, haproxy-splice, "
                 "stunnel = both processes of the pair; portforward = the twistd process; "
                 "relaynat, relaynat-open = the relay, skeleton and client twistd processes.")
    alone = [f"{name} up {fmt(relayCpu(res, name, 'up'), '.2f')}, down "
             f"{fmt(relayCpu(res, name, 'down'), '.2f')}"
             for name in ("relaynat", "relaynat-open") if name in meta["paths"]]
    if alone:
        lines.append("CPU s/GB of the relay process alone: " + "; ".join(alone) + ".")
    rn = res.get("relaynat") or res.get("relaynat-open")
    if rn:
        lines += ["", *targets(res, sizes)]
        many = rn.get("hold_many")
        if many:
            m = many[-1]
            if m.get("error"):
                lines.append(f"\n{sizes['hold_many']} tunnels at once: ERROR {m['error']}")
            else:
                verdict = "FAILURE" if m["failure"] else "ok"
                if m["failure"] and atFileLimit(m):
                    verdict = ("short by the open-file limit (every failure logged as 'Too many "
                               "open files', a role at its hard limit)")
                roles = ", ".join(f"{k} {d['fds']} fds of {d['nofile']}"
                                  + ("" if d["alive"] else " (dead)")
                                  for k, d in m["roles"].items())
                errs = m["open"].get("errors") or {}
                lines.append(
                    f"\n{m['count']} relaynat tunnels at once (one run, after the repetitions, on fresh "
                    f"processes): **{verdict}**, "
                    f"{m['open']['ok']} opened and {m['ok']} echoing "
                    f"({m['open']['failed']} failed, {m['open']['stalled']} stalled"
                    + (f": {', '.join(f'{k} ×{n}' for k, n in errs.items())}" if errs else "")
                    + f"); at the peak {roles}; relay side "
                    f"{m['rss_kb_per_conn']:.1f} KB RSS / {m['pss_kb_per_conn']:.1f} KB PSS per "
                    f"tunnel; 'Too many open files' in the logs: {m['log_emfile']}.")
                for text, n in list(m.get("log_problems", {}).items())[:4]:
                    lines.append(f"- logged {n}×: `{text}`")
    return "\n".join(lines)


def atFileLimit(many: dict) -> bool:
    """
    Did the 10,000-tunnel run fall short only because a role ran out of file
    descriptors under its hard limit (which the bench may not raise), rather
    than by a fault of relaynat's?
    """
    def atHardLimit(role: dict) -> bool:
        hard = str(role["nofile"]).rpartition("/")[2]
        return hard.isdigit() and (role["fds"] or 0) >= int(hard) - 32

    failed = many["count"] - many["ok"]
    full = any(atHardLimit(role) for role in many.get("roles", {}).values())
    return full and many["log_emfile"] >= failed and many["open"]["stalled"] == 0


#: Bulk, relaynat against the ssh chain: the target and the must.
BULK_VS_SSH = (2.0, 1.5)
#: CPU seconds per 10^9 bytes the relay process alone may spend in bulk.
RELAY_CPU_S_PER_GB = 0.5
#: KB of the relay process per idle tunnel, at the held-connections test.
RELAY_KB_PER_TUNNEL = 16


def bulkRate(res: dict, name: str, direction: str) -> float | None:
    return med(res.get(name, {}).get(f"bulk_{direction}", []), lambda x: x.get("mb_per_s"))


def relayCpu(res: dict, name: str, direction: str) -> float | None:
    return med(res.get(name, {}).get(f"bulk_{direction}", []),
               lambda x: x.get("relay_only_cpu_s_per_gb"))


def mark(ok: bool | None) -> str:
    return "—" if ok is None else ("met" if ok else "**missed**")


def tiered(ratio: float | None, target: float, must: float) -> str:
    """A ratio's verdict against a target and the lower bound that must hold."""
    if ratio is None:
        return "—"
    if ratio >= target:
        return "met"
    if ratio >= must:
        return f"**missed** (the must, {must}×, met)"
    return f"**missed** (the must, {must}×, too)"


def targets(res: dict, sizes: dict) -> list[str]:
    rn, ssh = res.get("relaynat", {}), res.get("ssh", {})
    out = ["Targets (ratios within the same run):", ""]

    def line(verdict: str, text: str) -> None:
        out.append(f"- {text}: {verdict}")

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a and b else None

    def times(r: float | None) -> str:
        return "—" if r is None else f"{r:.2f}×"

    target, must = BULK_VS_SSH
    for d in ("up", "down"):
        a, b = bulkRate(res, "relaynat", d), bulkRate(res, "ssh", d)
        r = ratio(a, b)
        line(tiered(r, target, must),
             f"relaynat bulk {d} ≥ {target}× ssh (must: ≥ {must}×): {fmt(a)} vs {fmt(b)} MB/s "
             f"= {times(r)}")
    for d in ("up", "down"):
        a, b = bulkRate(res, "relaynat", d), bulkRate(res, "socat", d)
        r = ratio(a, b)
        line(mark(None if r is None else r >= 1),
             f"relaynat bulk {d} ≥ socat x2: {fmt(a)} vs {fmt(b)} MB/s = {times(r)}")
    for d in ("up", "down"):
        a = bulkRate(res, "relaynat-open", d)
        rates = {name: bulkRate(res, name, d) for name in ("haproxy", "haproxy-splice")}
        known = {name: x for name, x in rates.items() if x is not None}
        faster = max(known, key=lambda name: known[name]) if known else None
        b = known.get(faster) if faster else None
        r = ratio(a, b)
        line(mark(None if r is None else r >= 1),
             f"relaynat-open bulk {d} ≥ haproxy x2 (the faster of haproxy and haproxy-splice"
             f"{': ' + faster if faster else ''}): {fmt(a)} vs {fmt(b)} MB/s = {times(r)}")
    up, down = relayCpu(res, "relaynat", "up"), relayCpu(res, "relaynat", "down")
    line(mark(None if up is None or down is None else max(up, down) <= RELAY_CPU_S_PER_GB),
         f"relay CPU ≤ {RELAY_CPU_S_PER_GB} s per GB carried (relaynat's relay process alone): "
         f"up {fmt(up, '.2f')}, down {fmt(down, '.2f')} s/GB")
    rate = med(rn.get("setup", []), lambda x: x["per_s"])
    p99 = med(rn.get("setup", []), lambda x: x["p99_ms"])
    line(mark(None if rate is None or p99 is None else rate >= 1000 and p99 < 5),
         f"setup ≥ 1,000 tunnels/s with p99 < 5 ms: {fmt(rate)}/s, p99 {fmt(p99, '.2f')} ms")
    a = med(rn.get("ping", []), lambda x: x["p50_us"])
    b = med(ssh.get("ping", []), lambda x: x["p50_us"])
    line(mark(None if a is None or b is None else a <= b),
         f"ping-pong p50 ≤ ssh's: {fmt(a)} vs {fmt(b)} µs")
    rss = med(rn.get("hold", []), lambda x: x["relay_only"]["rss_kb_per_conn"])
    pss = med(rn.get("hold", []), lambda x: x["relay_only"]["pss_kb_per_conn"])
    allRss = med(rn.get("hold", []), lambda x: x["rss_kb_per_conn"])
    line(mark(None if rss is None else rss <= RELAY_KB_PER_TUNNEL),
         f"relay memory ≤ {RELAY_KB_PER_TUNNEL} KB per idle tunnel at {sizes['hold']}: relay "
         f"process {fmt(rss, '.1f')} KB RSS / {fmt(pss, '.1f')} KB PSS (relay+skeleton+client: "
         f"{fmt(allRss, '.1f')} KB RSS)")
    growth = med(rn.get("push", []), lambda x: x["rss_growth_mb"])
    only = med(rn.get("push", []), lambda x: x.get("relay_only_rss_growth_mb"))
    line(mark(None if growth is None else growth < 10),
         f"backpressure RSS growth < 10 MB: relay side {fmt(growth, '.1f')} MB "
         f"(relay process {fmt(only, '.1f')} MB)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repetition")
    parser.add_argument("--only", type=lambda s: s.split(","), default=None,
                        help=f"comma-separated paths from {', '.join(PATHS)} (default: all)")
    parser.add_argument("--json", default=None, help="where to write every value "
                        "(default bench/results/bench-DATE.json)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 3, quick 1)")
    parser.add_argument("--no-many", action="store_true", help="skip the 10,000-tunnel run")
    parser.add_argument("--profile", default=None, metavar="DIR",
                        help="py-spy the relaynat processes during bulk and setup (rep 1)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and logs")
    args = parser.parse_args()
    for name in args.only or []:
        if name not in PATHS:
            parser.error(f"unknown path {name!r}: choose from {', '.join(PATHS)}")
    out = args.json or os.path.join(HERE, "results",
                                    f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json")
    bench = Bench(args)

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    started = time.monotonic()
    try:
        meta = bench.run()
    except BENCH_ERRORS as e:
        log(f"error: {e}")
        bench.cleanup()
        sys.exit(1)
    except BaseException:
        bench.cleanup()
        raise
    log(f"temporary files in {bench.tmp}" if args.keep else "cleaning up")
    bench.cleanup()
    meta["wall_seconds"] = time.monotonic() - started
    table = report(bench, meta)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"meta": meta, "results": bench.results, "profiles": bench.profiles}, f,
                  indent=1)
    with open(os.path.splitext(out)[0] + ".md", "w") as f:
        f.write(table + "\n")
    print(table)
    if bench.profiles:
        print()
        print(profileReport(bench.profiles))
    log(f"every value: {out} (table: {os.path.splitext(out)[0]}.md), "
        f"{meta['wall_seconds']:.0f} s in all")


def profileReport(profiles: dict) -> str:
    lines = ["py-spy, relaynat processes: share of the busy samples (idle ones left out)"]
    for key, p in profiles.items():
        if "error" in p:
            lines.append(f"\n{key}: {p['error']}")
            continue
        lines.append(f"\n#### {key}: {100 * p['cpu_fraction']:.0f}% of a core (from /proc), "
                     f"{p['samples']} samples")
        lines.append("| self % | function | | cumulative % | function |")
        lines.append("|---:|---|---|---:|---|")
        for (sf, sp), (cf, cp) in zip(p["self_pct"], p["cumulative_pct"], strict=False):
            lines.append(f"| {sp} | `{sf}` | | {cp} | `{cf}` |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
