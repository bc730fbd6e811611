"""The checks on names that cross the wire: server ids, skeleton names, descriptions."""

from __future__ import annotations

from relaynat.wire import SERVER_ID, BadRequest


def checkServerId(serverId: str) -> str:
    """
    Return C{serverId} if it is a valid server id, else raise L{BadRequest}.
    """
    if not SERVER_ID.match(serverId):
        raise BadRequest(
            f"bad server id {printable(serverId, 40)}: use 1 to 64 letters, digits, '.', '_'"
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
            f"bad {what} {printable(text, 40)}: use at most {limit} printable characters"
        )
    return text


def printable(text: str, limit: int = 200) -> str:
    """
    C{text} as it may go in a log line or an error message: quoted,
    escaped (no control character or newline can forge a line) and cut
    to about C{limit} characters.
    """
    shown = repr(text[:limit])
    return shown + "..." if len(text) > limit else shown
