"""
Structured logs (L{relaynat.jsonlog}): events as JSON lines, where twistd's
options send them, and a real C{twistd --logger relaynat.jsonlog.logger}
relay whose every line parses.
"""

from __future__ import annotations

import io
import json
import os
from datetime import datetime, timezone
from typing import Any

from twisted.internet import reactor
from twisted.logger import Logger, LogLevel, formatEventAsClassicLogText
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relaynat.localstack import (
    ChildProcess,
    pollUntil,
    relaynatList,
    spawn,
    twistdCommand,
    writeConfigs,
    writeKeysAndUsers,
)
from relaynat.jsonlog import eventAsJSONLine, jsonLinesObserver, logDestination
from relaynat.test.net import runAsync


class Unserialisable:
    def __repr__(self) -> str:
        return "<Unserialisable>"


def emitted(emit: Any) -> list[dict[str, Any]]:
    """What C{emit(log)} logs, through L{jsonLinesObserver}, parsed line by line."""
    output = io.StringIO()
    log = Logger(namespace="relaynat.test", observer=jsonLinesObserver(output))
    emit(log)
    text = output.getvalue()
    assert text.endswith("\n"), repr(text)
    return [json.loads(line) for line in text.splitlines()]


class EventAsJSONLineTests(SynchronousTestCase):
    """One event, one line of JSON, with the text log's text and the event's fields."""

    def test_fields(self) -> None:
        """
        An event with fields gives its time in ISO 8601 UTC, its level,
        namespace and system, the text the text log shows, and each field
        as itself when JSON takes it, as its repr when it does not.
        """
        captured: list[dict[str, Any]] = []

        def emit(log: Logger) -> None:
            log.observer = _tee(log.observer, captured)
            log.info(
                "tunnel {tunnel} of {user} to {server} ended: {up} bytes up, {down} down",
                tunnel="t7-9c01d2e4", user="demo-client", server="web", up=231, down=1142,
                source=Unserialisable(), ratio=float("nan"), tags=("a", 1),
            )

        [line] = emitted(emit)
        [event] = captured
        self.assertEqual(
            line["text"], "tunnel t7-9c01d2e4 of demo-client to web ended: 231 bytes up, 1142 down"
        )
        # The same text as twistd's text log, after its time and [system].
        classic = formatEventAsClassicLogText(event)
        assert classic is not None
        self.assertTrue(classic.endswith(f"[{line['system']}] {line['text']}\n"), classic)
        self.assertEqual(line["level"], "info")
        self.assertEqual(line["namespace"], "relaynat.test")
        self.assertEqual(line["system"], "relaynat.test#info")
        when = datetime.fromisoformat(line["time"].replace("Z", "+00:00"))
        self.assertEqual(when.utcoffset(), timezone.utc.utcoffset(None))
        self.assertAlmostEqual(when.timestamp(), event["log_time"], places=5)
        for key, value in (
            ("tunnel", "t7-9c01d2e4"), ("user", "demo-client"), ("server", "web"),
            ("up", 231), ("down", 1142), ("source", "<Unserialisable>"), ("ratio", "nan"),
            ("tags", ["a", 1]),
        ):
            self.assertEqual(line[key], value, key)
        self.assertNotIn("traceback", line)
        self.assertEqual([k for k in line if k.startswith("log_")], [])

    def test_failure(self) -> None:
        """
        A failure logged with C{log.failure} becomes its traceback text in
        C{traceback}, and a failure given as a field becomes text too: never
        the object, never Twisted's serialised form.
        """

        def emit(log: Logger) -> None:
            try:
                raise ValueError("the users file has no line 3")
            except ValueError:
                failure = Failure()
                log.failure("users file not reloaded for {user}", user="demo", why=failure)

        [line] = emitted(emit)
        self.assertEqual(line["level"], "critical")
        self.assertEqual(line["text"], "users file not reloaded for demo")
        self.assertIsInstance(line["traceback"], str)
        self.assertIn("Traceback", line["traceback"])
        self.assertIn("ValueError: the users file has no line 3", line["traceback"])
        self.assertIn(", in emit\n", line["traceback"])
        self.assertEqual(line["why"], line["traceback"])
        self.assertEqual(line["user"], "demo")

    def test_reservedNames(self) -> None:
        """An event's own field named like a core key is kept, with a C{_} after it."""

        def emit(log: Logger) -> None:
            log.warn("{time} and {system}", time="noon", system=3, text="x")

        [line] = emitted(emit)
        self.assertEqual(line["text"], "noon and 3")
        self.assertEqual((line["time_"], line["system_"], line["text_"]), ("noon", 3, "x"))
        self.assertEqual(line["system"], "relaynat.test#warn")
        self.assertEqual(line["level"], "warn")

    def test_oneLine(self) -> None:
        """A text with newlines (and U+2028) is still one line."""

        def emit(log: Logger) -> None:
            log.error("first\nsecond\u2028third")

        output = io.StringIO()
        Logger(namespace="n", observer=jsonLinesObserver(output)).error("first\nsecond\u2028third")
        self.assertEqual(output.getvalue().count("\n"), 1)
        [line] = emitted(emit)
        self.assertEqual(line["text"], "first\nsecond\u2028third")

    def test_nothingToShow(self) -> None:
        """An event with no text and no failure gives no line, as in the text log."""
        self.assertIsNone(eventAsJSONLine({"log_level": LogLevel.info, "log_time": 0.0}))
        self.assertIsNone(formatEventAsClassicLogText({"log_level": LogLevel.info}))

    def test_legacy(self) -> None:
        """
        An event of the legacy L{twisted.python.log} (as ports log their
        start) keeps its text and system, without its bookkeeping keys.
        """
        line = eventAsJSONLine(
            {
                "message": ("Site starting on 7080",), "isError": 0, "system": "-",
                "time": 1.0, "log_time": 1.0, "log_text": "Site starting on 7080",
                "log_format": "{log_text}", "log_level": LogLevel.info,
                "log_namespace": "log_legacy", "log_system": "-", "format": None,
            }
        )
        assert line is not None
        self.assertEqual(
            json.loads(line),
            {
                "time": "1970-01-01T00:00:01.000000Z", "level": "info",
                "namespace": "log_legacy", "system": "-", "text": "Site starting on 7080",
            },
        )


