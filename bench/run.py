"""
relaynat's benchmark: the same measuring client and the same echo/sink server,
joined by five paths in turn, every measurement interleaved across the paths
and repeated; a Markdown table of the medians on stdout, every value in JSON.

    python bench/run.py [--quick] [--only PATH[,PATH]] [--json OUT] [--profile DIR]

Paths: direct, socat (two chained), ssh (ssh -L into ssh -R through one private
sshd, aes128-gcm@openssh.com), portforward (twistd portforward), relaynat (relay,
skeleton and client twistd processes, TLS on).  Everything listens on
127.0.0.1, on ports below the kernel's ephemeral range; every process this
script starts is stopped by its pid.  bench/README.md says what is measured and
how.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import json
import os
import platform
import random
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
import tomllib
from collections.abc import Callable, Iterable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
VENV_BIN = os.path.join(REPO, ".venv", "bin")
PYTHON = sys.executable
TWISTD = os.path.join(VENV_BIN, "twistd")
RELAYNAT = os.path.join(VENV_BIN, "relaynat")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
PATHS = ("direct", "socat", "ssh", "portforward", "relaynat")
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


# Processes: everything started is remembered and stopped by its pid.


class Processes:
    """The processes this run started, stopped by pid (never by name)."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen] = []

    def start(self, argv: list[str], log_path: str, **kwargs: Any) -> subprocess.Popen:
        out = open(log_path, "ab")
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, **kwargs,
            )
        finally:
            out.close()
        self.running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after C{grace} seconds; then its stray children."""
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
    def __init__(self) -> None:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
        self.high = low - 1
        self.next = random.randint(max(1024, low - 12000), max(1100, low - 2000))

    def take(self) -> int:
        while self.next <= self.high:
            port = self.next
            self.next += 1
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
        raise BenchError("no free port below the ephemeral range")


def echoWorks(port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"e")
            return s.recv(1) == b"e"
    except OSError:
        return False


def waitFor(what: str, check: Callable[[], bool], timeout: float, procs: list = ()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        for p in procs:
            if p.poll() is not None:
                raise BenchError(f"{what}: process {p.args[0]} exited with {p.returncode}")
        time.sleep(0.1)
    raise BenchError(f"{what}: not ready after {timeout:.0f} s")


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


# Tools: installed from Debian's packages when missing.


def ensureTools(paths: list[str]) -> None:
    need = []
    if "socat" in paths and not shutil.which("socat"):
        need.append("socat")
    if "ssh" in paths:
        if not (shutil.which("ssh") and shutil.which("ssh-keygen")):
            need.append("openssh-client")
        if not sshdPath():
            need.append("openssh-server")
    if not need:
        return
    if os.geteuid() != 0:
        raise BenchError(f"missing {' '.join(need)}: run as root, or apt-get install them")
    log(f"installing {' '.join(need)} (apt-get update first)")
    # Installing openssh-server must not start the system's sshd: a
    # policy-rc.d that forbids starting services, only for this install.
    policy = "/usr/sbin/policy-rc.d"
    ours = not os.path.exists(policy)
    if ours:
        with open(policy, "w") as f:
            f.write("#!/bin/sh\n# relaynat bench: no service starts during its install\nexit 101\n")
        os.chmod(policy, 0o755)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends",
             "socat", "openssh-client", "openssh-server"],
            check=True, env=env,
        )
    finally:
        if ours:
            os.remove(policy)


def sshdPath() -> str | None:
    for candidate in ("/usr/sbin/sshd", shutil.which("sshd")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


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

    def spawn(self, argv: list[str], name: str, **kwargs: Any) -> subprocess.Popen:
        proc = self.bench.processes.start(argv, os.path.join(self.bench.tmp, f"{name}.log"),
                                          **kwargs)
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
        waitFor("socat", lambda: echoWorks(self.entry), 15, self.procs)


class Ssh(Path):
    """ssh -L (the client's side) into ssh -R (the server's side) through one sshd."""

    name = "ssh"

    def start(self) -> None:
        b, ports = self.bench, self.bench.ports
        d = os.path.join(b.tmp, "ssh")
        os.makedirs(d, exist_ok=True)
        sshd = sshdPath()
        assert sshd is not None
        for key in ("host", "user"):
            if not os.path.exists(os.path.join(d, key)):
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"bench-{key}",
                                "-f", os.path.join(d, key)], check=True)
        shutil.copy(os.path.join(d, "user.pub"), os.path.join(d, "authorized_keys"))
        sshPort, remote = ports.take(), ports.take()
        self.entry = ports.take()
        with open(os.path.join(d, "sshd_config"), "w") as f:
            f.write(f"""\
