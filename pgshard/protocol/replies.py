"""Reply matching, sans I/O: which request each server frame answers, and so what to forward
to the client, what to swallow and what to inject.

Strategy: every request the proxy sends to a server pushes an expectation, in order. Server
frames are matched against the head of the queue, which lets the proxy swallow replies to
requests the client never made (a re-Parse on a connection that lacked a statement, a
replayed SET, a held-back BEGIN) and inject replies to requests the server never saw (a
ParseComplete for a statement the server already had) at exactly the right position. Only
message headers are read; DataRow and CopyData bytes are forwarded as contiguous slices.
"""

from __future__ import annotations

from collections import deque

from pgshard.protocol import messages as m

# Expectation kinds: what a pushed request was.
X_PARSE, X_BIND, X_DESC_STMT, X_DESC_PORTAL, X_EXEC, X_CLOSE, X_SYNC, X_QUERY, X_FAKE = range(9)
# The same kinds under private names, for this module's own use: compiled, these are C
# integers (replies.pxd), where the public names are module attributes looked up at run time.
_PARSE, _BIND, _DESC_STMT, _DESC_PORTAL, _EXEC, _SYNC, _QUERY, _FAKE = (
    X_PARSE, X_BIND, X_DESC_STMT, X_DESC_PORTAL, X_EXEC, X_SYNC, X_QUERY, X_FAKE)

# What feed() reports besides the bytes to forward.
AT_IDLE = 1     # every request answered, up to a ReadyForQuery: the server is at an idle point
DRAINED = 2     # every request answered, but the unit is not over (it ended with a Flush)

ASYNC_TYPES = frozenset(b"NAS")   # notice, notification, parameter status: may come any time
# Each byte value as a bytes object: a ReadyForQuery's status without slicing the data.
_BYTE = tuple(bytes((i,)) for i in range(256))


def param_oids(body) -> tuple[int, ...]:
    """The type OIDs of a ParameterDescription body."""
    n = int.from_bytes(body[:2], "big")
    return tuple(int.from_bytes(body[2 + 4 * i:6 + 4 * i], "big") for i in range(n))


