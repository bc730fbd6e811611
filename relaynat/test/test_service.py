"""
The README's "As a service" run as it is written, as far as a machine
without systemd allows: its two C{sh} blocks, read from README.md, line by
line, as root, in a mount namespace of the test's own, so that the package,
the relaynat user, the units' links and the files of /etc/relaynat exist
only there and go with it.

In that namespace, /etc, /opt, /usr and /var are overlays: the host's
directories as their lower layers (under the package's files, when there is
one) and a tmpfs of the namespace as their upper one, which takes every
change.  Each line of a block runs by C{/bin/sh -e} entered into it with
C{nsenter}, with a root login's C{PATH} (so C{relaynat} is the package's
/usr/bin/relaynat), except these:

  - C{make deb && apt install ./build/deb/relaynat_*.deb}: the package
    C{make deb} built (found as test_deb finds it: CI builds it first) is
    installed as dpkg would install it, but without dpkg's database: its
    files (C{dpkg-deb -x}) are the overlays' middle layers, and its own
    postinst runs (C{configure}), which makes the relaynat user with
    systemd-sysusers, enables the three units and gives /etc/relaynat to
    root:relaynat.
  - the relay's file, copied as written, is then edited ("then edit it"):
    its ports moved to free ones on 127.0.0.1.
  - C{relaynat passwd} without C{--password-file} asks twice at a terminal:
    it runs on a pseudo-terminal, and the password is typed.
  - C{systemctl start UNIT}: the unit, found where systemd looks, has its
    C{ConditionPathExists} checked (and checked false before the relay's
    file is copied), then its
    C{ExecStart} runs as systemd would run it, with the unit's settings
    that a few tools can give (L{SETTINGS} says how each is applied, or why
    it is not); the relay must then serve C{/healthz}, publish the
    fingerprint C{keygen} printed, and let the user C{passwd} made log in;
    its C{ExecReload} must make it take a user added since, and systemd's
    stop (SIGTERM, no C{ExecStop}) must end it cleanly with nothing left.
  - C{systemctl daemon-reload && systemctl enable --now UNIT}: only
    C{systemctl enable UNIT}, which works without a running systemd.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import resource
import shlex
import shutil
import stat
import tomllib

from twisted.internet import reactor
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import FailTest, SkipTest, TestCase

from relaynat.localstack import (
    ChildProcess,
    LocalStackError,
    endpointPort,
    fetchPage,
    moveEndpoints,
    pickFreePort,
    pollUntil,
    relaynatCommand,
    runCommand,
    spawn,
    tomlText,
)
from relaynat.test.test_deb import package

_log = Logger()

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: The tools the namespace and the unit's settings are made with (util-linux's).
TOOLS = ("unshare", "nsenter", "mount", "setpriv", "prlimit", "systemd-sysusers", "systemctl")

#: The environment of a root login, for the README's lines.
ROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "USER": "root",
    "LOGNAME": "root",
    "LANG": "C.UTF-8",
}

#: Where systemd looks for a unit, first found first.
UNIT_PATH = (
    "/etc/systemd/system", "/run/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system"
)

#: The password typed at C{relaynat passwd}'s prompts.
PASSWORD = b"the password of demo-client"

#: Every setting the units may have, and what this test does with it where
#: systemd is not there to: a unit with any other fails the test, which
#: must then be taught it (or say why it cannot be).
SETTINGS = {
    "Description": "nothing to do",
    "Wants": "ordering at boot: nothing to do",
    "After": "ordering at boot: nothing to do",
    "ConditionPathExists": "checked before the start, and false before the file is there",
    "WantedBy": "the link the postinst's enable made is checked",
    "Type": "simple: the process started is the main one, up once its ports answer",
    "User": "setpriv --reuid, and USER, LOGNAME, HOME and SHELL from its passwd entry",
    "Group": "setpriv --regid --init-groups",
    "ExecStart": "run, by exec all the way, so its pid is the main pid",
    "ExecReload": "run as root with $MAINPID",
    "LimitNOFILE": "prlimit; the hard limit capped at this machine's without CAP_SYS_RESOURCE",
    "AmbientCapabilities": "setpriv --inh-caps --ambient-caps",
    "NoNewPrivileges": "setpriv --no-new-privs",
    "ProtectSystem": "strict: every mount but /dev, /proc and /sys remounted read-only",
    "ProtectHome": "an empty, read-only tmpfs of mode 000 on /home, /root, /run/user",
    "PrivateTmp": "a tmpfs of its own on /tmp and /var/tmp",
    "PrivateDevices": "a /dev of its own: null, zero, full, random, urandom, tty, pts, shm",
    "ProtectKernelTunables": "/proc/sys and every mount under /sys read-only",
    "ProtectControlGroups": "every mount under /sys/fs/cgroup read-only",
    "ReadOnlyPaths": "each bound on itself read-only",
    "Restart": "not applied (no supervisor): the stop is checked to be one systemd counts clean",
    "RestartSec": "not applied, as Restart",
    "RestrictAddressFamilies": "not applied: a seccomp filter that only systemd sets up",
}

#: Capability numbers (linux/capability.h) of those the units may ask for.
CAPABILITIES = {"CAP_NET_BIND_SERVICE": 10}

#: CAP_SYS_RESOURCE: needed to raise a hard limit.
CAP_SYS_RESOURCE = 24


def serviceBlocks() -> list[str]:
    """The C{sh} blocks of the README's "As a service", before its "Private files"."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text.split("### As a service", 1)[1].split("### Private files", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


