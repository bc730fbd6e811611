"""
Failed logins, counted against where they come from, never against the
account: a correct password always gets in from an address that did not
fail, whatever others sent (OpenSSH's PerSourcePenalties are the model).

Each login attempt costs its source C{penalty} seconds of credit, given
back if the login succeeds.  A source may try while the attempt keeps its
debt within C{allowance} seconds; past that it is refused until the debt
has run down enough.  Debt runs down in real time and stops growing at C{longest} past
the allowance, so a source is never refused for longer than C{longest}
seconds however much it sent.  Sources are counted twice: the address (an IPv6
host by its /64, which any host has to itself) and its neighbourhood (the
/24 or the /48), which gets C{prefixAllowance}, more room for the hosts
behind one NAT or in one office.

The memory is bounded whatever the names and sources: each of the two
tables keeps at most C{size} entries (about 120 bytes each), the least
recently charged going first.  Evicting a source's entry forgives it,
which an attacker can only do by charging C{size} other sources.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict

from twisted.internet.interfaces import IReactorTime


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _within(address: ipaddress.IPv4Address | ipaddress.IPv6Address, bits: int) -> str:
    return str(ipaddress.ip_network(f"{address}/{bits}", strict=False))


def addressKey(host: str) -> str:
    """
    The source C{host} counts as: its address, an IPv6 host's /64 (it has
    all of it).  A host that is not an IP address (a UNIX socket's path,
    say) is its own source.  (Every new connection asks: no more is worked
    out than this.)
    """
    address = _address(host)
    return f"host {host}" if address is None else _key(address)


def _key(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if isinstance(address, ipaddress.IPv4Address):
        return str(address)
    return _within(address, 64)


def sourceKeys(host: str) -> tuple[str, str]:
    """
    The two keys a login from C{host} is counted under: its address
    (L{addressKey}) and its neighbourhood (/24, or an IPv6 /48).
    """
    address = _address(host)
    if address is None:
        return (f"host {host}", f"host {host}")
    prefix = _within(address, 24 if isinstance(address, ipaddress.IPv4Address) else 48)
    return (_key(address), prefix)


class _Debts:
    """Seconds of debt per key, in a table of bounded size (LRU)."""

    def __init__(self, clock: IReactorTime, size: int) -> None:
        self._clock = clock
        self._size = size
        # key -> the time at which the key's debt is paid off.
        self._paidAt: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._paidAt)

    def debt(self, key: str) -> float:
        paidAt = self._paidAt.get(key)
        if paidAt is None:
            return 0.0
        return max(0.0, paidAt - self._clock.seconds())

    def charge(self, key: str, seconds: float, ceiling: float) -> None:
        now = self._clock.seconds()
        debt = min(ceiling, max(0.0, self.debt(key) + seconds))
        if debt == 0.0:
            self._paidAt.pop(key, None)
            return
        self._paidAt[key] = now + debt
        self._paidAt.move_to_end(key)
        while len(self._paidAt) > self._size:
            self._paidAt.popitem(last=False)


class Throttle:
    """
    Login attempts by source, on an injected clock: L{refusedFor} before an
    attempt, L{attempted} when it starts, L{succeeded} if it logs in.
    """

    def __init__(
        self,
        clock: IReactorTime,
        penalty: float = 10.0,
        allowance: float = 100.0,
        prefixAllowance: float = 400.0,
        longest: float = 600.0,
        size: int = 16_384,
    ) -> None:
        self.penalty = penalty
        self.allowance = allowance
        self.prefixAllowance = prefixAllowance
        self.longest = longest
        self._addresses = _Debts(clock, size)
        self._prefixes = _Debts(clock, size)

    def __len__(self) -> int:
        """Entries held, both tables together (for the memory bound)."""
        return len(self._addresses) + len(self._prefixes)

    def refusedFor(self, host: str) -> float:
        """Seconds before C{host} may try to log in again (0: now)."""
        address, prefix = sourceKeys(host)
        # An attempt may start if its charge keeps the debt within the
        # allowance: C{allowance / penalty} attempts at once, then one each
        # C{penalty} seconds.
        return max(
            0.0,
            self._addresses.debt(address) + self.penalty - self.allowance,
            self._prefixes.debt(prefix) + self.penalty - self.prefixAllowance,
        )

    def attempted(self, host: str) -> None:
        """
        C{host} starts a login: charged now, so that an attempt given up
        half-way (a probe of the first step alone) costs as a failure does.
        """
        self._charge(host, self.penalty)

    def succeeded(self, host: str) -> None:
        """C{host}'s login succeeded: its attempt is given back."""
        self._charge(host, -self.penalty)

    def _charge(self, host: str, seconds: float) -> None:
        address, prefix = sourceKeys(host)
        # Capped where the refusal (debt + penalty - allowance) is longest.
        self._addresses.charge(address, seconds, self.allowance - self.penalty + self.longest)
        self._prefixes.charge(prefix, seconds, self.prefixAllowance - self.penalty + self.longest)
