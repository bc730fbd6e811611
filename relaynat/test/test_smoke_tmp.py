from twisted.internet.protocol import Factory
from twisted.trial.unittest import TestCase
from relaynat.test.loopback import Stack
from relaynat.test.net import runAsync
from relaynat.test.streams import Collect, Echo

class Smoke(TestCase):
    @runAsync
    async def test_echo(self):
        for sealed in (True, False):
            stack = await Stack().start({"echo": Factory.forProtocol(Echo)}, sealed=sealed)
            c = Collect(b"hello" * 1000, halfClose=True)
            await stack.connect("echo", c)
            self.assertEqual(await c.finished, b"hello" * 1000)
            await stack.stop()
