"""
The relay's knowledge of servers: which skeleton fronts each one, its pool of
idle data connections, and the clients waiting to be joined.

This is plain logic with an injected clock; the relay's protocols call it.
The pool rule is one invariant per server: idle connections plus those
requested from the skeleton cover the pool size plus the clients waiting.
A request counts as outstanding until its connection is offered (or is
lost on the way, or the request fails): the skeleton's answer to the request
and the offer travel on different connections, and under load the answer
often arrives first.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol as TypingProtocol

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from relaynat.names import checkServerId, printable
from relaynat.wire import (
    DuplicateServer,
    JoinTimeout,
    ServerOffline,
    SkeletonGone,
    UnknownServer,
)

_log = Logger()


class SkeletonLink(TypingProtocol):
    """What the registry needs of a skeleton's control connection."""

    name: str

    def requestConnection(self, serverId: str) -> Deferred[None]:
        """Ask the skeleton for one more data connection for C{serverId}."""

    def describe(self) -> str:
        """Who this skeleton is, for error messages and logs."""


class PooledConnection(TypingProtocol):
    """What the registry needs of an offered data connection."""

    def close(self) -> None:
        """Drop this connection: it is not needed."""


@attrs.define(eq=False)
class _Waiter:
    deferred: Deferred[PooledConnection]
    timeout: IDelayedCall | None = None


@attrs.define(eq=False)
class ServerEntry:
    """One registered server and its pool."""

    id: str
    description: str
    skeleton: SkeletonLink
    since: float
    pool: int
    idle: deque[PooledConnection] = attrs.Factory(deque)
    waiting: deque[_Waiter] = attrs.Factory(deque)
    requested: int = 0


