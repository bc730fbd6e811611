"""
The demonstration: a small web page reached through the three real roles,
each a C{twistd} process started from the example configurations in
C{conf/} with every port moved to a free one on 127.0.0.1, and the relay's
key, the users and the server's secret made afresh with the C{relaynat}
tools.

    python -m relaynat.demo [--once] [--keep-logs]

Making, starting and stopping those processes is L{relaynat.localstack}'s,
shared with the tests and C{bench/}; here is only the demo's own part: the
page, and what it prints.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.internet.task import react
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from relaynat.localstack import CONF, ChildProcess, LocalStack, LocalStackError, relaynatList

PAGE = b"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>relaynat demo</title></head>
<body><h1>Hello from behind the NAT</h1>
<p>This page is served on 127.0.0.1 and reached through a relaynat client,
relay and skeleton.</p></body></html>
"""


def pageSite() -> Site:
    """The demo's web server: one page saying hello."""
    root = Resource()
    page = Data(PAGE, "text/html; charset=utf-8")
    root.putChild(b"", page)
    root.putChild(b"index.html", page)
    return Site(root)


def say(text: str = "") -> None:
    print(text, flush=True)


async def demo(reactor: Any, once: bool, keepLogs: bool) -> None:
    """
    Show the page through the three roles; with C{once} stop then, else
    stay up until Ctrl-C or SIGTERM.  Exits 1 if a step or a stop fails.
    """
    workDir = tempfile.mkdtemp(prefix="relaynat-demo-")
    web = reactor.listenTCP(0, pageSite(), interface="127.0.0.1")
    stack = LocalStack(reactor, workDir, web.getHost().port)
    done: Deferred[None] = Deferred()
    stopping = [False]

    async def shutdown(failed: bool = False) -> None:
        # Called once the work is done, on an error, and by the reactor on
        # Ctrl-C or SIGTERM (which waits for it); only the first one acts.
        if stopping[0]:
            return
        stopping[0] = True
        await stack.stop()
        await maybeDeferred(web.stopListening)
        problems = [] if failed else stack.problems()
        for problem in problems:
            say(f"relaynat demo: {problem}")
        if failed or problems or keepLogs:
            say(f"The logs are in {workDir}")
        else:
            shutil.rmtree(workDir, ignore_errors=True)
        say("Stopped.")
        if failed or problems:
            done.errback(SystemExit(1))
        else:
            done.callback(None)

    def died(child: ChildProcess) -> None:
        # A role that ends on its own while the demo is up: say so and stop.
        # A SIGINT sent to a role itself is taken as a wish to stop them all.
        if child.exitSignal == signal.SIGINT:
            ensureDeferred(shutdown())
        elif not stopping[0]:
            say(f"relaynat demo: the {child.name} process {child.describeEnd()}:")
            say(child.tail())
            ensureDeferred(shutdown(failed=True))

    reactor.addSystemEventTrigger("before", "shutdown", lambda: ensureDeferred(shutdown()))
    say(f"Web server on http://127.0.0.1:{web.getHost().port}/ (the server behind the NAT)")
    say(f"The relay's key, the users and the secret, made in {workDir}:")
    for command in stack.setup:
        say("  $ " + command.replace(workDir + os.sep, "").replace(workDir, "."))
    say(
        f"Starting relay (clients {stack.configs.clientsPort},"
        f" skeletons {stack.configs.skeletonsPort}), skeleton and client"
        f" (tunnel {stack.configs.tunnelPorts[0]}); their logs go to {workDir}"
    )
    stack.start()
    try:
        await stack.waitRegistered()
        page = await stack.waitTunnel()
        listed = await relaynatList(reactor, stack.configs.client)
        if listed.exitCode != 0:
            raise LocalStackError(f"relaynat list {listed.describeEnd()}:\n{listed.text()}")
    except LocalStackError as e:
        if not stopping[0]:
            # Not a stop asked for meanwhile: a real failure.
            say(f"relaynat demo: {e}")
            await shutdown(failed=True)
        await done
        return
    say()
    say("$ relaynat list --config conf/client.toml   (ports moved)")
    say(listed.stdout.decode("utf-8", "replace").rstrip())
    say()
    say(f"$ curl {stack.configs.tunnelUrl}   (through client, relay and skeleton)")
    say(page.decode("utf-8", "replace").rstrip())
    say()
    if once:
        await shutdown()
    else:
        say(f"Open {stack.configs.tunnelUrl} — Ctrl-C to stop")
        for child in stack.children.values():
            child.ended().addCallback(lambda _, c: died(c), child)
    await done


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m relaynat.demo",
        description=(
            "Run a relay, a skeleton and a client on 127.0.0.1 from conf/ (ports"
            " moved to free ones) in front of a small web page, and show it"
            " through the tunnel."
        ),
    )
    parser.add_argument("--once", action="store_true", help="stop after showing the page")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    options = parser.parse_args(argv)
    if not os.path.isdir(CONF):
        sys.exit(f"relaynat demo: no {CONF}: run it from a checkout of relaynat")
    react(lambda reactor: ensureDeferred(demo(reactor, options.once, options.keep_logs)))


if __name__ == "__main__":
    main()