class ReplyMatcher:
    """The queue of requests a server owes replies to, and the server's status as its
    replies tell it. push() as requests are sent; feed() the frames that arrive.

    Rare happenings are appended to `events` for the caller, in order:
    ("param", name, value) a ParameterStatus; ("error", body) an ErrorResponse in reply to a
    request; ("parse_failed", statement, client_name) a Parse this server refused;
    ("stray_error", body) an ErrorResponse nobody asked for (a shutdown, say)."""

    __slots__ = ("expect", "txn_status", "unsynced", "unit_failed", "skipping", "events", "rest")

    def __init__(self):
        self.expect: deque[list] = deque()
        self.txn_status = b"I"
        # Extended-protocol work sent since the last Sync/Query: 0 none, 1 only Parse/
        # Describe/Close (harmless to Sync), 2 a Bind or Execute (a Sync would commit it).
        self.unsynced = 0
        # An ErrorResponse went by since the last ReadyForQuery.
        self.unit_failed = False
        # An extended-protocol error: the server ignores every message up to the next Sync,
        # including those sent after the error (their replies never come).
        self.skipping = False
        self.events: list[tuple] = []
        # After feed(): the index of the first frame it left alone (they follow the
        # ReadyForQuery that ended the unit), or 0 when it matched them all.
        self.rest = 0

    def push(self, kind: int, swallow: bool = False, fake=None, bare: bool = False):
        """Record that a reply to one request is due. An X_FAKE with nothing owed before it
        is returned at once, for the caller to write; otherwise None.

        fake is what the reply stands for: the bytes of an X_FAKE; (statement, client name)
        of an X_PARSE; the statement of an X_DESC_STMT; for an X_SYNC or X_QUERY, the status
        the client is in while it holds a BEGIN back (T or E): a server that only looked
        then reports I, and the client is told its own status instead (E once an error
        went by). bare: the error this request makes is the proxy's own, raised through
        the server (a DO block, so that the server's transaction fails too): forwarded
        without the CONTEXT line PL/pgSQL adds, as PostgreSQL's own errors look."""
        if kind == _FAKE:
            if not self.expect:
                return fake
        elif kind < _SYNC:
            if kind == _BIND or kind == _EXEC:
                self.unsynced = 2
            elif not self.unsynced:
                self.unsynced = 1
        else:
            self.unsynced = 0
        self.expect.append([kind, swallow, fake, bare] if bare else [kind, swallow, fake])
        return None

    def feed(self, frames, data) -> tuple[object, int]:
        """Match whole frames [(type, start, end)] of data. Returns (what to write to the
        client: data itself, a list of chunks, or None; AT_IDLE, DRAINED or 0)."""
        expect = self.expect
        events = self.events
        out = []
        span = 0          # start of the pending forwarded span in data
        end = len(data)   # end of what this call matches
        at_idle = False
        popped = True     # the head of the queue may have changed (a fake may be next)
        i = 0
        self.rest = 0
        if frames:
            span = frames[0][1]
        for t, s, e in frames:
            i += 1
            keep = True
            if t == 0x4E or t == 0x41 or t == 0x53:   # ASYNC_TYPES, as C compares
                if t == 0x53:
                    k, v = m.decode_parameter_status(data[s + 5:e])
                    events.append(("param", k, v))
            elif not expect:
                # A reply nobody asked for (e.g. an ErrorResponse before a shutdown).
                if t == 0x45:
                    events.append(("stray_error", bytes(data[s + 5:e])))
            elif t == 0x5A:  # ReadyForQuery
                if self.skipping:
                    # The Sync's answer: whatever was queued before it was skipped.
                    self.skipping = False
                    self._drop_until_sync()
                head = expect.popleft()
                popped = True
                if e > s + 5:
                    c = data[s + 5]
                    status = _BYTE[c]
                else:   # a ReadyForQuery without its status byte (malformed)
                    status = data[s + 5:s + 6]
                self.txn_status = status
                keep = not head[1]
                at_idle = not expect
                if keep and status == b"I" and head[2] is not None:
                    keep = False
                    if span < s:
                        out.append(data[span:s])
                    span = e
                    out.append(m.ready_for_query(b"E" if self.unit_failed else head[2]))
                self.unit_failed = False
                if at_idle and i < len(frames):
                    # The unit is over; what follows (a FATAL of a dying server, say) is
                    # for whoever holds the server now: left to the caller.
                    self.rest = i
                    end = e
                    if not keep:
                        if span < s:
                            out.append(data[span:s])
                        span = e
                    break
            elif t == 0x45:  # ErrorResponse: always forwarded
                events.append(("error", bytes(data[s + 5:e])))
                self.unit_failed = True
                head = expect[0]
                if len(head) > 3:   # the proxy's own error: without PL/pgSQL's CONTEXT
                    if span < s:
                        out.append(data[span:s])
                    span = e
                    out.append(_without_context(bytes(data[s + 5:e])))
                if head[0] != _QUERY:
                    # The server now skips everything up to the next Sync: the failed request
                    # and every one after it.
                    self.skipping = True
                    self._drop_until_sync()
                    popped = True
            else:
                head = expect[0]
                kind = head[0]
                if kind == _QUERY or kind == _EXEC:
                    keep = not head[1]
                    if kind == _EXEC and (t == 0x43 or t == 0x49 or t == 0x73):
                        expect.popleft()   # an Execute's end: CommandComplete, Empty, Suspended
                        popped = True
                elif kind == _DESC_STMT and t == 0x74:  # ParameterDescription
                    keep = not head[1]
                    head[0] = _DESC_PORTAL
                    st = head[2]
                    if st is not None and st.described_oids is None:
                        st.described_oids = param_oids(data[s + 5:e])
                else:
                    keep = not head[1]
                    expect.popleft()
                    popped = True
                    if kind == _PARSE and t == 0x31 and head[2]:
                        head[2][0].validated = True
            if not keep:
                if span < s:
                    out.append(data[span:s])
                span = e
            if popped:
                # Fakes at the head of the queue go out now, in order.
                while expect and expect[0][0] == _FAKE:
                    if span < e:
                        out.append(data[span:e])
                    span = e
                    out.append(expect.popleft()[2])
                popped = False
        if span == 0 and end == len(data):
            write = data if frames else None
        else:
            if span < end:
                out.append(data[span:end])
            write = out or None
        if expect:
            return write, 0
        return write, AT_IDLE if at_idle else DRAINED

    def _drop_until_sync(self) -> None:
        """Forget requests the server skipped. A Parse among them (failed, or never run)
        left no statement here (nor, for the client, at all)."""
        expect = self.expect
        while expect and expect[0][0] != _SYNC:
            dropped = expect.popleft()
            if dropped[0] == _PARSE and dropped[2]:
                self.events.append(("parse_failed", dropped[2][0], dropped[2][1]))

    def reset(self) -> None:
        """Forget what was owed (the connection is gone)."""
        self.expect.clear()
        self.events.clear()
        self.unsynced = 0


def _without_context(body: bytes) -> bytes:
    """An ErrorResponse frame of body's fields but the CONTEXT (W) and the source location
    (F, L, R) of the PL/pgSQL RAISE that made it."""
    fields = [f for f in body.split(b"\0") if f and f[:1] not in (b"W", b"F", b"L", b"R")]
    payload = b"".join(f + b"\0" for f in fields) + b"\0"
    return b"E" + (len(payload) + 4).to_bytes(4, "big") + payload