def _tee(observer: Any, into: list[dict[str, Any]]) -> Any:
    def both(event: dict[str, Any]) -> None:
        into.append(event)
        observer(event)

    return both


class LogDestinationTests(SynchronousTestCase):
    """Where the JSON goes, by twistd's own rule for its text log."""

    def test_rule(self) -> None:
        """
        C{-n} alone is stdout, C{--logfile} a file (with or without
        C{-n}), C{-l -} with C{-n} stdout, nothing twistd.log; what comes
        after the role's name is the role's and is not read.
        """
        cases = {
            ("-n", "relay", "--config", "relay.toml"): (None, True),
            ("--logger", "relaynat.jsonlog.logger", "-n", "--pidfile=", "relay", "-l", "x"):
                (None, True),
            ("-n", "-l", "relay.json", "relay"): ("relay.json", True),
            ("--logfile=/var/log/r.json", "relay"): ("/var/log/r.json", False),
            ("-nl", "-", "skeleton"): (None, True),
            ("relay",): ("twistd.log", False),
        }
        for argv, expected in cases.items():
            self.assertEqual(logDestination(list(argv)), expected, argv)

    def test_refused(self) -> None:
        """A daemon to stdout is refused, as twistd refuses it; so is C{--syslog}."""
        for argv in (["-l", "-", "relay"], ["-n", "--syslog", "relay"]):
            self.assertRaises(usage.UsageError, logDestination, argv)


class TwistdJSONLogTests(TestCase):
    """A real C{twistd --logger relaynat.jsonlog.logger} relay."""

    timeout = 90

    @runAsync
    async def test_stdout(self) -> None:
        """
        C{twistd --logger relaynat.jsonlog.logger -n relay} writes only JSON
        lines to stdout: twistd's start, the relay's ports listening, a
        login with its C{user} and C{source} fields, and its shutdown.
        """
        await self.runRelay(logPath=None)

    @runAsync
    async def test_logfile(self) -> None:
        """With C{-l FILE} the same JSON lines go to the file, and nothing to stdout."""
        child = await self.runRelay(logPath="relay.json")
        self.assertEqual(bytes(child.stdout), b"")

    async def runRelay(self, logPath: str | None) -> ChildProcess:
        work = os.path.abspath(self.mktemp())
        configs = writeConfigs(work, 1)
        writeKeysAndUsers(configs)
        extra = [] if logPath is None else ["-l", logPath]
        argv = twistdCommand() + [
            "--logger", "relaynat.jsonlog.logger", "-n", "--pidfile=", *extra,
            "relay", "--config", configs.relay,
        ]
        child = spawn(reactor, "relay", argv, cwd=work)
        self.addCleanup(child.stop, reactor)

        def lines() -> list[dict[str, Any]]:
            if logPath is None:
                raw = child.stdout.decode("utf-8")
            else:
                try:
                    with open(os.path.join(work, logPath), encoding="utf-8") as f:
                        raw = f.read()
                except FileNotFoundError:
                    raw = ""
            parsed = []
            for text in raw.splitlines(keepends=True):
                if not text.endswith("\n"):
                    break  # still being written
                try:
                    parsed.append(json.loads(text))
                except ValueError:
                    self.fail(f"not a JSON line from the relay: {text!r}")
            return parsed

        def alive() -> None:
            if not child.running:
                self.fail(f"the relay {child.describeEnd()}:\n{child.tail()}")

        async def listening() -> None:
            texts = [line["text"] for line in lines()]
            if not any(t.endswith(f"starting on {configs.clientsPort}") for t in texts):
                raise ValueError(f"not listening yet: {texts}")

        await pollUntil(reactor, listening, timeout=30, what="the relay listening", guard=alive)
        listed = await relaynatList(reactor, configs.client)
        self.assertEqual(listed.exitCode, 0, listed.text())

        async def loggedIn() -> dict[str, Any]:
            for line in lines():
                if line["text"].startswith("demo-client logged in from"):
                    return line
            raise ValueError("no login logged yet")

        login = await pollUntil(reactor, loggedIn, timeout=10, what="the login logged")
        self.assertEqual(login["user"], "demo-client")
        self.assertIn("127.0.0.1", login["source"])
        self.assertEqual(login["level"], "info")
        await child.stop(reactor)
        self.assertTrue(child.stoppedNormally(), child.describeEnd())
        logged = lines()
        texts = [line["text"] for line in logged]
        self.assertTrue(texts[0].startswith("twistd "), texts[0])
        self.assertTrue(texts[0].endswith("starting up."), texts[0])
        for port in (configs.clientsPort, configs.skeletonsPort, configs.webPort):
            self.assertTrue(
                any(t.endswith(f"starting on {port}") for t in texts), f"{port}: {texts}"
            )
        self.assertEqual(texts[-1], "Server Shut Down.")
        for line in logged:
            self.assertLessEqual({"time", "level", "namespace", "system", "text"}, set(line))
            datetime.fromisoformat(line["time"].replace("Z", "+00:00"))
        return child
