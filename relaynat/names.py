"""The checks on names that cross the wire: server ids, skeleton names, descriptions."""

from __future__ import annotations

from relaynat.wire import SERVER_ID, BadRequest


def checkServerId(serverId: str) -> str:
    """
    Return C{serverId} if it is a valid server id, else raise L{BadRequest}.
    """
    if not SERVER_ID.match(serverId):
        raise BadRequest(
            f"bad server id {serverId!r}: use 1 to 64 letters, digits, '.', '_'"
            " or '-', starting with a letter or digit"
        )
    return serverId


def checkText(what: str, text: str, limit: int = 200) -> str:
    """
    Return C{text} if it is short and printable, else raise L{BadRequest}:
    names and descriptions end up on other people's terminals and in logs.
    """
    if len(text) > limit or not text.isprintable():
        raise BadRequest(
            f"bad {what} {text[:40]!r}: use at most {limit} printable characters"
        )
    return text
