"""
relaynat's round-trip benchmark: how long a fresh tunnel takes to bring the
first byte of a small web page, over a network where each hop is slow, against
the ssh chain and socat x2 on the same network, in round trips.

    python bench/rtt.py [--requests 50] [--starts 5] [--delay-ms 25]
                        [--only relaynat,ssh,socat] [--json OUT] [--keep]

Root only (it skips, saying so, otherwise).  Three network namespaces, the
client's, the relay's and the skeleton's, joined by two legs: client-relay and
relay-skeleton, each two TUN devices and a user-space delay line
(bench/delayline.py) adding DELAY each way.  The client's namespace has no
route to the skeleton's: as behind NAT, only the relay is reachable from both.
A web server (python -m http.server, a 1 KiB page) runs in the skeleton's
namespace; curl, in the client's, fetches it REQUESTS times in a row, each on
a fresh connection, through each path; then, STARTS times, the tunnel's client
(relaynat's client, ssh -L) is started afresh and fetched through at once.
Everything is removed at the end (processes by pid, then the namespaces), on
Ctrl-C or a failure too.  bench/README.md says more.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import netns  # noqa: E402
import run  # noqa: E402
from load import percentile  # noqa: E402
from run import BENCH_ERRORS, BenchError, log  # noqa: E402

from relaynat.localstack import childEnvironment, pollUntilBlocking  # noqa: E402
from relaynat.localstack.serve import READY_BOUND, STOP_BOUND  # noqa: E402

PYTHON = sys.executable
PATHS = ("relaynat", "ssh", "socat")
#: Leg A joins the client's namespace to the relay's, leg B the relay's to the
#: skeleton's; documentation prefixes (RFC 5737), so they clash with nothing.
CLIENT_IP, RELAY_A_IP = "192.0.2.1", "192.0.2.2"
RELAY_B_IP, SKELETON_IP = "198.51.100.1", "198.51.100.2"
PREFIX = 30
#: Namespace names start with this and the pid of the run that made them.
TAG = "rnrtt"
PAGE_BYTES = 1024
PAGE = "page.html"
#: TCP connects across each leg to measure its round trip; curls of the
#: server next to it to measure its own time.
PROBES = 20
#: A fresh relaynat client's TTFB may take this many end-to-end round trips
#: more than a tunnel of a running one (its login at the relay).
FIRST_EXTRA_RTTS = 2
#: A tunnel's TTFB over one end-to-end round trip, the server's time apart.
TTFB_RTTS = 1.1


# The network


class Network:
    """Three namespaces, client, relay and skeleton, and the two delay lines joining them."""

    def __init__(self, processes: run.Processes, tmp: str, delay: float) -> None:
        self.processes, self.tmp, self.delay = processes, tmp, delay
        base = f"{TAG}{os.getpid()}"
        self.client, self.relay, self.skeleton = (f"{base}-{role}"
                                                  for role in ("client", "relay", "skeleton"))
        self.made: list[str] = []
        self.lines: list[subprocess.Popen] = []

    def up(self) -> None:
        for ns in (self.client, self.relay, self.skeleton):
            netns.ip("netns", "add", ns)
            self.made.append(ns)
            netns.ip("link", "set", "lo", "up", namespace=ns)
        legs = (("a", self.client, "leg-a", CLIENT_IP, self.relay, "leg-a", RELAY_A_IP),
                ("b", self.relay, "leg-b", RELAY_B_IP, self.skeleton, "leg-b", SKELETON_IP))
        for leg, nsA, devA, ipA, nsB, devB, ipB in legs:
            for ns, dev, address in ((nsA, devA, ipA), (nsB, devB, ipB)):
                netns.ip("tuntap", "add", "dev", dev, "mode", "tun", namespace=ns)
                netns.ip("addr", "add", f"{address}/{PREFIX}", "dev", dev, namespace=ns)
                netns.ip("link", "set", dev, "up", namespace=ns)
            logPath = os.path.join(self.tmp, f"delayline-{leg}.log")
            line = self.processes.start(
                [PYTHON, os.path.join(HERE, "delayline.py"), "--delay", str(self.delay),
                 nsA, devA, nsB, devB], logPath)
            self.lines.append(line)
            pollUntilBlocking(saysReady(logPath), 15, f"delay line {leg}",
                              guard=run.running([line]))

    def down(self) -> None:
        for line in self.lines:
            self.processes.stop(line)
        for ns in reversed(self.made):
            for pid in netns.pids(ns):
                # Only this run's processes are in its namespaces; any left
                # (a stop that failed) would keep the namespace alive.
                kill(pid)
            try:
                netns.ip("netns", "del", ns)
            except netns.NamespaceError as e:
                log(f"cleanup: {e}")
        self.made = []

    def checkIsolation(self) -> dict[str, Any]:
        """The client's namespace reaches the relay's but not the skeleton's, as behind NAT."""
        s = netns.socketIn(self.client)
        s.settimeout(2)
        try:
            s.connect((SKELETON_IP, 9))
        except OSError as e:
            if e.errno != errno.ENETUNREACH:
                raise BenchError(f"the client's namespace reaches the skeleton's: {e}") from None
        else:
            raise BenchError("the client's namespace reaches the skeleton's")
        finally:
            s.close()
        with netns.entered(self.relay):
            forwarding = readText("/proc/sys/net/ipv4/ip_forward").strip()
        return {"client_to_skeleton": "no route (ENETUNREACH)", "relay_ip_forward": forwarding}

    def congestionControl(self) -> str:
        with netns.entered(self.client):
            return readText("/proc/sys/net/ipv4/tcp_congestion_control").strip()