def commandLines(block: str) -> list[str]:
    """A block's lines, as typed (their comments too: sh drops them)."""
    return [line for line in block.splitlines() if line.strip()]


def command(line: str) -> list[str]:
    """A line's words, without its comment."""
    return shlex.split(line, comments=True)


def holds(capability: int) -> bool:
    """Does this process have C{capability} in its effective set?"""
    with open("/proc/self/status") as f:
        (line,) = (line for line in f if line.startswith("CapEff:"))
    return bool(int(line.split()[1], 16) >> capability & 1)


def mountPoints(pid: int) -> list[str]:
    """The mount points process C{pid} sees, in order, once each."""
    points: list[str] = []
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
            if point not in points:
                points.append(point)
    return points


def readText(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def under(path: str, *tops: str) -> bool:
    return any(path == top or path.startswith(top.rstrip("/") + "/") for top in tops)


class Unit:
    """A unit file's settings, read as systemd reads the simple ones ours use."""

    def __init__(self, name: str, text: str) -> None:
        parser = configparser.ConfigParser(interpolation=None, strict=True, delimiters=("=",))
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read_string(text, source=name)
        self.name = name
        self.settings = {key: value for section in parser.sections()
                         for key, value in parser[section].items()}
        self.service = dict(parser["Service"])

    def yes(self, key: str) -> bool:
        return self.service.get(key, "no") in ("yes", "true", "on", "1")

    def condition(self) -> tuple[str, bool]:
        """The path C{ConditionPathExists} names, and whether it must exist."""
        path = self.settings["ConditionPathExists"]
        if path.startswith("|"):
            raise FailTest(f"{self.name}: a triggering condition is not understood here")
        return path.lstrip("!"), not path.startswith("!")

    def execStart(self) -> list[str]:
        line = self.service["ExecStart"]
        if line[:1] in "-@+!:" or "$" in line or "%" in line:
            raise FailTest(f"{self.name}: ExecStart {line!r} has a prefix, variable or specifier")
        return shlex.split(line)

    def execReload(self, mainPid: int) -> list[str]:
        return shlex.split(self.service["ExecReload"].replace("$MAINPID", str(mainPid)))

    def limitNofile(self) -> tuple[int, int]:
        soft, _, hard = self.service["LimitNOFILE"].partition(":")
        return int(soft), int(hard or soft)


class MountNamespace(ChildProcess):
    """
    A process holding a private mount namespace with overlays on the
    directories of C{lowers}: C{unshare} runs a shell that mounts them, says
    so, and waits on its input.  The namespace, and its tmpfs with every
    change made in it, goes once this process and those entered into it
    have ended.
    """

    def __init__(self, layers: str, lowers: dict[str, str | None]) -> None:
        super().__init__("namespace")
        self.layers = layers
        self.lowers = lowers
        self.ready: Deferred[None] = Deferred()

    def start(self) -> Deferred[None]:
        """Start it; fires once the overlays are mounted."""
        reactor.spawnProcess(  # type: ignore[attr-defined]
            self, "unshare",
            ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
             self.script()],
            env=ROOT_ENV,
        )
        return self.ready

    def script(self) -> str:
        for path in [self.layers, *self.lowers, *(p for p in self.lowers.values() if p)]:
            if re.search(r"[:,\\\s]", path):
                raise FailTest(f"{path!r} cannot be named in overlay options")
        q = shlex.quote
        lines = ["set -e", f"mount -t tmpfs -o mode=0700 relaynat-test {q(self.layers)}"]
        for n, (target, middle) in enumerate(sorted(self.lowers.items())):
            upper, work = f"{self.layers}/{n}/upper", f"{self.layers}/{n}/work"
            lower = f"{middle}:{target}" if middle else target
            options = f"lowerdir={lower},upperdir={upper},workdir={work}"
            lines += [f"mkdir -p {q(upper)} {q(work)}",
                      f"mount -t overlay overlay -o {q(options)} {q(target)}"]
        # Its input stays open until the test ends: cat ends with it.
        return "\n".join([*lines, "echo ready", "exec cat >/dev/null"])

    def connectionMade(self) -> None:
        pass  # its input stays open: closing it ends the namespace

    def outReceived(self, data: bytes) -> None:
        super().outReceived(data)
        if not self.ready.called and b"ready\n" in self.stdout:
            self.ready.callback(None)

    def processEnded(self, reason: Failure) -> None:
        super().processEnded(reason)
        if not self.ready.called:
            self.ready.errback(LocalStackError(f"{self.describeEnd()}: {self.tail(5)}"))

    async def end(self) -> None:
        """End the namespace: its input closed, then TERM and KILL if need be."""
        if self.running and self.transport is not None:
            self.transport.closeStdin()
            if not await self.waitEnded(reactor, 5.0):
                await self.stop(reactor, timeout=2.0)

    def path(self, path: str) -> str:
        """C{path} as the namespace sees it, to be read or written from here."""
        return f"/proc/{self.pid}/root{path}"

    def enter(self, *argv: str) -> list[str]:
        """C{argv} run inside the namespace (nsenter execs it: same process)."""
        return ["nsenter", f"--target={self.pid}", "--mount", "--", *argv]

    def shell(self, line: str, cwd: str) -> list[str]:
        return self.enter("/bin/sh", "-ec", f"cd {shlex.quote(cwd)}\n{line}")

    async def run(self, line: str, cwd: str = "/") -> ChildProcess:
        """Run C{line} with /bin/sh -e inside, from C{cwd}; the ended process."""
        return await runCommand(reactor, self.shell(line, cwd), timeout=60, env=ROOT_ENV)

    async def runOk(self, line: str, cwd: str = "/") -> ChildProcess:
        child = await self.run(line, cwd)
        if child.exitCode != 0:
            raise FailTest(f"{line!r}: {child.describeEnd()}\n{child.tail()}")
        return child

    async def exists(self, path: str) -> bool:
        """Does C{path} exist inside (C{test -e}, as systemd's condition tests it)?"""
        return (await self.run(f"test -e {shlex.quote(path)}")).exitCode == 0

    def unit(self, name: str) -> Unit:
        """The unit C{name} as systemd would find it inside (no drop-ins allowed)."""
        for directory in UNIT_PATH:
            path = self.path(f"{directory}/{name}")
            if os.path.exists(path):
                if os.path.exists(path + ".d"):
                    raise FailTest(f"{directory}/{name}.d: drop-ins are not read here")
                with open(path, encoding="utf-8") as f:
                    return Unit(name, f.read())
        raise FailTest(f"no {name} in {', '.join(UNIT_PATH)}")

    def passwdEntry(self, name: str) -> list[str]:
        with open(self.path("/etc/passwd")) as f:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if fields[0] == name:
                    return fields
        raise FailTest(f"no user {name} in the namespace's /etc/passwd")

    def groupId(self, name: str) -> int:
        with open(self.path("/etc/group")) as f:
            for line in f:
                fields = line.split(":")
                if fields[0] == name:
                    return int(fields[2])
        raise FailTest(f"no group {name} in the namespace's /etc/group")


