from twisted.application.service import ServiceMaker

relay = ServiceMaker(
    "relaynat relay",
    "relaynat.tap.relay",
    "relaynat's public relay: clients on port X, skeletons on port Y.",
    "relay",
)
skeleton = ServiceMaker(
    "relaynat skeleton",
    "relaynat.tap.skeleton",
    "relaynat's skeleton: fronts servers behind NAT through a relay.",
    "skeleton",
)
client = ServiceMaker(
    "relaynat client",
    "relaynat.tap.client",
    "relaynat's client: forwards local connections through a relay.",
    "client",
)