Port {sshPort}
ListenAddress 127.0.0.1
HostKey {d}/host
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
            f.write(f"[127.0.0.1]:{sshPort} {hostKey}\n")
        with open(os.path.join(d, "ssh_config"), "w") as f:
            f.write(f"""\
Host bench
  HostName 127.0.0.1
  Port {sshPort}
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
        if os.geteuid() == 0:
            # sshd running as root wants its privilege separation directory.
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.spawn([sshd, "-D", "-e", "-f", f"{d}/sshd_config"], "sshd")
        waitFor("sshd", lambda: listening(sshPort), 15, self.procs)
        ssh = ["ssh", "-F", f"{d}/ssh_config", "-N"]
        self.spawn(ssh + ["-R", f"127.0.0.1:{remote}:127.0.0.1:{b.serverPort}", "bench"], "ssh-R")
        waitFor("ssh -R", lambda: listening(remote), 15, self.procs)
        self.spawn(ssh + ["-L", f"127.0.0.1:{self.entry}:127.0.0.1:{remote}", "bench"], "ssh-L")
        waitFor("ssh -L", lambda: echoWorks(self.entry), 15, self.procs)


class Portforward(Path):
    name = "portforward"

    def start(self) -> None:
        self.entry = self.bench.ports.take()
        self.spawn([TWISTD, "-n", "--pidfile=", "portforward",
                    "-p", f"tcp:{self.entry}:interface=127.0.0.1:backlog=1024",
                    "-h", "127.0.0.1", "-d", str(self.bench.serverPort)], "portforward")
        waitFor("twistd portforward", lambda: echoWorks(self.entry), 30, self.procs)


def tomlText(document: dict[str, Any]) -> str:
    """TOML for the flat tables and arrays of tables the relaynat files use."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise BenchError(f"cannot write {v!r} as TOML")

    lines = []
    for name, table in document.items():
        for entry in table if isinstance(table, list) else [table]:
            lines.append(f"[[{name}]]" if isinstance(table, list) else f"[{name}]")
            lines += [f"{k} = {value(v)}" for k, v in entry.items()]
            lines.append("")
    return "\n".join(lines)


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


class Relaynat(Path):
    """The three roles as twistd processes, configured from conf/ with ports moved."""

    name = "relaynat"
    ROLES = ("relay", "skeleton", "client")

    def prepare(self) -> None:
        """Keys, users, a secret and the three files, in a folder of their own."""
        b, ports = self.bench, self.bench.ports
        d = self.dir = os.path.join(b.tmp, "relaynat")
        os.makedirs(d, exist_ok=True)
        conf = {role: tomllib.load(open(os.path.join(REPO, "conf", f"{role}.toml"), "rb"))
                for role in self.ROLES}
        run = lambda *argv: subprocess.run([RELAYNAT, *argv], check=True, cwd=d,  # noqa: E731
                                           stdout=subprocess.DEVNULL)
        run("keygen", d, "--name", "127.0.0.1")
        server = dict(conf["skeleton"]["server"][0])
        serverId = server["id"]
        skeletonUser = conf["skeleton"]["skeleton"].get("user", "bench-skeleton")
        clientUser = conf["client"]["client"].get("user", "bench-client")
        for user, rights in ((skeletonUser, ["--register", serverId]),
                             (clientUser, ["--join", serverId])):
            with open(os.path.join(d, f"{user}.password"), "w") as f:
                f.write(f"bench-{random.getrandbits(64):x}\n")
            run("passwd", "users", user, "--password-file", f"{user}.password", *rights)
        run("secret", f"{serverId}.secret")
        self.clientsPort, self.skeletonsPort = ports.take(), ports.take()
        self.entry = ports.take()
        relay = dict(conf["relay"]["relay"], key="relay.key", cert="relay.pem", users="users",
                     clients=f"tcp:{self.clientsPort}:interface=127.0.0.1",
                     skeletons=f"tcp:{self.skeletonsPort}:interface=127.0.0.1")
        if "web" in relay:
            relay["web"] = f"tcp:{ports.take()}:interface=127.0.0.1"
        skeleton = dict(conf["skeleton"]["skeleton"], relay=f"tcp:127.0.0.1:{self.skeletonsPort}",
                        relay_key="relay.pem", password_file=f"{skeletonUser}.password")
        server.update(target=f"tcp:127.0.0.1:{b.serverPort}", secret_file=f"{serverId}.secret")
        client = dict(conf["client"]["client"], relay=f"tcp:127.0.0.1:{self.clientsPort}",
                      relay_key="relay.pem", password_file=f"{clientUser}.password")
        tunnel = dict(conf["client"]["tunnel"][0], server=serverId,
                      listen=f"tcp:{self.entry}:interface=127.0.0.1",
                      secret_file=f"{serverId}.secret")
        documents = {
            "relay": {**conf["relay"], "relay": relay},
            "skeleton": {**conf["skeleton"], "skeleton": skeleton, "server": [server]},
            "client": {**conf["client"], "client": client, "tunnel": [tunnel]},
        }
        for role, document in documents.items():
            with open(os.path.join(d, f"{role}.toml"), "w") as f:
                f.write(tomlText(document))
        self.settings = {"pool": skeleton.get("pool", 1),
                         "max_pool": relay.get("max_pool", 64),
                         "join_timeout": relay.get("join_timeout", 10)}

    def start(self) -> None:
        if not hasattr(self, "dir"):
            self.prepare()
        self.pids: dict[str, int] = {}
        for role in self.ROLES:
            proc = self.spawn([TWISTD, "-n", "--pidfile=", role, "--config",
                               os.path.join(self.dir, f"{role}.toml")], f"relaynat-{role}",
                              cwd=self.dir, preexec_fn=serviceFileLimit)
            self.pids[role] = proc.pid
            if role == "relay":
                waitFor("relaynat relay", lambda: listening(self.clientsPort), 30, self.procs)
        waitFor("relaynat tunnel", lambda: echoWorks(self.entry), 30, self.procs)

    def relayOnly(self) -> set[int] | None:
        return {self.pids["relay"]}

    def logFile(self, role: str) -> str:
        return os.path.join(self.bench.tmp, f"relaynat-{role}.log")

    def logMarks(self) -> dict[str, int]:
        return {role: os.path.getsize(self.logFile(role)) for role in self.ROLES}

    def logs(self, marks: dict[str, int]) -> str:
        """What the three processes logged since C{marks}."""
        text = []
        for role in self.ROLES:
            with open(self.logFile(role), errors="replace") as f:
                f.seek(marks.get(role, 0))
                text.append(f.read())
        return "\n".join(text)


PATH_CLASSES = {c.name: c for c in (Direct, Socat, Ssh, Portforward, Relaynat)}


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
        cpu0 = cpuSeconds(pids)
        r = self.load("bulk", str(path.entry), "--direction", direction,
                      "--size", str(self.sizes["bulk"]))
        # Children that came and went (socat) are in their parent's cutime
        # once reaped; the sleep lets that happen.
        time.sleep(0.3)
        cpu = cpuSeconds(descendants(path.roots()) | pids) - cpu0
        r["relay_cpu_s"] = cpu
        r["cpu_s_per_gb"] = cpu / (r["bytes"] / 1e9) if r.get("bytes") else None
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
        except (BenchError, OSError, subprocess.TimeoutExpired, ValueError) as e:
            value = {"error": str(e)}
            log(f"{path.name} {test}: {e}")
        self.record(path.name, test, value)
        log(f"{path.name:12} {test:10} {summary(test, value)}")

    def run(self) -> dict:
        a, sizes = self.args, self.sizes
        names = [p for p in PATHS if not a.only or p in a.only]
        ensureTools(names)
        meta: dict[str, Any] = {"started": utcnow(), "load_before": os.getloadavg(),
                                "sizes": sizes, "quick": a.quick, "paths": names}
        self.steady: dict[str, set[int]] = {}
        self.serverPort = self.ports.take()
        server = self.processes.start([PYTHON, os.path.join(HERE, "server.py"),
                                       str(self.serverPort)],
                                      os.path.join(self.tmp, "server.log"))
        waitFor("echo server", lambda: echoWorks(self.serverPort), 15, [server])
        for name in names:
            log(f"starting {name}")
            path = self.paths[name] = PATH_CLASSES[name](self)
            path.start()
            self.steady[name] = path.relaySide()
        meta["versions"] = versions(self.paths)
        meta["nofile_of_relay_side"] = list(resource.getrlimit(resource.RLIMIT_NOFILE))
        meta["nofile_of_relaynat"] = startingFileLimit()
        if "relaynat" in self.paths:
            meta["relaynat_settings"] = self.paths["relaynat"].settings  # type: ignore[attr-defined]
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
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        return (out.stdout + out.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"


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
        + (f", {v['openssh']}" if "openssh" in v else "") + ".",
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
                 "sshd and its session processes, ssh -L and ssh -R; portforward = the twistd "
                 "process; relaynat = the relay, skeleton and client twistd processes.")
    rn = res.get("relaynat")
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


def targets(res: dict, sizes: dict) -> list[str]:
    rn, ssh = res["relaynat"], res.get("ssh", {})
    out = ["Targets (relaynat, ratios against the ssh chain in the same run):", ""]

    def line(ok: bool | None, text: str) -> None:
        mark = "—" if ok is None else ("met" if ok else "**missed**")
        out.append(f"- {text}: {mark}")

    for d in ("up", "down"):
        a = med(rn.get(f"bulk_{d}", []), lambda x: x.get("mb_per_s"))
        b = med(ssh.get(f"bulk_{d}", []), lambda x: x.get("mb_per_s"))
        ratio = a / b if a and b else None
        line(None if ratio is None else ratio >= 1.5,
             f"bulk {d} ≥ 1.5× ssh: {fmt(a)} vs {fmt(b)} MB/s = {fmt(ratio, '.2f')}×")
    rate = med(rn.get("setup", []), lambda x: x["per_s"])
    p99 = med(rn.get("setup", []), lambda x: x["p99_ms"])
    line(None if rate is None else rate >= 1000 and p99 < 5,
         f"setup ≥ 1,000 tunnels/s with p99 < 5 ms: {fmt(rate)}/s, p99 {fmt(p99, '.2f')} ms")
    a = med(rn.get("ping", []), lambda x: x["p50_us"])
    b = med(ssh.get("ping", []), lambda x: x["p50_us"])
    line(None if a is None or b is None else a <= b,
         f"ping-pong p50 ≤ ssh's: {fmt(a)} vs {fmt(b)} µs")
    rss = med(rn.get("hold", []), lambda x: x["relay_only"]["rss_kb_per_conn"])
    pss = med(rn.get("hold", []), lambda x: x["relay_only"]["pss_kb_per_conn"])
    allRss = med(rn.get("hold", []), lambda x: x["rss_kb_per_conn"])
    line(None if rss is None else rss <= 30,
         f"relay memory ≤ 30 KB per idle tunnel at {sizes['hold']}: relay process "
         f"{fmt(rss, '.1f')} KB RSS / {fmt(pss, '.1f')} KB PSS (relay+skeleton+client: "
         f"{fmt(allRss, '.1f')} KB RSS)")
    growth = med(rn.get("push", []), lambda x: x["rss_growth_mb"])
    only = med(rn.get("push", []), lambda x: x.get("relay_only_rss_growth_mb"))
    line(None if growth is None else growth < 10,
         f"backpressure RSS growth < 10 MB: relay side {fmt(growth, '.1f')} MB "
         f"(relay process {fmt(only, '.1f')} MB)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repetition")
    parser.add_argument("--only", type=lambda s: s.split(","), default=None,
                        help=f"comma-separated paths from {', '.join(PATHS)}")
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
    except BenchError as e:
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