class Terminal(ProcessProtocol):
    """A process on a pseudo-terminal that types C{password} at each password prompt."""

    def __init__(self, password: bytes) -> None:
        self.password = password
        self.output = b""
        self.answeredAt = 0
        self.prompts = 0
        self.ended: Deferred[int | None] = Deferred()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.output += data
        fresh = self.output[self.answeredAt:]
        if b"password" in fresh.lower() and fresh.rstrip(b" ").endswith(b":"):
            self.answeredAt = len(self.output)
            self.prompts += 1
            assert self.transport is not None
            self.transport.write(self.password + b"\n")

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(reason.value.exitCode)


def sandboxScript(unit: Unit, points: list[str], staging: str) -> str:
    """
    The shell that applies the unit's sandboxing in a mount namespace of the
    service's own (L{SETTINGS} says which), then execs its arguments from /
    with systemd's umask and /dev/null as input.  C{points} are the mounts
    it starts with; C{staging} an empty folder on a writable tmpfs.
    """
    q = shlex.quote
    lines = ["set -e"]
    if unit.yes("PrivateDevices"):
        lines += [f"mkdir {q(staging)}", f"mount -t tmpfs -o mode=755,nosuid tmpfs {q(staging)}"]
        for name in ("null", "zero", "full", "random", "urandom", "tty"):
            lines += [f"touch {q(staging)}/{name}", f"mount --bind /dev/{name} {q(staging)}/{name}"]
        lines += [
            f"mkdir {q(staging)}/pts {q(staging)}/shm",
            f"mount --bind /dev/pts {q(staging)}/pts",
            f"mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs {q(staging)}/shm",
            f"ln -s /proc/self/fd {q(staging)}/fd",
            f"ln -s pts/ptmx {q(staging)}/ptmx",
            *(f"ln -s /proc/self/fd/{n} {q(staging)}/{name}"
              for n, name in enumerate(("stdin", "stdout", "stderr"))),
            f"mount --move {q(staging)} /dev",
        ]
    readOnly: list[str] = []
    strict = unit.service.get("ProtectSystem")
    if strict not in (None, "strict"):
        raise FailTest(f"{unit.name}: ProtectSystem={strict} is not applied here")
    if strict == "strict":
        readOnly += [p for p in points if not under(p, "/dev", "/proc", "/sys")]
    if unit.yes("ProtectKernelTunables"):
        lines.append("mount --bind /proc/sys /proc/sys")
        readOnly += ["/proc/sys", *(p for p in points if under(p, "/sys"))]
    if unit.yes("ProtectControlGroups"):
        readOnly += [p for p in points if under(p, "/sys/fs/cgroup")]
    for path in unit.service.get("ReadOnlyPaths", "").split():
        lines.append(f"mount --bind {q(path)} {q(path)}")
        readOnly.append(path)
    lines += [f"mount -o remount,bind,ro {q(p)}" for p in dict.fromkeys(readOnly)]
    if unit.yes("PrivateTmp"):
        lines += [f"mount -t tmpfs -o mode=1777 tmpfs {p}" for p in ("/tmp", "/var/tmp")]
    if unit.yes("ProtectHome"):
        lines += [f"if [ -d {p} ]; then mount -t tmpfs -o ro,mode=000 tmpfs {p}; fi"
                  for p in ("/home", "/root", "/run/user")]
    lines += ["cd /", "umask 0022", 'exec "$@" </dev/null']
    return "\n".join(lines)