@attrs.frozen
class Changes:
    """What one L{Registry.register} changed: server ids added, removed, described anew, resized."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    described: tuple[str, ...] = ()
    resized: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.described or self.resized)


class Registry:
    """
    The set of available servers, their idle connections and pending joins.

    @ivar joinTimeout: seconds a client waits for the skeleton to open a
        connection when the pool is empty.
    """

    def __init__(
        self, clock: IReactorTime, joinTimeout: float = 10.0, maxPool: int = 64
    ) -> None:
        self._clock = clock
        self.joinTimeout = joinTimeout
        self.maxPool = maxPool
        self._servers: dict[str, ServerEntry] = {}
        self._seen: set[str] = set()

    def register(
        self, skeleton: SkeletonLink, servers: list[tuple[str, str]], pool: int
    ) -> Changes:
        """
        Make C{servers} (id, description) the servers C{skeleton} fronts, all
        or none, each with C{pool} idle connections: the first time, every
        one is added; later (a reload at the skeleton), those it no longer
        lists are withdrawn and new ones added, while one it lists again
        keeps its entry (its C{since}, its pool, its waiting clients), only
        its description and pool size taken anew.  A server withdrawn so is
        unknown to clients from then on, as if never registered: its
        skeleton is connected, and no longer offers it.

        @raise DuplicateServer: one of the ids belongs to another skeleton,
            or is listed twice.
        @raise BadRequest: one of the ids is malformed.
        """
        self.check(skeleton, servers)
        pool = max(0, min(pool, self.maxPool))
        held = set(self.serversOf(skeleton))
        removed = sorted(held - {serverId for serverId, _ in servers})
        for serverId in removed:
            self._remove(serverId, f"server {serverId} was withdrawn by its skeleton")
            # Not offline: its skeleton is connected and no longer offers it.
            self._seen.discard(serverId)
        now = self._clock.seconds()
        added: list[str] = []
        described: list[str] = []
        resized: list[str] = []
        for serverId, description in servers:
            entry = self._servers.get(serverId)
            if entry is None:
                entry = ServerEntry(serverId, description, skeleton, now, pool)
                self._servers[serverId] = entry
                self._seen.add(serverId)
                added.append(serverId)
                _log.info(
                    "server {server} registered by skeleton {skeleton}",
                    server=serverId,
                    skeleton=skeleton.describe(),
                )
                self._refill(entry)
            else:
                if entry.description != description:
                    entry.description = description
                    described.append(serverId)
                if entry.pool != pool:
                    entry.pool = pool
                    resized.append(serverId)
                    # Idle past the new size: not needed any more.
                    while len(entry.idle) > entry.pool:
                        entry.idle.popleft().close()
                    self._refill(entry)
        return Changes(tuple(added), tuple(removed), tuple(described), tuple(resized))

    def check(self, skeleton: SkeletonLink, servers: list[tuple[str, str]]) -> None:
        """
        Raise what L{register} would raise for C{servers} of C{skeleton},
        changing nothing.

        @raise DuplicateServer: one of the ids belongs to another skeleton,
            or is listed twice.
        @raise BadRequest: one of the ids is malformed.
        """
        ids = [checkServerId(serverId) for serverId, _ in servers]
        for serverId in ids:
            entry = self._servers.get(serverId)
            if entry is not None and entry.skeleton is not skeleton:
                # Which skeleton (its name, its user) is not for another
                # user to learn.
                raise DuplicateServer(
                    f"server {serverId} is already registered by another skeleton;"
                    " give this one another id, or stop the other skeleton"
                )
        if len(set(ids)) != len(ids):
            raise DuplicateServer("the same server id is listed twice")

    def unregister(self, skeleton: SkeletonLink) -> None:
        """Remove every server of C{skeleton}: it went away."""
        for serverId in self.serversOf(skeleton):
            self._remove(serverId, f"the skeleton of server {serverId} went away")

    def withdraw(self, serverId: str) -> None:
        """
        Remove C{serverId}: its skeleton may no longer front it.  Clients
        are told it is unknown, as for one never registered: its skeleton
        is connected, and "not connected" would send them the wrong way.
        """
        self._remove(serverId, f"server {serverId} was withdrawn")
        self._seen.discard(serverId)

    def serversOf(self, skeleton: SkeletonLink) -> list[str]:
        """The ids of the servers C{skeleton} registered."""
        return [e.id for e in self._servers.values() if e.skeleton is skeleton]

    def _remove(self, serverId: str, why: str) -> None:
        entry = self._servers.pop(serverId, None)
        if entry is None:
            return
        _log.info("server {server} is offline", server=entry.id)
        while entry.idle:
            entry.idle.popleft().close()
        while entry.waiting:
            waiter = entry.waiting.popleft()
            self._cancelTimeout(waiter)
            waiter.deferred.errback(SkeletonGone(why))

    def owns(self, skeleton: SkeletonLink, serverId: str) -> bool:
        """Is C{serverId} registered by C{skeleton}?"""
        entry = self._servers.get(serverId)
        return entry is not None and entry.skeleton is skeleton

    def offer(self, serverId: str, connection: PooledConnection) -> bool:
        """
        A data connection for C{serverId} is ready: give it to the oldest
        waiting client, or keep it idle.  Returns False if it was not kept.
        """
        entry = self._servers.get(serverId)
        if entry is None:
            connection.close()
            return False
        self._countOff(entry)
        if entry.waiting:
            waiter = entry.waiting.popleft()
            self._cancelTimeout(waiter)
            waiter.deferred.callback(connection)
            return True
        if len(entry.idle) >= entry.pool:
            # More than the pool asked for: late answers to timed-out joins.
            connection.close()
            return False
        entry.idle.append(connection)
        return True

    def lost(self, serverId: str) -> None:
        """
        A requested connection was lost before it could be offered: it no
        longer counts as on its way, and another is asked for if needed.
        """
        entry = self._servers.get(serverId)
        if entry is None:
            return
        self._countOff(entry)
        self._refill(entry)

    def discard(self, serverId: str, connection: PooledConnection) -> None:
        """An idle connection was lost: forget it and replace it."""
        entry = self._servers.get(serverId)
        if entry is None:
            return
        try:
            entry.idle.remove(connection)
        except ValueError:
            return
        self._refill(entry)

    def checkOnline(self, serverId: str) -> None:
        """
        Raise L{UnknownServer} or L{ServerOffline} unless C{serverId} is
        registered now: offline if its skeleton went away (or the relay
        withdrew it), unknown if it never was registered or its skeleton
        withdrew it (a reload).
        """
        if serverId in self._servers:
            return
        if serverId in self._seen:
            raise ServerOffline(f"server {serverId} is offline: its skeleton is not connected")
        raise UnknownServer(
            f"no server {serverId} is registered at this relay;"
            " 'relaynat list' shows the ones that are"
        )

    def claim(self, serverId: str) -> Deferred[PooledConnection]:
        """
        A data connection of C{serverId} for a client: an idle one at once,
        else a new one from the skeleton within C{joinTimeout} seconds.
        """
        try:
            self.checkOnline(serverId)
        except Exception as e:
            return fail(e)
        entry = self._servers[serverId]
        if entry.idle:
            connection = entry.idle.popleft()
            self._refill(entry)
            return succeed(connection)

        def cancel(d: Deferred[PooledConnection]) -> None:
            self._drop(entry, waiter)

        waiter = _Waiter(Deferred(cancel))
        waiter.timeout = self._clock.callLater(
            self.joinTimeout, self._expire, entry, waiter
        )
        entry.waiting.append(waiter)
        self._refill(entry)
        return waiter.deferred

    def listing(self) -> list[dict[str, object]]:
        """The available servers, as L{wire.ListServers} returns them."""
        return [
            {
                "id": entry.id,
                "description": entry.description,
                "since": entry.since,
                "idle": len(entry.idle),
            }
            for entry in sorted(self._servers.values(), key=lambda e: e.id)
        ]

    def idleConnections(self) -> list[PooledConnection]:
        """Every idle pooled connection, of every server."""
        return [c for entry in self._servers.values() for c in entry.idle]

    def counts(self) -> dict[str, int]:
        """Totals, for tests and metrics: servers, idle, waiting, requested."""
        entries = self._servers.values()
        return {
            "servers": len(self._servers),
            "idle": sum(len(e.idle) for e in entries),
            "waiting": sum(len(e.waiting) for e in entries),
            "requested": sum(e.requested for e in entries),
        }

    def _refill(self, entry: ServerEntry) -> None:
        while len(entry.idle) + entry.requested < entry.pool + len(entry.waiting):
            entry.requested += 1
            d = entry.skeleton.requestConnection(entry.id)
            d.addBoth(self._answered, entry)

    @staticmethod
    def _countOff(entry: ServerEntry) -> None:
        """One request is no longer on its way (never below zero: an offer
        and a failure may both speak for one request)."""
        entry.requested = max(0, entry.requested - 1)

    def _answered(self, result: object, entry: ServerEntry) -> None:
        if not isinstance(result, Failure):
            # Counted off when its connection is offered, which may be later.
            return
        self._countOff(entry)
        if self._servers.get(entry.id) is not entry:
            return
        # The skeleton's words: quoted and cut, they reach the log and a
        # client's error.
        why = printable(result.getErrorMessage())
        _log.warn(
            "skeleton {skeleton} could not open a connection for {server}: {why}",
            skeleton=entry.skeleton.describe(),
            server=entry.id,
            why=why,
        )
        # Fail one waiting client now rather than at its timeout, so the
        # pool is not asked again and again for what it cannot give.
        if entry.waiting and len(entry.waiting) > entry.requested:
            waiter = entry.waiting.popleft()
            self._cancelTimeout(waiter)
            waiter.deferred.errback(
                SkeletonGone(
                    f"the skeleton of server {entry.id} could not open a"
                    f" connection: {why}"
                )
            )

    def _expire(self, entry: ServerEntry, waiter: _Waiter) -> None:
        waiter.timeout = None
        self._drop(entry, waiter)
        waiter.deferred.errback(
            JoinTimeout(
                f"server {entry.id} did not provide a connection within"
                f" {self.joinTimeout:g} s"
            )
        )

    def _drop(self, entry: ServerEntry, waiter: _Waiter) -> None:
        self._cancelTimeout(waiter)
        try:
            entry.waiting.remove(waiter)
        except ValueError:
            pass

    @staticmethod
    def _cancelTimeout(waiter: _Waiter) -> None:
        if waiter.timeout is not None and waiter.timeout.active():
            waiter.timeout.cancel()
        waiter.timeout = None
