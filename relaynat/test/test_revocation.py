"""
SIGHUP takes back what the users file no longer allows, over real sockets
with the real relay, skeleton and client: each kind of revocation reaches
the running logins, registrations and tunnels, and is logged once.
"""

from __future__ import annotations

import os
import signal

from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory
from twisted.logger import formatEvent
from twisted.trial.unittest import TestCase

from relaynat.client import listServers
from relaynat.tap.hangup import ReloadOnHangup
from relaynat.test.logs import logEvents
from relaynat.test.loopback import Stack, rewriteUsers
from relaynat.test.net import pollUntil, reactor, runAsync
from relaynat.test.streams import Collect, Echo
from relaynat.users import Rights, User, saveUsers

#: The skeleton's user may register the server; the client's may join it.
USERS = {
    "alice": Rights(register=frozenset({"web"}), join=None),
    "carol": Rights(join=frozenset({"web"})),
}


class RevocationTests(TestCase):
    timeout = 60

    async def start(self) -> tuple[Stack, Collect, list[str]]:
        """
        The stack (skeleton of alice, client of carol), a relay reloading
        on SIGHUP, an open tunnel that has carried bytes, and the log.
        """
        events = logEvents(self)
        stack = await Stack().start(
            {"web": Factory.forProtocol(Echo)}, users=USERS, user="alice", clientUser="carol"
        )
        self.addCleanup(stack.stop)
        service = ReloadOnHangup(reactor, stack.users.reload)
        service.startService()
        self.addCleanup(service.stopService)
        tunnel = Collect(b"before")
        await stack.connect("web", tunnel)
        await pollUntil(lambda: b"".join(tunnel.received) == b"before")
        self.events = events
        return stack, tunnel, []

    def lines(self, text: str) -> list[str]:
        return [line for line in map(formatEvent, self.events) if text in line]

    async def hangup(self, stack: Stack) -> None:
        count = len(self.lines("users file reloaded"))
        os.kill(os.getpid(), signal.SIGHUP)
        await pollUntil(lambda: len(self.lines("users file reloaded")) > count)

    async def assertCut(self, tunnel: Collect) -> None:
        """The tunnel ended with a reset: no clean close reached its local end."""
        await tunnel.finished
        assert tunnel.reason is not None
        self.assertFalse(tunnel.reason.check(ConnectionDone), tunnel.reason)

    @runAsync
    async def test_deletedUser(self) -> None:
        """
        A deleted user's login ends (the client is told why, and logs it
        once), its tunnel is cut, and it cannot log in again; the skeleton
        of another user is untouched.
        """
        stack, tunnel, _ = await self.start()
        rewriteUsers(stack.users, {"carol": None}, reload=False)
        self.events.clear()
        await self.hangup(stack)
        await self.assertCut(tunnel)
        await pollUntil(lambda: self.lines("the relay ended this login"))
        self.assertEqual(
            self.lines("the relay ended this login"),
            ["the relay ended this login: user carol was deleted"],
        )
        self.assertEqual(
            self.lines("login of carol"),
            ["login of carol from 127.0.0.1 ended: user carol was deleted"],
        )
        await pollUntil(lambda: not [c for c in stack.relay.channels if c.login and c.login.user == "carol"])
        self.assertEqual(len(stack.relay.skeletons), 1)
        self.assertEqual([s["id"] for s in stack.relay.registry.listing()], ["web"])

    @runAsync
    async def test_passwordChanged(self) -> None:
        """
        A user whose password changed is logged out (told, logged once),
        and its tunnel cut; its client, with the old password, is refused
        at its next login.
        """
        stack, tunnel, _ = await self.start()
        users = dict(stack.users.users)
        users["carol"] = User.create("carol", "a new password", USERS["carol"])
        saveUsers(stack.users.path, users)
        self.events.clear()
        await self.hangup(stack)
        await self.assertCut(tunnel)
        await pollUntil(lambda: self.lines("failed login for carol"))
        self.assertEqual(
            self.lines("the relay ended this login"),
            ["the relay ended this login: the password of carol changed"],
        )
        self.assertEqual(len(self.lines("login of carol from 127.0.0.1 ended")), 1)
        self.assertIsNotNone(stack.relay.skeletons)

    @runAsync
    async def test_registerRightRemoved(self) -> None:
        """
        A skeleton's user who may no longer register its server: the server
        is withdrawn (the skeleton is told and logs it), the tunnel to it is
        cut, the skeleton's control connection stays, and the relay lists
        nothing.
        """
        stack, tunnel, _ = await self.start()
        rewriteUsers(stack.users, {"alice": Rights(register=frozenset(), join=None)}, reload=False)
        [skeleton] = stack.relay.skeletons.values()
        self.events.clear()
        await self.hangup(stack)
        await self.assertCut(tunnel)
        await pollUntil(lambda: self.lines("relay withdrew server web"))
        self.assertEqual(
            self.lines("withdrawn"),
            ["server web of skeleton 'test' withdrawn: user alice may no longer register it"],
        )
        self.assertEqual(len(self.lines("relay withdrew server web")), 1)
        cut = self.lines("of carol to web cut")
        self.assertEqual(len(cut), len({line.split()[1] for line in cut}))
        self.assertTrue(cut)
        for line in cut:
            self.assertTrue(line.endswith("cut: user alice may no longer register web"), line)
        self.assertEqual(list(stack.relay.skeletons.values()), [skeleton])
        self.assertEqual(stack.relay.registry.listing(), [])
        self.assertEqual(await listServers(stack.clientLink), [])

    @runAsync
    async def test_joinRightRemoved(self) -> None:
        """
        A client's user who may no longer join the server: its tunnel is cut
        (logged once, with why), its login stays, and the server is no
        longer listed for it.
        """
        stack, tunnel, _ = await self.start()
        rewriteUsers(stack.users, {"carol": Rights(join=frozenset())}, reload=False)
        self.events.clear()
        await self.hangup(stack)
        await self.assertCut(tunnel)
        # The open tunnel and the client's two ready ones (joined, so
        # tunnels in the relay's books): each cut once, saying why.
        cut = self.lines("of carol to web cut")
        self.assertEqual(len(cut), 3, cut)
        self.assertEqual(len({line.split()[1] for line in cut}), 3)
        for line in cut:
            self.assertTrue(line.endswith("cut: user carol may no longer join web"), line)
        self.assertEqual(self.lines("the relay ended this login"), [])
        self.assertTrue([c for c in stack.relay.channels if c.login and c.login.user == "carol"])
        self.assertEqual(await listServers(stack.clientLink), [])