def serviceCommand(unit: Unit, namespace: MountNamespace, staging: str) -> list[str]:
    """
    The unit's ExecStart as systemd would run it, entered into C{namespace}:
    every step execs the next, so the process started is the main one.
    """
    user, group = unit.service["User"], unit.service["Group"]
    entry = namespace.passwdEntry(user)
    soft, hard = unit.limitNofile()
    current = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard > current and not holds(CAP_SYS_RESOURCE):
        # A hard limit cannot be raised here (a container without
        # CAP_SYS_RESOURCE): systemd would fail the start; this keeps the rest.
        _log.info("LimitNOFILE {soft}:{hard} given as {soft}:{current}: no CAP_SYS_RESOURCE",
                  soft=soft, hard=hard, current=current)
        hard = current
    setpriv = ["setpriv", f"--reuid={user}", f"--regid={group}", "--init-groups"]
    if unit.yes("NoNewPrivileges"):
        setpriv.append("--no-new-privs")
    capabilities = unit.service.get("AmbientCapabilities", "").split()
    if capabilities:
        names = ",".join("+" + c.lower().removeprefix("cap_") for c in capabilities)
        setpriv += [f"--inh-caps={names}", f"--ambient-caps={names}"]
    environment = [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        f"USER={user}", f"LOGNAME={user}", f"HOME={entry[5]}", f"SHELL={entry[6]}",
    ]
    script = sandboxScript(unit, mountPoints(namespace.pid or 0), staging)
    return namespace.enter(
        "unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script, "sh",
        "prlimit", f"--nofile={min(soft, hard)}:{hard}", "--",
        *setpriv, "--", "env", "-i", *environment, *unit.execStart(),
    )


