"""relaynat: reach TCP servers behind NAT through a relay."""

__version__ = "0.1.0"
