"""
The Debian package that C{make deb} builds from debian/ (dh-virtualenv):
relaynat installed for real (not editable) in a virtualenv at
/opt/venvs/relaynat, the three systemd units, the relaynat user, the
examples, the licence and a fresh Twisted plugin cache.

The package is looked for in build/deb/ (C{make deb} puts it there; or
C{RELAYNAT_DEB=path}). Without one these tests skip, except under CI
(C{CI} set), where .ci/run builds it first and a missing one fails.

The tests unpack it with C{dpkg-deb -x} into a temporary folder rather than
installing it: a unit test should not add a package, a user and enabled
units to the machine it runs on. The unpacked virtualenv runs in place when
its own interpreter is called by its path (C{bin/python -I bin/twistd}):
Python finds the venv from the C{pyvenv.cfg} beside the interpreter, and
only the scripts' C{#!} lines and C{bin/activate} name /opt/venvs/relaynat.
"""

from __future__ import annotations

import atexit
import configparser
import functools
import glob
import os
import pickle
import re
import shlex
import shutil
import subprocess
import tempfile
import tomllib

from twisted.trial.unittest import FailTest, SkipTest, TestCase

import relaynat

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEB_DIR = os.path.join(REPO, "build", "deb")
ROLES = ("relay", "skeleton", "client")
VENV = "/opt/venvs/relaynat"
DOC = "usr/share/doc/relaynat"


def findPackage() -> str | None:
    """The .deb to inspect: C{$RELAYNAT_DEB}, else the newest in build/deb/."""
    given = os.environ.get("RELAYNAT_DEB")
    if given:
        return given if os.path.exists(given) else None
    found = glob.glob(os.path.join(DEB_DIR, "relaynat_*.deb"))
    return max(found, key=os.path.getmtime) if found else None


def package() -> str:
    """
    The .deb's path, or the test skips (fails under CI) saying how to get one.
    """
    deb = findPackage()
    if deb is None:
        where = os.environ.get("RELAYNAT_DEB") or os.path.join(DEB_DIR, "relaynat_*.deb")
        message = f"no Debian package at {where}: run `make deb` (about 3 minutes)"
        if os.environ.get("CI"):
            raise FailTest(f"{message}; under CI, .ci/run builds it before `make check`")
        raise SkipTest(message)
    if shutil.which("dpkg-deb") is None:
        raise SkipTest("dpkg-deb is not installed: cannot open the package")
    return deb


@functools.cache
def _unpack(deb: str) -> str:
    root = tempfile.mkdtemp(prefix="relaynat-deb-")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    subprocess.run(["dpkg-deb", "-x", deb, root], check=True, timeout=120)
    subprocess.run(["dpkg-deb", "-e", deb, os.path.join(root, "DEBIAN")], check=True, timeout=60)
    return root


def unpacked() -> str:
    """
    The folder the package is unpacked in (once per test process, removed
    at exit; tests must not change it), with its control files in DEBIAN/.
    """
    return _unpack(os.path.abspath(package()))


def field(name: str) -> str:
    """A field of the package's control file."""
    result = subprocess.run(
        ["dpkg-deb", "--field", package(), name],
        capture_output=True, text=True, check=True, timeout=60,
    )
    return result.stdout.strip()


def sitePackages(root: str) -> str:
    (path,) = glob.glob(os.path.join(root, VENV.lstrip("/"), "lib", "python3*", "site-packages"))
    return path


def readUnit(path: str) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    with open(path) as f:
        unit.read_file(f)
    return unit


def snapshot(top: str) -> dict[str, tuple[int, int]]:
    """Every file under C{top} with its mtime (ns) and size."""
    files = {}
    for directory, _, names in os.walk(top):
        for name in names:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            files[path] = (info.st_mtime_ns, info.st_size)
    return files


def unpackedVenv() -> tuple[str, str]:
    """The unpacked package's venv and its Python; a skip if that Python is not here."""
    venv = os.path.join(unpacked(), VENV.lstrip("/"))
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(python):
        raise SkipTest(f"the venv's interpreter {os.readlink(python)} is not installed here")
    return venv, python