def saysReady(logPath: str) -> Callable[[], None]:
    def ready() -> None:
        if "ready" not in readText(logPath):
            raise ValueError("it has not said ready")
    return ready


def readText(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def removeStale() -> None:
    """Namespaces (and their processes) of runs of this script that ended without cleaning up."""
    for name in netns.names():
        made = re.match(rf"{TAG}(\d+)-", name)
        if made and not run.alive(int(made.group(1))):
            log(f"removing {name}, left by an earlier run")
            for pid in netns.pids(name):
                kill(pid)
            try:
                netns.ip("netns", "del", name)
            except netns.NamespaceError as e:
                log(f"cleanup: {e}")


def connectTimes(source: str, target: str, host: str, count: int) -> list[float]:
    """
    Seconds each of C{count} TCP connects from namespace C{source} to a
    listener of namespace C{target} at C{host} takes: connect() returns
    with the SYN-ACK, one round trip over the legs between them.
    """
    listener = netns.socketIn(target)
    times = []
    try:
        listener.bind((host, 0))
        listener.listen(count)
        listener.settimeout(5)
        port = listener.getsockname()[1]
        for _ in range(count):
            s = netns.socketIn(source)
            s.settimeout(5)
            try:
                started = time.perf_counter()
                s.connect((host, port))
                times.append(time.perf_counter() - started)
                listener.accept()[0].close()
            finally:
                s.close()
    finally:
        listener.close()
    return times


def getPage(ns: str, host: str, port: int, timeout: float = 10.0) -> None:
    """An HTTP GET of the page from namespace C{ns} brings all of it; OSError or ValueError if not."""
    s = netns.socketIn(ns)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
        s.sendall(f"GET /{PAGE} HTTP/1.0\r\nHost: bench\r\n\r\n".encode())
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    finally:
        s.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    status = head.split(b"\r\n")[0]
    if not (head.startswith(b"HTTP/1.") and b" 200 " in status):
        raise ValueError(f"answered {status[:80]!r}")
    if len(body) != PAGE_BYTES:
        raise ValueError(f"{len(body)} bytes of the page's {PAGE_BYTES}")


def listensIn(ns: str, port: int) -> None:
    """Something listens on C{port} in namespace C{ns}; ValueError if not."""
    if not netns.listens(ns, port):
        raise ValueError(f"nothing listens on port {port}")


CURL_OUT = "%{http_code} %{size_download} %{time_connect} %{time_starttransfer} %{time_total}"


def curl(ns: str, url: str) -> dict[str, Any]:
    """One curl from namespace C{ns}: its TTFB (time_starttransfer) and the rest, in ms."""
    argv = netns.execArgv(ns, ["curl", "-s", "-o", "/dev/null", "--noproxy", "*",
                               "--max-time", "20", "-w", CURL_OUT, url])
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    wall = time.monotonic() - started
    try:
        code, size, connect, ttfb, total = done.stdout.split()
        r: dict[str, Any] = {
            "code": int(code), "bytes": int(size), "connect_ms": 1000 * float(connect),
            "ttfb_ms": 1000 * float(ttfb), "total_ms": 1000 * float(total),
        }
    except ValueError:
        return {"ok": False, "error": f"curl exited {done.returncode}: {done.stdout!r} "
                                      f"{done.stderr.strip()[-200:]}", "wall_ms": 1000 * wall}
    r["ok"] = done.returncode == 0 and r["code"] == 200 and r["bytes"] == PAGE_BYTES
    r["wall_ms"] = 1000 * wall
    # What curl spent before its transfer began (ip netns exec, its start) and after.
    r["outside_ms"] = r["wall_ms"] - r["total_ms"]
    if done.returncode != 0:
        r["error"] = f"curl exited {done.returncode}"
    return r


# The paths


class RttPath:
    """One way from curl in the client's namespace to the web server in the skeleton's."""

    name = ""

    def __init__(self, bench: RoundTrips) -> None:
        self.bench = bench
        self.net = bench.net
        self.procs: list[subprocess.Popen] = []
        self.logs: dict[int, str] = {}
        self.url = ""
        #: Where the tunnel's client listens, in the client's namespace, if
        #: the path has a client process to restart.
        self.entry: int | None = None
        self.client: subprocess.Popen | None = None

    def spawn(self, ns: str, argv: list[str], name: str, **kwargs: Any) -> subprocess.Popen:
        logPath = os.path.join(self.bench.tmp, f"{name}.log")
        proc = self.bench.processes.start(netns.execArgv(ns, argv), logPath, **kwargs)
        self.procs.append(proc)
        self.logs[proc.pid] = logPath
        return proc

    def waitFor(self, what: str, check: Callable[[], Any], timeout: float = 30,
                step: float = 0.1) -> Any:
        """
        L{pollUntilBlocking} until C{check} returns (its value) while this
        path's processes run, and on failure the last line each that ended logged.
        """
        try:
            return pollUntilBlocking(check, timeout, what, step, guard=run.running(self.procs))
        except BENCH_ERRORS as e:
            said = [f"{os.path.basename(self.logs[p.pid])}: {run.lastLine(self.logs[p.pid])}"
                    for p in self.procs if p.poll() is not None]
            raise BenchError("; ".join([str(e), *said])) from None

    def start(self) -> None:
        raise NotImplementedError

    def startClient(self) -> None:
        """Start the tunnel's client process (paths that have one)."""

    def restartClient(self) -> None:
        if self.client is not None:
            self.bench.processes.stop(self.client)
            self.procs.remove(self.client)
        self.startClient()

    def stop(self) -> None:
        for proc in reversed(self.procs):
            self.bench.processes.stop(proc)
        self.procs = []


class Relaynat(RttPath):
    """
    The three roles as twistd processes, one in each namespace, from the
    files bench/run.py makes for its relaynat path (conf/ with only the
    addresses and file names changed), started as run.py starts them: by
    relaynat's local stack, run in the client's namespace and starting the
    relay and the skeleton in theirs.
    """

    name = "relaynat"

    def start(self) -> None:
        b, net = self.bench, self.net
        self.files = run.writeRelaynatFiles(
            os.path.join(b.tmp, "relaynat"), b.ports.take, f"tcp:127.0.0.1:{b.webPort}",
            clientsHost=RELAY_A_IP, skeletonsHost=RELAY_B_IP)
        files = self.files
        argv = files.serveArgv({"relay": net.relay, "skeleton": net.skeleton})
        self.stack = self.spawn(net.client, argv, "relaynat", env=childEnvironment(),
                                preexec_fn=run.serviceFileLimit, grace=STOP_BOUND + 5)
        self.pids = self.waitFor("relaynat's local stack", files.started, READY_BOUND + 5)
        self.entry = files.entry
        self.url = f"http://127.0.0.1:{files.entry}/{PAGE}"
        self.waitFor("relaynat tunnel", lambda: getPage(net.client, "127.0.0.1", files.entry))

    def restartClient(self) -> None:
        """The local stack stops the client and starts it again (SIGUSR1); back with its pid."""
        old = self.pids["client"]
        os.kill(self.stack.pid, signal.SIGUSR1)
        self.pids = self.waitFor("relaynat's client started again",
                                 lambda: self.files.started(stale=old), step=0.001)


class Ssh(RttPath):
    """sshd in the relay's namespace; ssh -R from the skeleton's; ssh -L from the client's."""

    name = "ssh"

    def start(self) -> None:
        b, net, ports = self.bench, self.net, self.bench.ports
        self.dir = os.path.join(b.tmp, "ssh")
        sshPort, self.remote, self.entry = ports.take(), ports.take(), ports.take()
        run.writeSshFiles(self.dir, sshPort, [RELAY_A_IP, RELAY_B_IP])
        self.spawn(net.relay, run.sshdArgv(self.dir), "sshd")
        self.waitFor("sshd", lambda: listensIn(net.relay, sshPort))
        self.spawn(net.skeleton, run.sshArgv(self.dir, RELAY_B_IP)
                   + ["-R", f"127.0.0.1:{self.remote}:127.0.0.1:{b.webPort}", "bench"], "ssh-R")
        self.waitFor("ssh -R", lambda: listensIn(net.relay, self.remote))
        self.url = f"http://127.0.0.1:{self.entry}/{PAGE}"
        self.startClient()
        entry = self.entry
        self.waitFor("ssh -L", lambda: getPage(net.client, "127.0.0.1", entry))

    def startClient(self) -> None:
        self.client = self.spawn(self.net.client, run.sshArgv(self.dir, RELAY_A_IP)
                                 + ["-L", f"127.0.0.1:{self.entry}:127.0.0.1:{self.remote}",
                                    "bench"], "ssh-L")


class Socat(RttPath):
    """
    socat x2: curl connects to a socat in the relay's namespace, which
    connects to a socat in the skeleton's, which connects to the server.
    socat cannot be reached through from the skeleton's side (it has no
    reverse mode, no pool of connections opened outwards), so here, unlike
    relaynat and ssh, the relay's namespace opens connections into the
    skeleton's; the client's still reaches only the relay's.
    """

    name = "socat"

    def start(self) -> None:
        b, net, ports = self.bench, self.net, self.bench.ports
        hop, entry = ports.take(), ports.take()
        listen = "TCP4-LISTEN:{},bind={},reuseaddr,fork,backlog=1024"
        self.spawn(net.skeleton, ["socat", listen.format(hop, SKELETON_IP),
                                  f"TCP4:127.0.0.1:{b.webPort}"], "socat-skeleton")
        self.spawn(net.relay, ["socat", listen.format(entry, RELAY_A_IP),
                               f"TCP4:{SKELETON_IP}:{hop}"], "socat-relay")
        self.url = f"http://{RELAY_A_IP}:{entry}/{PAGE}"
        self.waitFor("socat", lambda: getPage(net.client, RELAY_A_IP, entry))


PATH_CLASSES: dict[str, type[RttPath]] = {c.name: c for c in (Relaynat, Ssh, Socat)}


# The run


class RoundTrips:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.processes = run.Processes()
        self.ports = run.Ports()
        self.tmp = tempfile.mkdtemp(prefix="relaynat-rtt-")
        self.net = Network(self.processes, self.tmp, args.delay_ms / 1000)
        self.paths: dict[str, RttPath] = {}
        self.results: dict[str, Any] = {}

    def startServer(self) -> None:
        www = os.path.join(self.tmp, "www")
        os.makedirs(www)
        with open(os.path.join(www, PAGE), "wb") as f:
            f.write((b"relaynat rtt bench " * 64)[:PAGE_BYTES - 1] + b"\n")
        self.webPort = self.ports.take()
        proc = self.processes.start(
            netns.execArgv(self.net.skeleton, [PYTHON, "-m", "http.server", str(self.webPort),
                                               "--bind", "127.0.0.1", "--directory", www]),
            os.path.join(self.tmp, "web.log"))
        pollUntilBlocking(lambda: getPage(self.net.skeleton, "127.0.0.1", self.webPort), 15,
                          "web server", guard=run.running([proc]))

    def floor(self) -> dict[str, Any]:
        """Each leg's round trip, the whole way's, and the server's own time."""
        net = self.net
        a = connectTimes(net.client, net.relay, RELAY_A_IP, PROBES)
        b = connectTimes(net.relay, net.skeleton, SKELETON_IP, PROBES)
        server = [curl(net.skeleton, f"http://127.0.0.1:{self.webPort}/{PAGE}")
                  for _ in range(PROBES)]
        bad = [s for s in server if not s["ok"]]
        if bad:
            raise BenchError(f"the web server, from next to it: {bad[0]}")
        legA, legB = 1000 * statistics.median(a), 1000 * statistics.median(b)
        return {
            "leg_a_rtt_ms": legA, "leg_b_rtt_ms": legB, "e2e_rtt_ms": legA + legB,
            "leg_a_ms": [1000 * x for x in a], "leg_b_ms": [1000 * x for x in b],
            "server_ttfb_ms": statistics.median(s["ttfb_ms"] for s in server),
            "server": server,
        }

    def requests(self, path: RttPath) -> dict[str, Any]:
        samples = [curl(self.net.client, path.url) for _ in range(self.args.requests)]
        return summarize(samples)

    def firstTunnels(self, path: RttPath) -> dict[str, Any]:
        """STARTS times: a fresh client; the moment its port listens, one curl."""
        samples = []
        assert path.entry is not None
        entry = path.entry
        for _ in range(self.args.starts):
            path.restartClient()
            started = time.monotonic()
            try:
                pollUntilBlocking(lambda: listensIn(self.net.client, entry), 30,
                                  "its port listening", step=0.001)
            except BENCH_ERRORS as e:
                samples.append({"ok": False, "error": str(e)})
                continue
            seen = time.monotonic()
            r = curl(self.net.client, path.url)
            r["listening_after_ms"] = 1000 * (seen - started)
            samples.append(r)
        return summarize(samples)

    def run(self) -> dict[str, Any]:
        a = self.args
        names = [p for p in PATHS if p in a.only] if a.only else list(PATHS)
        run.ensureTools(["curl", *names])
        removeStale()
        meta: dict[str, Any] = {"started": run.utcnow(), "paths": names,
                                "delay_ms_each_way": a.delay_ms, "requests": a.requests,
                                "starts": a.starts, "load_before": os.getloadavg()}
        log("network: three namespaces, two delay lines")
        self.net.up()
        meta["isolation"] = self.net.checkIsolation()
        meta["congestion_control"] = self.net.congestionControl()
        self.startServer()
        self.results["floor"] = self.floor()
        f = self.results["floor"]
        log(f"round trips: client-relay {f['leg_a_rtt_ms']:.1f} ms, relay-skeleton "
            f"{f['leg_b_rtt_ms']:.1f} ms, end to end {f['e2e_rtt_ms']:.1f} ms; server "
            f"{f['server_ttfb_ms']:.2f} ms")
        for name in names:
            log(f"starting {name}")
            path = PATH_CLASSES[name](self)
            try:
                path.start()
            except (*BENCH_ERRORS, OSError, subprocess.SubprocessError) as e:
                # The other paths are still measured: relaynat's code may be
                # in the middle of a change while the tools it is held
                # against are not.
                log(f"{name} did not start: {e}")
                path.stop()
                self.results[name] = {"error": str(e)}
                continue
            self.paths[name] = path
        for name, path in self.paths.items():
            r = self.results[name] = {"requests": self.requests(path)}
            log(f"{name:9} {a.requests} requests: {summary(r['requests'])}")
        for name, path in self.paths.items():
            if path.entry is not None and name != "socat":
                r = self.results[name]["first"] = self.firstTunnels(path)
                log(f"{name:9} first tunnel after a start, {a.starts} times: {summary(r)}")
        meta["versions"] = versions(names)
        meta["finished"] = run.utcnow()
        meta["load_after"] = os.getloadavg()
        return meta

    def cleanup(self) -> None:
        for path in reversed(list(self.paths.values())):
            path.stop()
        self.processes.stopAll()
        self.net.down()
        if not self.args.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    good = [s for s in samples if s.get("ok")]
    ttfb = [s["ttfb_ms"] for s in good]
    out: dict[str, Any] = {"count": len(samples), "ok": len(good), "samples": samples}
    if good:
        out.update(
            ttfb_p50_ms=statistics.median(ttfb), ttfb_p99_ms=percentile(ttfb, 99),
            connect_p50_ms=statistics.median(s["connect_ms"] for s in good),
            outside_p50_ms=statistics.median(s["outside_ms"] for s in good),
        )
    errors = [s["error"] for s in samples if s.get("error")]
    if errors:
        out["errors"] = errors[:5]
    return out


def summary(r: dict[str, Any]) -> str:
    if not r.get("ok"):
        return f"0/{r['count']} ok: {r.get('errors')}"
    return (f"{r['ok']}/{r['count']} ok, TTFB p50 {r['ttfb_p50_ms']:.1f} ms, "
            f"p99 {r['ttfb_p99_ms']:.1f} ms")


def versions(names: list[str]) -> dict[str, str]:
    v = {
        "python": platform.python_version(), "kernel": platform.release(),
        "curl": run.command(["curl", "-V"]).splitlines()[0],
        "relaynat": run.command([run.RELAYNAT, "--version"]).removeprefix("relaynat").strip(),
        "git": run.command(["git", "-C", run.REPO, "describe", "--always", "--dirty"]),
    }
    if "ssh" in names:
        v["openssh"] = run.command(["ssh", "-V"])
    if "socat" in names:
        v["socat"] = (run.command(["socat", "-V"]).splitlines() + ["", ""])[1].strip()
    return v


# The report


def inRtts(ms: float | None, e2e: float, server: float) -> float | None:
    """A TTFB in end-to-end round trips, the server's own time taken out."""
    return None if ms is None else (ms - server) / e2e


def targets(e2e: float, server: float, p50: float | None, first: float | None) -> list[str]:
    """
    The verdicts: relaynat's TTFB p50 within L{TTFB_RTTS} end-to-end round
    trips plus the server's time; the first tunnel after a client start
    within L{FIRST_EXTRA_RTTS} round trips more.
    """
    limit = TTFB_RTTS * e2e + server
    firstLimit = limit + FIRST_EXTRA_RTTS * e2e

    def verdict(ms: float | None, bound: float) -> str:
        return "—" if ms is None else ("met" if ms <= bound else "**missed**")

    def ms(x: float | None) -> str:
        return "—" if x is None else f"{x:.1f} ms"

    return [
        f"- relaynat TTFB p50 ≤ {TTFB_RTTS}× one end-to-end round trip + the server's time "
        f"({limit:.1f} ms): {ms(p50)}: {verdict(p50, limit)}",
        f"- relaynat's first tunnel after a client start ≤ {FIRST_EXTRA_RTTS} round trips more "
        f"({firstLimit:.1f} ms): {ms(first)}: {verdict(first, firstLimit)}",
    ]


def report(meta: dict[str, Any], results: dict[str, Any]) -> str:
    f = results["floor"]
    e2e, server = f["e2e_rtt_ms"], f["server_ttfb_ms"]
    v = meta["versions"]

    def cell(x: float | None, spec: str = ".1f") -> str:
        return "—" if x is None else format(x, spec)

    lines = [
        f"### Round trips, {meta['finished'][:10]}",
        "",
        f"Python {v['python']}, Linux {v['kernel']}, {v['curl'].split(' (')[0]}, relaynat "
        f"{v['relaynat']} ({v['git']})"
        + "".join(f", {v[k]}" for k in ("openssh", "socat") if k in v)
        + f"; TCP congestion control {meta['congestion_control']}.",
        "",
        f"Network: three namespaces joined by two legs, each {meta['delay_ms_each_way']} ms "
        "each way (TUN devices and a user-space delay line); the client's namespace has no "
        f"route to the skeleton's. Round trips (TCP connect, median of {PROBES}): client–relay "
        f"{f['leg_a_rtt_ms']:.1f} ms, relay–skeleton {f['leg_b_rtt_ms']:.1f} ms, so one "
        f"end-to-end round trip (RTT) is {e2e:.1f} ms. The web server (python http.server, "
        f"a {PAGE_BYTES} B page) takes {server:.2f} ms itself (curl next to it, median of "
        f"{PROBES}). {meta['requests']} requests in a row per path, each on a fresh "
        f"connection (curl's time_starttransfer); the first tunnel after a client start: "
        f"median of {meta['starts']} starts.",
        "",
        "| path | ok | connect p50 ms | TTFB p50 ms | TTFB p99 ms | p50 in RTTs "
        "| first after start ms | first in RTTs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in meta["paths"]:
        r = results.get(name, {})
        if r.get("error"):
            lines.append(f"| {name} | did not start: {r['error'][:300]} | | | | | | |")
            continue
        req, first = r.get("requests", {}), r.get("first", {})
        p50 = req.get("ttfb_p50_ms")
        f50 = first.get("ttfb_p50_ms")
        lines.append("| " + " | ".join([
            name, f"{req.get('ok', 0)}/{req.get('count', 0)}",
            cell(req.get("connect_p50_ms"), ".2f"), cell(p50), cell(req.get("ttfb_p99_ms")),
            cell(inRtts(p50, e2e, server), ".2f"),
            cell(f50) + (f" ({first['ok']}/{first['count']})" if first else ""),
            cell(inRtts(f50, e2e, server), ".2f"),
        ]) + " |")
    lines += [
        "",
        "In RTTs: (TTFB − the server's time) / one end-to-end round trip. relaynat: relay in "
        "the relay's namespace, skeleton in the skeleton's, client in the client's; ssh: sshd "
        "in the relay's, ssh -R from the skeleton's, ssh -L from the client's; socat: curl to "
        "a socat in the relay's, to a socat in the skeleton's (the relay's namespace connects "
        "into the skeleton's: socat has no reverse mode), to the server. curl starts about "
        f"{cell(firstOutside(results))} ms (ip netns exec and its own start) after a fresh "
        "client's port is seen listening.",
    ]
    if "relaynat" in meta["paths"]:
        rn = results.get("relaynat", {})
        lines += ["", "Targets:", "",
                  *targets(e2e, server, rn.get("requests", {}).get("ttfb_p50_ms"),
                           rn.get("first", {}).get("ttfb_p50_ms"))]
    return "\n".join(lines)


def firstOutside(results: dict[str, Any]) -> float | None:
    got = [s["outside_ms"] for r in results.values() if isinstance(r, dict)
           for s in r.get("first", {}).get("samples", []) if "outside_ms" in s]
    return statistics.median(got) if got else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=50, help="curls in a row per path")
    parser.add_argument("--starts", type=int, default=5,
                        help="fresh client starts, each with one curl at once")
    parser.add_argument("--delay-ms", type=float, default=25.0,
                        help="each leg's delay each way (default 25)")
    parser.add_argument("--only", type=lambda s: s.split(","), default=None,
                        help=f"comma-separated paths from {', '.join(PATHS)}")
    parser.add_argument("--json", default=None, help="where to write every value "
                        "(default bench/results/rtt-DATE.json)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and logs")
    args = parser.parse_args()
    for name in args.only or []:
        if name not in PATHS:
            parser.error(f"unknown path {name!r}: choose from {', '.join(PATHS)}")
    if os.geteuid() != 0:
        print("bench/rtt.py: skipped: it needs root (network namespaces, TUN devices); "
              "run it as root, e.g. sudo make bench-rtt", file=sys.stderr)
        return
    if not os.path.exists("/dev/net/tun"):
        print("bench/rtt.py: skipped: no /dev/net/tun (the TUN driver) on this machine",
              file=sys.stderr)
        return
    out = args.json or os.path.join(HERE, "results", f"rtt-{time.strftime('%Y%m%d-%H%M%S')}.json")
    bench = RoundTrips(args)

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    try:
        meta = bench.run()
    except (*BENCH_ERRORS, netns.NamespaceError, OSError, subprocess.SubprocessError) as e:
        log(f"error: {e}")
        bench.cleanup()
        sys.exit(1)
    except KeyboardInterrupt:
        bench.cleanup()
        log("interrupted; every process stopped, the namespaces removed")
        sys.exit(130)
    except BaseException:
        bench.cleanup()
        raise
    log(f"temporary files in {bench.tmp}" if args.keep else "cleaning up")
    bench.cleanup()
    table = report(meta, bench.results)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"meta": meta, "results": bench.results}, f, indent=1)
    with open(os.path.splitext(out)[0] + ".md", "w") as f:
        f.write(table + "\n")
    print(table)
    log(f"every value: {out} (table: {os.path.splitext(out)[0]}.md)")


if __name__ == "__main__":
    main()
