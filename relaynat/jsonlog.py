"""
Structured logs: one JSON object per line, for log shippers (journald's
JSON export, Vector, Fluent Bit, Promtail, jq), chosen with twistd's
C{--logger} option:

    twistd --logger relaynat.jsonlog.logger -n relay --config relay.toml

Each line holds the same events as twistd's text log, with C{time} (ISO 8601,
UTC), C{level}, C{namespace}, C{system}, C{text} (the text the text log
shows for the event), C{traceback} when it carries a failure, and the
event's own fields (C{user}, C{server}, C{tunnel}, ...).

Twisted's own L{twisted.logger.jsonFileLogObserver} is not used: it writes
RFC 7464 JSON text sequences (each record starts with an ASCII record
separator, which line-oriented shippers and C{jq} without C{--seq} reject),
keeps Twisted's C{log_}-prefixed keys, a Unix time and the unformatted
format string rather than the text, and a failure as Twisted's own
serialised structure.  That format exists so that Twisted can read its
events back (L{twisted.logger.eventsFromJSONLogFile}); a shipper wants
plain, flat lines instead.
"""

from __future__ import annotations

import json
import signal
import sys
from datetime import datetime, timezone
from typing import IO, Any

from twisted.logger import FileLogObserver, ILogObserver, LogEvent, formatEvent
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile
from twisted.scripts.twistd import ServerOptions

#: The keys every line has (C{traceback} only with a failure); an event's own
#: field of one of these names is written with a C{_} after it.
CORE_KEYS = frozenset({"time", "level", "namespace", "system", "text", "traceback"})

#: What an event from the legacy L{twisted.python.log} carries besides its
#: fields: its text, time, system and failure, already in the core keys.
_LEGACY_KEYS = frozenset(
    {"message", "isError", "printed", "time", "system", "format", "failure", "why", "logLevel"}
)


def _isoTime(when: float | None) -> str | None:
    if when is None:
        return None
    moment = datetime.fromtimestamp(when, timezone.utc)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _system(event: LogEvent) -> str:
    """What the text log shows between brackets (L{formatEventAsClassicLogText})."""
    system = event.get("log_system")
    if system is not None:
        return str(system)
    level = event.get("log_level")
    namespace = event.get("log_namespace") or "-"
    return f"{namespace}#{level.name if level is not None else '-'}"


def _traceback(failure: Failure) -> str:
    try:
        return failure.getTraceback()
    except Exception as e:  # a failure whose frames cannot be shown still says what it was
        return f"(unable to obtain traceback: {e!r}) {failure.getErrorMessage()}"


def _jsonValue(value: Any) -> Any:
    """
    C{value} itself when it is JSON (strict: no NaN, no infinity), a
    failure's traceback text, or else its C{repr}: a line never fails to be
    written for one odd field.
    """
    if isinstance(value, Failure):
        return _traceback(value)
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return repr(value)
    return value


def eventAsJSONLine(event: LogEvent) -> str | None:
    """
    C{event} as one line of JSON ending in a newline; L{None} for an event
    the text log would not show either (one with no text and no failure).
    """
    text = formatEvent(event)
    failure = event.get("log_failure")
    if not text and failure is None:
        return None
    record: dict[str, Any] = {
        "time": _isoTime(event.get("log_time")),
        "level": event["log_level"].name if event.get("log_level") is not None else None,
        "namespace": event.get("log_namespace"),
        "system": _system(event),
        "text": text,
    }
    if isinstance(failure, Failure):
        record["traceback"] = _traceback(failure)
    legacy = "isError" in event and "message" in event
    for key, value in event.items():
        if not isinstance(key, str) or key.startswith("log_"):
            continue
        if legacy and key in _LEGACY_KEYS:
            continue
        record[key + "_" if key in CORE_KEYS else key] = _jsonValue(value)
    # ensure_ascii keeps a line one line whatever the text holds (U+2028 too).
    return json.dumps(record, allow_nan=False) + "\n"


def jsonLinesObserver(output: IO[str]) -> ILogObserver:
    """An observer writing every event to C{output} as L{eventAsJSONLine} does."""
    return FileLogObserver(output, eventAsJSONLine)


class _TwistdLogOptions(ServerOptions):
    """
    twistd's own options, parsed again only up to the plugin's name: enough
    to learn C{--logfile}, C{--nodaemon} and C{--syslog}, which twistd does
    not hand to a C{--logger} factory (it calls it with no arguments).
    """

    @property
    def subCommands(self) -> list[Any]:  # type: ignore[override]
        # Loading the plugins would parse the role's options (and read its
        # configuration) a second time; the role's name ends twistd's options.
        return []

    def parseArgs(self, *args: str) -> None:
        pass

    def postOptions(self) -> None:
        pass


def logDestination(argv: list[str]) -> tuple[str | None, bool]:
    """
    Where twistd, run with C{argv} (without the program's name), would write
    its text log: C{(None, ...)} for stdout, else C{(path, ...)}; and
    whether it runs in the foreground.  The same rule as twistd's
    (L{twisted.scripts._twistd_unix.UnixAppLogger}): C{--logfile -} or
    C{-n} without C{--logfile} is stdout, C{--logfile FILE} is C{FILE},
    nothing is C{twistd.log}.  Raises L{usage.UsageError} where twistd
    refuses (a daemon to stdout) or where JSON cannot go (C{--syslog}).
    """
    options = _TwistdLogOptions()
    options.parseOptions(argv)
    foreground = bool(options["nodaemon"] or options["debug"])
    if options.get("syslog"):
        raise usage.UsageError(
            "--logger relaynat.jsonlog.logger writes JSON lines to stdout or --logfile,"
            " not to syslog: drop --syslog (journald keeps stdout with -n)"
        )
    logfile = options["logfile"]
    if logfile == "-":
        if not foreground:
            raise usage.UsageError("Daemons cannot log to stdout: add -n or give --logfile FILE")
        return None, foreground
    if not logfile:
        return (None, foreground) if foreground else ("twistd.log", foreground)
    return logfile, foreground


def logger() -> ILogObserver:
    """
    The C{--logger} factory: JSON lines to where twistd would write its text
    log (see L{logDestination}), a file being reopened on SIGUSR1 as twistd
    does for its own, so that logrotate can move it.
    """
    try:
        path, _ = logDestination(sys.argv[1:])
    except usage.UsageError as e:
        sys.exit(f"{sys.argv[0]}: {e}")
    if path is None:
        return jsonLinesObserver(sys.stdout)
    logFile = LogFile.fromFullPath(path)
    if not signal.getsignal(signal.SIGUSR1):
        def rotate(signum: int, frame: Any) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(logFile.rotate)  # type: ignore[attr-defined]

        signal.signal(signal.SIGUSR1, rotate)
    return jsonLinesObserver(logFile)  # type: ignore[arg-type]


__all__ = ["eventAsJSONLine", "jsonLinesObserver", "logDestination", "logger"]