def writePrivate(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text + "\n")


def mountNamespaceOf(pid: int) -> tuple[int, int]:
    info = os.stat(f"/proc/{pid}/ns/mnt")
    return info.st_dev, info.st_ino


def processesIn(namespace: tuple[int, int]) -> list[int]:
    """The processes in the mount namespace C{namespace}."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if mountNamespaceOf(int(name)) == namespace:
                    found.append(int(name))
            except OSError:
                pass  # ended meanwhile
    return found


class ServiceSectionTests(TestCase):
    """
    The README's "As a service" section, run line by line as root in a
    mount namespace of the test's own: the package installed, the units
    enabled, the relay started, used, reloaded and stopped as systemd would.
    """

    timeout = 90

    def setUp(self) -> None:
        if os.geteuid() != 0:
            raise SkipTest("needs root: it mounts overlays in a mount namespace of its own")
        missing = [tool for tool in TOOLS if shutil.which(tool, path=ROOT_ENV["PATH"]) is None]
        if missing:
            raise SkipTest(f"{', '.join(missing)} not installed (util-linux, mount, systemd)")
        #: The relay's ports, once its file is edited.
        self.ports: dict[str, int] = {}

    async def namespace(self, lowers: dict[str, str | None]) -> MountNamespace:
        """A mount namespace with overlays on C{lowers}, ended at the test's end."""
        layers = os.path.abspath(self.mktemp())
        os.mkdir(layers)
        namespace = MountNamespace(layers, lowers)
        self.addCleanup(namespace.end)
        try:
            await namespace.start()
        except LocalStackError as e:
            message = f"no mount namespace with overlays here: {e}"
            if os.environ.get("CI"):
                raise FailTest(message) from e
            raise SkipTest(message) from e
        assert namespace.pid is not None
        self.assertNotEqual(mountNamespaceOf(namespace.pid), mountNamespaceOf(os.getpid()))
        return namespace

    def test_blocks(self) -> None:
        """
        The section has its two blocks: the package's, from C{make deb} to
        C{systemctl start relaynat-relay}, and the one without the package.
        """
        withPackage, withoutPackage = serviceBlocks()
        lines = commandLines(withPackage)
        self.assertTrue(lines[0].startswith("make deb && apt install ./build/deb/relaynat_"))
        self.assertEqual(command(lines[-1]), ["systemctl", "start", "relaynat-relay"])
        self.assertTrue(any(command(line)[:1] == ["cp"] and "then edit it" in line
                            for line in lines))
        lines = commandLines(withoutPackage)
        self.assertTrue(lines[0].startswith("cp debian/relaynat-*.service /etc/systemd/system/"))
        self.assertTrue(lines[-1].startswith("systemctl daemon-reload && systemctl enable --now "))

    async def test_withPackage(self) -> None:
        """
        The package's block, line by line: the package installed (its files
        and its postinst) enables the three units and makes the relaynat
        user and /etc/relaynat; the relay's condition is false until its file
        is copied; after the lines that make its files, the unit's ExecStart,
        run as the unit says, serves /healthz, publishes the fingerprint
        keygen printed, and lets demo-client log in with the typed password;
        its reload takes a user added by C{relaynat passwd}, which keeps the
        users file readable by the group; SIGTERM ends it cleanly with no
        process left.
        """
        block = commandLines(serviceBlocks()[0])
        self.assertTrue(block[0].startswith("make deb && apt install ./build/deb/relaynat_"))
        namespace = await self.installPackage(package())
        gid = namespace.groupId("relaynat")

        # The lines, as written, from a fresh folder; systemctl start last.
        unitName = command(block[-1])[2] + ".service"
        unit = namespace.unit(unitName)
        self.assertLessEqual(set(unit.settings), set(SETTINGS),
                             "the unit has a setting this test does not know: teach it SETTINGS")
        conditionPath, mustExist = unit.condition()
        self.assertNotEqual(await namespace.exists(conditionPath), mustExist,
                            f"{unitName}'s condition holds before the README's lines")
        fresh = os.path.abspath(self.mktemp())
        os.mkdir(fresh)
        fingerprint = None
        for line in block[1:-1]:
            words = command(line)
            if words[:2] == ["relaynat", "passwd"] and "--password-file" not in words:
                await self.onTerminal(namespace, line, fresh)
                continue
            child = await namespace.runOk(line, fresh)
            if words[:2] == ["relaynat", "keygen"]:
                found = re.search(r"^fingerprint: (sha256:[0-9a-f]{64})$", child.text(), re.M)
                assert found is not None, child.text()
                fingerprint = found.group(1)
            if words[0] == "cp" and "then edit it" in line:
                self.editRelayFile(namespace, os.path.join(words[2], os.path.basename(words[1])))
        assert fingerprint is not None, "no keygen line"
        self.assertEqual(await namespace.exists(conditionPath), mustExist,
                         f"{unitName}'s condition does not hold after the README's lines")
        for name in os.listdir(namespace.path("/etc/relaynat")):
            info = os.stat(namespace.path(f"/etc/relaynat/{name}"))
            self.assertEqual((name, info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)),
                             (name, 0, gid, 0o640))

        await self.startAndUse(namespace, unit, fingerprint)

    async def installPackage(self, deb: str) -> MountNamespace:
        """
        "apt install" as far as it goes without dpkg's database: the
        package's files laid over the host's in a namespace, its postinst
        run there, and what the postinst did checked.
        """
        root = os.path.abspath(self.mktemp())
        self.addCleanup(shutil.rmtree, root, ignore_errors=True)
        for option, into in (("-x", root), ("-e", os.path.join(root, "DEBIAN"))):
            child = await runCommand(reactor, ["dpkg-deb", option, deb, into], env=ROOT_ENV)
            self.assertEqual(child.exitCode, 0, child.tail())
        lowers: dict[str, str | None] = {"/var": None}
        for top in sorted(os.listdir(root)):
            if top == "DEBIAN":
                continue
            if os.path.islink("/" + top):
                # A merged /usr: dpkg puts lib/ where /lib leads.
                target = root + os.path.realpath("/" + top)
                shutil.copytree(os.path.join(root, top), target, symlinks=True,
                                dirs_exist_ok=True)
                shutil.rmtree(os.path.join(root, top))
            else:
                lowers["/" + top] = os.path.join(root, top)
        namespace = await self.namespace(lowers)
        where = await namespace.runOk("command -v relaynat")
        self.assertEqual(where.text().strip(), "/usr/bin/relaynat")
        postinst = await runCommand(
            reactor, namespace.enter("/bin/sh", "-c", 'cd / && exec "$@" configure', "sh",
                                     os.path.join(root, "DEBIAN", "postinst")),
            env=dict(ROOT_ENV, DPKG_MAINTSCRIPT_PACKAGE="relaynat",
                     DPKG_MAINTSCRIPT_NAME="postinst"),
        )
        self.assertEqual(postinst.exitCode, 0, postinst.tail())
        for role in ("relay", "skeleton", "client"):
            name = f"relaynat-{role}.service"
            self.assertEqual(
                os.readlink(namespace.path(f"/etc/systemd/system/multi-user.target.wants/{name}")),
                f"/lib/systemd/system/{name}",
            )
        etc = os.stat(namespace.path("/etc/relaynat"))
        gid = namespace.groupId("relaynat")
        self.assertEqual((etc.st_uid, etc.st_gid, stat.S_IMODE(etc.st_mode)), (0, gid, 0o750))
        self.assertEqual(int(namespace.passwdEntry("relaynat")[3]), gid)
        return namespace

    def editRelayFile(self, namespace: MountNamespace, path: str) -> None:
        """Then edit it: the relay's ports moved to free ones on 127.0.0.1."""
        with open(namespace.path(path), "rb") as f:
            document = tomllib.load(f)
        self.ports = {
            key: pickFreePort() for key in ("clients", "skeletons", "web")
        }
        moves = {endpointPort(document["relay"][key], True): port
                 for key, port in self.ports.items()}
        with open(namespace.path(path), "w", encoding="utf-8") as f:
            f.write(tomlText(moveEndpoints(document, moves)))

    async def onTerminal(self, namespace: MountNamespace, line: str, cwd: str) -> None:
        """Run C{line} inside on a pseudo-terminal, typing the password when asked."""
        terminal = Terminal(PASSWORD)
        argv = namespace.shell(line, cwd)
        process = reactor.spawnProcess(  # type: ignore[attr-defined]
            terminal, argv[0], argv, env=ROOT_ENV, usePTY=True
        )
        ended = terminal.ended
        ended.addTimeout(60, reactor)
        try:
            code = await ended
        except TimeoutError:
            try:
                process.signalProcess("KILL")
            except ProcessExitedAlready:
                pass
            raise FailTest(f"{line!r} did not end: {terminal.output[-500:]!r}") from None
        self.assertEqual((code, terminal.prompts), (0, 2), terminal.output[-1000:])

    async def startAndUse(self, namespace: MountNamespace, unit: Unit, fingerprint: str) -> None:
        """systemctl start, then the relay used, reloaded and stopped as systemd would."""
        self.assertTrue(self.ports, "the relay's file was not edited: no free ports")
        user = namespace.passwdEntry(unit.service["User"])
        uid, gid = int(user[2]), namespace.groupId(unit.service["Group"])
        staging = os.path.join(namespace.layers, "service-dev")
        relay = spawn(reactor, "relay", serviceCommand(unit, namespace, staging), env=ROOT_ENV)
        self.addCleanup(relay.stop, reactor, 5.0)

        def running() -> None:
            if not relay.running:
                raise LocalStackError(f"the relay {relay.describeEnd()}:\n{relay.tail()}")

        async def healthy() -> None:
            body = await fetchPage(reactor, self.ports["web"], "/healthz", timeout=5)
            if body != b"ok\n":
                # A wrong answer, not a late one: pollUntil gives up at once
                # on a LocalStackError (a FailTest it would retry for 30 s).
                raise LocalStackError(f"/healthz: {body!r}")

        await pollUntil(reactor, healthy, 30, "the relay's /healthz", guard=running)
        pid = relay.pid
        assert pid is not None
        self.assertIn(unit.execStart()[0], readText(f"/proc/{pid}/cmdline").split("\0"))
        status = dict(
            line.split(":\t", 1) for line in readText(f"/proc/{pid}/status").splitlines()
        )
        self.assertEqual(status["Uid"].split(), [str(uid)] * 4)
        self.assertEqual(status["Gid"].split(), [str(gid)] * 4)
        self.assertEqual(status["NoNewPrivs"], "1" if unit.yes("NoNewPrivileges") else "0")
        for name in unit.service.get("AmbientCapabilities", "").split():
            self.assertTrue(int(status["CapAmb"], 16) >> CAPABILITIES[name] & 1, name)
        (limit,) = re.findall(
            r"^Max open files\s+(\d+)\s+(\d+)", readText(f"/proc/{pid}/limits"), re.M
        )
        self.assertEqual(limit[0], limit[1], "the relay did not raise its soft limit to the hard")
        if unit.service.get("ProtectSystem") == "strict":
            mounts = [line.split() for line in readText(f"/proc/{pid}/mountinfo").splitlines()]
            writable = [fields[4] for fields in mounts if "ro" not in fields[5].split(",")
                        and not under(fields[4], "/dev", "/proc", "/sys", "/tmp", "/var/tmp")]
            self.assertEqual(writable, [], "ProtectSystem=strict not applied")
        service = mountNamespaceOf(pid)

        # The relay publishes the key keygen made, and demo-client logs in.
        folder = os.path.abspath(self.mktemp())
        os.mkdir(folder, 0o700)
        pem = os.path.join(folder, "relay.pem")
        trusted = await runCommand(reactor, relaynatCommand() + [
            "trust", f"http://127.0.0.1:{self.ports['web']}/", "--out", pem,
            "--expect", fingerprint,
        ])
        self.assertEqual(trusted.exitCode, 0, trusted.tail())
        password = os.path.join(folder, "client.password")
        writePrivate(password, PASSWORD.decode())
        await self.logIn(pem, "demo-client", password)

        # ExecReload after a user is added: the relay takes it.
        later = os.path.join(folder, "later.password")
        writePrivate(later, "the password of demo-later")
        await namespace.runOk(
            f"relaynat passwd /etc/relaynat/users demo-later --join web --password-file {later}"
        )
        users = os.stat(namespace.path("/etc/relaynat/users"))
        self.assertEqual((users.st_uid, users.st_gid, stat.S_IMODE(users.st_mode)),
                         (0, gid, 0o640))
        reload = await runCommand(reactor, namespace.enter(*unit.execReload(pid)), env=ROOT_ENV)
        self.assertEqual(reload.exitCode, 0, reload.tail())

        async def reloaded() -> None:
            if "users file reloaded: 2 users" not in relay.text():
                raise ValueError("not yet")

        await pollUntil(reactor, reloaded, 15, "the relay's reload", guard=running)
        await self.logIn(pem, "demo-later", later)

        # systemctl stop: SIGTERM (no ExecStop, KillSignal's default).
        assert relay.transport is not None
        relay.transport.signalProcess("TERM")
        self.assertTrue(await relay.waitEnded(reactor, 10), "the relay did not stop on SIGTERM")
        self.assertTrue(relay.stoppedNormally(), f"{relay.describeEnd()}\n{relay.tail()}")
        _log.info("the relay's output:\n{output}", output=relay.text())
        self.assertEqual(processesIn(service), [], "processes left in the service's namespace")
        for word in ("Traceback", "Unhandled", "Unable to write", "#warn]", "#error]",
                     "#critical]"):
            self.assertNotIn(word, relay.text())

    async def logIn(self, pem: str, user: str, path: str) -> None:
        """C{user} logs in at the clients' port, the key pinned: an empty list of servers."""
        listed = await runCommand(reactor, relaynatCommand() + [
            "list", "--relay", f"tcp:127.0.0.1:{self.ports['clients']}", "--relay-key", pem,
            "--user", user, "--password-file", path, "--json",
        ])
        self.assertEqual(listed.exitCode, 0, listed.tail())
        self.assertEqual(json.loads(listed.stdout), [])

    async def test_withoutPackage(self) -> None:
        """
        The block without the package, from the checkout: the units copied
        to /etc/systemd/system as files equal to debian/'s, the relaynat
        user and group made from debian/'s sysusers file, /etc/relaynat
        made as the package makes it, and the relay's unit enabled.
        """
        namespace = await self.namespace({"/etc": None, "/var": None})
        for line in commandLines(serviceBlocks()[1]):
            daemonReload = "systemctl daemon-reload && systemctl enable --now "
            if line.startswith(daemonReload):
                # No systemd to reload or start: enable needs none.
                units = command(line[len(daemonReload):])
                await namespace.runOk("systemctl enable " + " ".join(units))
            else:
                await namespace.runOk(line, REPO)
        for role in ("relay", "skeleton", "client"):
            path = namespace.path(f"/etc/systemd/system/relaynat-{role}.service")
            self.assertTrue(stat.S_ISREG(os.lstat(path).st_mode))
            with open(path, "rb") as f, open(
                os.path.join(REPO, "debian", f"relaynat.relaynat-{role}.service"), "rb"
            ) as source:
                self.assertEqual(f.read(), source.read())
        gid = namespace.groupId("relaynat")
        self.assertEqual(int(namespace.passwdEntry("relaynat")[3]), gid)
        etc = os.stat(namespace.path("/etc/relaynat"))
        self.assertEqual((etc.st_uid, etc.st_gid, stat.S_IMODE(etc.st_mode)), (0, gid, 0o750))
        link = namespace.path("/etc/systemd/system/multi-user.target.wants/relaynat-relay.service")
        self.assertEqual(os.readlink(link), "/etc/systemd/system/relaynat-relay.service")