class PackageTests(TestCase):
    def test_control(self) -> None:
        """
        The package is relaynat at relaynat's own version (a new version
        needs a debian/changelog entry), for amd64 or all, and depends on a
        Python 3.11 (the venv's interpreter is /usr/bin/python3) and on a
        systemd-sysusers to make its user.
        """
        self.assertEqual(field("Package"), "relaynat")
        self.assertEqual(
            field("Version"), relaynat.__version__,
            "debian/changelog's version is not relaynat.__version__: add an entry",
        )
        self.assertIn(field("Architecture"), ("amd64", "all"))
        self.assertEqual(
            os.path.basename(package()),
            f"relaynat_{relaynat.__version__}_{field('Architecture')}.deb",
        )
        depends = field("Depends")
        self.assertIn("python3 (>= 3.11~)", depends)
        self.assertIn("python3 (<< 3.12)", depends)
        self.assertIn("systemd-sysusers", depends)

    def test_virtualenv(self) -> None:
        """
        relaynat and twistd live in /opt/venvs/relaynat, installed as real
        files (no editable install's finder, link or path file pointing
        back at a source tree); the scripts run the venv's own Python, and
        /usr/bin/relaynat leads to the venv's relaynat.
        """
        root = unpacked()
        venv = os.path.join(root, VENV.lstrip("/"))
        site = sitePackages(root)
        for name in ("relaynat/__init__.py", "relaynat/tap/relay.py",
                     "twisted/plugins/relaynat_plugins.py", "twisted/scripts/twistd.py"):
            path = os.path.join(site, name)
            self.assertTrue(os.path.isfile(path) and not os.path.islink(path), name)
        leftovers = [
            name for name in os.listdir(site)
            if name.startswith("__editable__") or name.endswith(".egg-link")
        ]
        self.assertEqual(leftovers, [])
        for pth in glob.glob(os.path.join(site, "*.pth")):
            with open(pth) as f:
                self.assertNotIn(REPO, f.read(), pth)
        for script in ("twistd", "relaynat"):
            with open(os.path.join(venv, "bin", script)) as f:
                self.assertEqual(f.readline().strip(), f"#!{VENV}/bin/python")
        self.assertEqual(
            os.readlink(os.path.join(root, "usr/bin/relaynat")), f"{VENV}/bin/relaynat"
        )

    def test_units(self) -> None:
        """
        The three units are installed as relaynat-ROLE.service, as in
        debian/; each runs as relaynat and starts only once its role's file,
        the one its ExecStart reads, exists (so the relay that the package
        enables and starts stays inactive until /etc/relaynat/relay.toml is
        written); only the relay reloads, with SIGHUP.
        """
        root = unpacked()
        for role in ROLES:
            path = os.path.join(root, "lib/systemd/system", f"relaynat-{role}.service")
            with open(path, "rb") as f, open(
                os.path.join(REPO, "debian", f"relaynat.relaynat-{role}.service"), "rb"
            ) as source:
                self.assertEqual(f.read(), source.read(), "the .deb is older than debian/")
            unit = readUnit(path)
            argv = shlex.split(unit["Service"]["ExecStart"])
            self.assertEqual(argv[0], f"{VENV}/bin/twistd")
            config = argv[argv.index("--config") + 1]
            self.assertEqual(config, f"/etc/relaynat/{role}.toml")
            self.assertEqual(unit["Unit"]["ConditionPathExists"], config)
            self.assertEqual(unit["Service"]["User"], "relaynat")
            self.assertEqual(unit["Service"]["Group"], "relaynat")
            # Every role rereads its file on SIGHUP.
            self.assertEqual(unit["Service"].get("ExecReload"), "/bin/kill -HUP $MAINPID")

    def test_maintainerScripts(self) -> None:
        """
        The postinst makes the relaynat user (systemd-sysusers), enables
        and starts the three units (each held back by its condition), and
        only then gives /etc/relaynat to root:relaynat with mode 0750; the
        debhelper snippets appear once.
        """
        root = unpacked()
        with open(os.path.join(root, "DEBIAN", "postinst")) as f:
            postinst = f.read()
        call = "systemd-sysusers ${DPKG_ROOT:+--root=\"$DPKG_ROOT\"} relaynat.conf"
        self.assertEqual(postinst.count(call), 1)
        sysusers = postinst.index(call)
        for role in ROLES:
            unit = f"'relaynat-{role}.service'"
            self.assertEqual(postinst.count(f"deb-systemd-helper enable {unit}"), 1)
            self.assertIn(f"deb-systemd-invoke $_dh_action {unit}", postinst)
        chown = postinst.index("chown root:relaynat /etc/relaynat")
        chmod = postinst.index("chmod 0750 /etc/relaynat")
        self.assertLess(sysusers, chown)
        self.assertLess(sysusers, chmod)
        self.assertTrue(os.path.isdir(os.path.join(root, "etc/relaynat")))

    def test_systemdAccepts(self) -> None:
        """
        systemd-analyze verify finds nothing to say about the installed
        units, with ExecStart pointed at the unpacked twistd (it checks that
        the program exists).
        """
        root = unpacked()
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise SkipTest("systemd-analyze is not installed (apt-get install systemd)")
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        paths = []
        for role in ROLES:
            name = f"relaynat-{role}.service"
            with open(os.path.join(root, "lib/systemd/system", name)) as f:
                text = f.read().replace(f"{VENV}/bin/twistd", f"{root}{VENV}/bin/twistd")
            paths.append(os.path.join(directory, name))
            with open(paths[-1], "w") as f:
                f.write(text)
        result = subprocess.run(
            [analyze, "verify", *paths], capture_output=True, text=True, timeout=60
        )
        self.assertEqual((result.returncode, result.stderr.strip()), (0, ""))

    def test_sysusers(self) -> None:
        """
        The package's sysusers file makes the relaynat user and group the
        units run as (tried with systemd-sysusers --root on an empty root).
        """
        root = unpacked()
        conf = os.path.join(root, "usr/lib/sysusers.d/relaynat.conf")
        self.assertTrue(os.path.isfile(conf))
        sysusers = shutil.which("systemd-sysusers")
        if sysusers is None:
            raise SkipTest("systemd-sysusers is not installed (apt-get install systemd)")
        system = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, system)
        os.mkdir(os.path.join(system, "etc"))
        subprocess.run(
            [sysusers, f"--root={system}", conf], check=True, capture_output=True, timeout=60
        )
        with open(os.path.join(system, "etc/passwd")) as f:
            users = [line.split(":") for line in f]
        with open(os.path.join(system, "etc/group")) as f:
            groups = [line.split(":") for line in f]
        (user,) = (entry for entry in users if entry[0] == "relaynat")
        (group,) = (entry for entry in groups if entry[0] == "relaynat")
        self.assertEqual(user[3], group[2])

    def test_examples(self) -> None:
        """
        conf/'s three example files are in /usr/share/doc/relaynat/examples,
        uncompressed and valid TOML.
        """
        root = unpacked()
        examples = os.path.join(root, DOC, "examples")
        self.assertEqual(sorted(os.listdir(examples)), sorted(f"{role}.toml" for role in ROLES))
        for role in ROLES:
            with open(os.path.join(examples, f"{role}.toml"), "rb") as f:
                self.assertIn(role, tomllib.load(f))

    def test_licence(self) -> None:
        """
        /usr/share/doc/relaynat/copyright is in Debian's machine-readable
        format and holds the MIT (Expat) licence of LICENSE, which is
        installed beside it and in relaynat's dist-info.
        """
        root = unpacked()
        with open(os.path.join(REPO, "LICENSE")) as f:
            licence = f.read()
        self.assertIn("Copyright (c) 2026 the relaynat authors", licence)
        for path in (os.path.join(root, DOC, "LICENSE"),
                     *glob.glob(os.path.join(sitePackages(root), "relaynat-*.dist-info",
                                             "licenses", "LICENSE"))):
            with open(path) as f:
                self.assertEqual(f.read(), licence, path)
        with open(os.path.join(root, DOC, "copyright")) as f:
            copyright = f.read()
        self.assertTrue(copyright.startswith(
            "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
        ))
        self.assertIn("Copyright: 2026 the relaynat authors\n", copyright)
        self.assertIn("\nLicense: Expat\n", copyright)
        # The licence's words, whatever the line breaks and Debian's " ." lines.
        body = licence.split("Permission is hereby granted", 1)[1]
        words = re.sub(r"\s+", " ", body).strip()
        text = copyright.split("Permission is hereby granted", 1)[1].replace("\n .\n", "\n")
        self.assertEqual(re.sub(r"\s+", " ", text).strip(), words)

    def test_pluginCache(self) -> None:
        """
        The plugin cache is built into the package, readable by all, names
        relaynat's plugins, and is strictly newer than every module beside
        it, as Twisted requires to use it without writing it again.
        """
        root = unpacked()
        plugins = os.path.join(sitePackages(root), "twisted", "plugins")
        cache = os.path.join(plugins, "dropin.cache")
        self.assertEqual(os.stat(cache).st_mode & 0o7777, 0o644)
        with open(cache, "rb") as f:
            self.assertIn("relaynat_plugins", pickle.load(f))
        built = os.path.getmtime(cache)
        stale = [
            name for name in os.listdir(plugins)
            if name.endswith(".py") and os.path.getmtime(os.path.join(plugins, name)) >= built
        ]
        self.assertEqual(stale, [])

    def test_twistdHelp(self) -> None:
        """
        The package's own twistd, run from the unpacked venv with its own
        Python, imports relaynat from the venv and lists the relay,
        skeleton and client roles, and writes nothing in the venv while
        doing so: the plugin cache and the compiled modules are fresh (run
        as root, as in CI, Twisted and Python would rewrite stale ones).
        """
        venv, python = unpackedVenv()
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
        where = subprocess.run(
            [python, "-I", "-c", "import relaynat, twisted.plugins; print(relaynat.__file__)"],
            capture_output=True, text=True, env=env, check=True, timeout=60,
        )
        self.assertTrue(where.stdout.strip().startswith(venv + os.sep), where.stdout)
        before = snapshot(venv)
        result = subprocess.run(
            [python, "-I", os.path.join(venv, "bin", "twistd"), "--help"],
            capture_output=True, text=True, env=env, timeout=120,
        )
        self.assertEqual((result.returncode, result.stderr), (0, ""))
        commands = result.stdout.split("\nCommands:\n", 1)[1]
        listed = set(re.findall(r"^    (\S+) ", commands, re.MULTILINE))
        self.assertTrue(set(ROLES) <= listed, listed)
        self.assertIn("relaynat's public relay", commands)
        after = snapshot(venv)
        changed = sorted(
            path[len(venv):] for path in before.keys() | after.keys()
            if before.get(path) != after.get(path)
        )
        self.assertEqual(changed, [])

    def test_relaynatCommand(self) -> None:
        """The package's relaynat command runs from the unpacked venv."""
        venv, python = unpackedVenv()
        result = subprocess.run(
            [python, "-I", os.path.join(venv, "bin", "relaynat"), "--version"],
            capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(relaynat.__version__, result.stdout + result.stderr)

