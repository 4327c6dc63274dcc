"""A server's replies to an extended-protocol unit cut per request, sans I/O.

When one pipeline's requests run on several servers, each server answers its own share;
the client must get the answers in the order it sent the requests. This cuts one server's
reply frames (as forwarded, swallowed requests already removed) into one group per request,
so the groups of all servers can be put back in the client's order.

A request's group ends with its last frame: ParseComplete, BindComplete, CloseComplete, a
RowDescription/NoData (Describe), CommandComplete/EmptyQueryResponse/PortalSuspended
(Execute), ReadyForQuery (Sync), or an ErrorResponse; after an error the server skips to
the Sync, so the requests between answer nothing. Notices, notifications and parameter
statuses belong to the request being answered when they arrive.
"""

from __future__ import annotations

PARSE, BIND, EXEC, DESC_PORTAL, DESC_STMT, CLOSE, SYNC = range(7)

_ENDS = {
    PARSE: frozenset(b"1"),
    BIND: frozenset(b"2"),
    EXEC: frozenset(b"CIs"),
    DESC_PORTAL: frozenset(b"Tn"),
    DESC_STMT: frozenset(b"Tn"),      # after its ParameterDescription ('t')
    CLOSE: frozenset(b"3"),
    SYNC: frozenset(b"Z"),
}
ERROR = 0x45


class ReplyCutError(Exception):
    """The frames do not answer the requests (a server that broke the protocol)."""


def cut(kinds: list[int], frames: list[tuple[int, bytes]]) -> list[list[tuple[int, bytes]]]:
    """One group of frames per request in kinds, in order. A request skipped after an
    error gets an empty group."""
    groups: list[list[tuple[int, bytes]]] = [[] for _ in kinds]
    i = 0
    skipping = False
    n = len(kinds)
    for t, raw in frames:
        while i < n and skipping and kinds[i] != SYNC:
            i += 1   # skipped: answers nothing
        if i >= n:
            raise ReplyCutError(f"a frame {chr(t)!r} after the last request was answered")
        groups[i].append((t, raw))
        if t == ERROR:
            skipping = True
            if kinds[i] != SYNC:
                i += 1
            continue
        if t in _ENDS[kinds[i]]:
            if kinds[i] == SYNC:
                skipping = False
            i += 1
    return groups


def failed(group: list[tuple[int, bytes]]) -> bool:
    return any(t == ERROR for t, _ in group)
