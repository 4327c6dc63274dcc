"""ReplyMatcher table tests: requests pushed, server bytes fed, what the client gets."""

from __future__ import annotations

import pytest

from pgshard.protocol import messages as m
from pgshard.protocol.framing import BACKEND_TYPES, FrameBuffer
from pgshard.protocol.replies import (
    AT_IDLE,
    DRAINED,
    X_BIND,
    X_DESC_STMT,
    X_EXEC,
    X_FAKE,
    X_PARSE,
    X_QUERY,
    X_SYNC,
    ReplyMatcher,
    param_oids,
)


class Stmt:
    """What the matcher records on a statement: its described types, its validity."""

    def __init__(self):
        self.described_oids = None
        self.validated = False
        self.global_name = "pgshard_x"


def _frame(t: bytes, body: bytes = b"") -> bytes:
    return t + (len(body) + 4).to_bytes(4, "big") + body


PARSE_OK, BIND_OK, NO_DATA = _frame(b"1"), _frame(b"2"), _frame(b"n")
PARAMS = _frame(b"t", b"\x00\x01\x00\x00\x00\x14")          # one int8 parameter
ROWDESC = m.row_description([("id", 20)])
ROW = m.data_row([b"7"])
SELECT1 = m.command_complete("SELECT 1")
ERROR = m.error_response("42P01", "relation does not exist")
NOTICE = m.error_response("01000", "careful", severity="WARNING", notice=True)


def Z(status: bytes = b"I") -> bytes:
    return m.ready_for_query(status)


def feed(r: ReplyMatcher, data: bytes):
    fb = FrameBuffer(allowed=BACKEND_TYPES)
    fb.feed(data)
    frames, buf = fb.scan()
    write, state = r.feed(frames, buf)
    if write is None:
        got = b""
    elif isinstance(write, list):
        got = b"".join(bytes(w) for w in write)
    else:
        got = bytes(write)
    return got, state


ST = object()   # marker: the test's Stmt


# (pushed requests, server bytes, bytes the client must get, state, unsynced after)
CASES = {
    "simple query relayed whole": (
        [(X_QUERY,)], ROWDESC + ROW + SELECT1 + Z(), ROWDESC + ROW + SELECT1 + Z(), AT_IDLE, 0),
    "extended unit relayed whole": (
        [(X_PARSE,), (X_BIND,), (X_EXEC,), (X_SYNC,)], PARSE_OK + BIND_OK + ROW + SELECT1 + Z(),
        PARSE_OK + BIND_OK + ROW + SELECT1 + Z(), AT_IDLE, 0),
    "transparent re-Parse swallowed": (
        [(X_PARSE, True), (X_BIND,), (X_EXEC,), (X_SYNC,)], PARSE_OK + BIND_OK + SELECT1 + Z(),
        BIND_OK + SELECT1 + Z(), AT_IDLE, 0),
    "ParseComplete injected for a statement the server had, after a replayed SET": (
        [(X_QUERY, True), (X_FAKE, False, PARSE_OK), (X_BIND,), (X_EXEC,), (X_SYNC,)],
        m.command_complete("SET") + Z() + BIND_OK + SELECT1 + Z(),
        PARSE_OK + BIND_OK + SELECT1 + Z(), AT_IDLE, 0),
    "fake in the middle, after what the server owes before it": (
        [(X_BIND,), (X_FAKE, False, PARSE_OK), (X_EXEC,), (X_SYNC,)], BIND_OK + SELECT1 + Z(),
        BIND_OK + PARSE_OK + SELECT1 + Z(), AT_IDLE, 0),
    "replayed SET swallowed before the client's query": (
        [(X_QUERY, True), (X_QUERY,)], m.command_complete("SET") + Z() + SELECT1 + Z(),
        SELECT1 + Z(), AT_IDLE, 0),
    "error mid-pipeline skips to the Sync": (
        [(X_PARSE,), (X_BIND,), (X_EXEC,), (X_SYNC,)], ERROR + Z(), ERROR + Z(), AT_IDLE, 0),
    "notice passes through anywhere": (
        [(X_QUERY,)], NOTICE + SELECT1 + Z(), NOTICE + SELECT1 + Z(), AT_IDLE, 0),
    "Flush: every reply in, unit not over": (
        [(X_PARSE,), (X_DESC_STMT, False, ST)], PARSE_OK + PARAMS + NO_DATA,
        PARSE_OK + PARAMS + NO_DATA, DRAINED, 1),
    "Bind/Execute flushed: a Sync would commit": (
        [(X_BIND,), (X_EXEC,)], BIND_OK + SELECT1, BIND_OK + SELECT1, DRAINED, 2),
    "partial reply: still owed": (
        [(X_BIND,), (X_EXEC,), (X_SYNC,)], BIND_OK + ROW, BIND_OK + ROW, 0, 0),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matcher(name):
    pushes, server, client, state, unsynced = CASES[name]
    r = ReplyMatcher()
    st = Stmt()
    for p in pushes:
        kind, swallow, fake = (*p, False, None)[:3]
        assert r.push(kind, swallow, st if fake is ST else fake) is None
    assert feed(r, server) == (client, state)
    assert r.unsynced == unsynced


def test_fake_with_nothing_owed_is_written_at_once():
    r = ReplyMatcher()
    assert r.push(X_FAKE, fake=PARSE_OK) == PARSE_OK
    assert not r.expect


def test_held_begin_turns_idle_into_in_transaction_and_failed():
    r = ReplyMatcher()
    r.push(X_PARSE)
    r.push(X_SYNC, fake=b"T")            # sent while the client held its BEGIN back
    assert feed(r, PARSE_OK + Z(b"I")) == (PARSE_OK + Z(b"T"), AT_IDLE)
    assert r.txn_status == b"I"          # the server's own truth is kept
    r.push(X_PARSE)
    r.push(X_SYNC, fake=b"T")
    assert feed(r, ERROR + Z(b"I")) == (ERROR + Z(b"E"), AT_IDLE)   # an error went by
    r.push(X_QUERY, fake=b"E")           # the held transaction had failed before
    assert feed(r, SELECT1 + Z(b"I")) == (SELECT1 + Z(b"E"), AT_IDLE)
    r.push(X_QUERY)                      # not held: the server's status as it is
    assert feed(r, SELECT1 + Z(b"T")) == (SELECT1 + Z(b"T"), AT_IDLE)


def test_describe_records_parameter_types_and_parse_validates():
    r = ReplyMatcher()
    st = Stmt()
    r.push(X_PARSE, fake=(st, "s1"))
    r.push(X_DESC_STMT, fake=st)
    r.push(X_SYNC)
    assert feed(r, PARSE_OK + PARAMS + NO_DATA + Z()) == (PARSE_OK + PARAMS + NO_DATA + Z(), AT_IDLE)
    assert st.validated and st.described_oids == (20,) and param_oids(PARAMS[5:]) == (20,)


def test_failed_parse_is_reported_with_the_error():
    r = ReplyMatcher()
    st = Stmt()
    r.push(X_PARSE, True, (st, "s1"))     # a transparent re-Parse the client never sent
    r.push(X_BIND)
    r.push(X_EXEC)
    r.push(X_SYNC)
    assert feed(r, ERROR + Z()) == (ERROR + Z(), AT_IDLE)
    assert [e[0] for e in r.events] == ["error", "parse_failed"]
    assert r.events[1][1:] == (st, "s1") and not st.validated


def test_parameter_status_and_stray_error_are_events():
    r = ReplyMatcher()
    stray = m.error_response("57P01", "terminating connection", severity="FATAL")
    got, state = feed(r, _frame(b"S", b"TimeZone\0UTC\0") + stray)
    assert got == _frame(b"S", b"TimeZone\0UTC\0") + stray and state == DRAINED
    assert r.events == [("param", "TimeZone", "UTC"), ("stray_error", stray[5:])]


def test_replies_split_across_reads_keep_their_place():
    r = ReplyMatcher()
    r.push(X_PARSE, True)
    r.push(X_BIND)
    r.push(X_EXEC)
    r.push(X_SYNC)
    whole = PARSE_OK + BIND_OK + ROW + ROW + SELECT1 + Z()
    out = b""
    fb = FrameBuffer(allowed=BACKEND_TYPES)
    states = []
    for i in range(0, len(whole), 3):
        fb.feed(whole[i:i + 3])
        frames, buf = fb.scan()
        if frames:
            write, state = r.feed(frames, buf)
            states.append(state)
            if write is not None:
                out += b"".join(bytes(w) for w in write) if isinstance(write, list) else bytes(write)
    assert out == BIND_OK + ROW + ROW + SELECT1 + Z() and states[-1] == AT_IDLE
    assert states.count(AT_IDLE) == 1


def test_parses_skipped_after_an_error_are_reported_as_not_there():
    r = ReplyMatcher()
    a, b = Stmt(), Stmt()
    r.push(X_BIND)
    r.push(X_EXEC)
    r.push(X_PARSE, True, (a, None))     # skipped by the server: never prepared
    r.push(X_FAKE, fake=PARSE_OK)        # nor is this ParseComplete due
    r.push(X_PARSE, False, (b, "s2"))
    r.push(X_SYNC)
    assert feed(r, ERROR + Z()) == (ERROR + Z(), AT_IDLE)
    assert [e[0] for e in r.events] == ["error", "parse_failed", "parse_failed"]
    assert [e[1] for e in r.events[1:]] == [a, b]


def test_requests_sent_after_an_error_are_skipped_up_to_the_sync():
    r = ReplyMatcher()
    r.push(X_PARSE)
    r.push(X_EXEC)                       # fails: the server skips to the next Sync
    assert feed(r, PARSE_OK + ERROR) == (PARSE_OK + ERROR, DRAINED)
    # Sent before the error was seen (pipelined): never answered, then the Sync's Z.
    r.push(X_PARSE, True)
    r.push(X_BIND, True)
    r.push(X_EXEC)
    r.push(X_QUERY)                      # a Query is skipped too
    r.push(X_SYNC, fake=b"T")
    r.push(X_QUERY)
    assert feed(r, Z(b"I")) == (Z(b"E"), 0)
    assert feed(r, SELECT1 + Z(b"I")) == (SELECT1 + Z(b"I"), AT_IDLE)


RAISED = _frame(b"E", b"SERROR\0VERROR\0C0A000\0Mno key\0HGive one\0WPL/pgSQL function "
                b"inline_code_block line 1 at RAISE\0Fpl_exec.c\0L3911\0Rexec_stmt_raise\0\0")


@pytest.mark.parametrize("kind", [X_QUERY, X_EXEC])
def test_the_proxys_own_error_loses_the_plpgsql_context(kind):
    r = ReplyMatcher()
    r.push(kind, bare=True)
    if kind == X_EXEC:
        r.push(X_SYNC)
    got, state = feed(r, RAISED + Z(b"E"))
    want = _frame(b"E", b"SERROR\0VERROR\0C0A000\0Mno key\0HGive one\0\0") + Z(b"E")
    assert (got, state) == (want, AT_IDLE)
    assert r.events == [("error", RAISED[5:])]


def test_other_errors_keep_their_context():
    r = ReplyMatcher()
    r.push(X_QUERY)
    assert feed(r, RAISED + Z(b"E"))[0] == RAISED + Z(b"E")


FATAL = m.error_response("57P01", "terminating connection due to unexpected postmaster exit",
                         severity="FATAL")


@pytest.mark.parametrize("swallowed", [False, True], ids=["kept", "swallowed"])
def test_frames_after_the_units_ready_for_query_are_left_to_the_caller(swallowed):
    """A dying server's FATAL in the same read as the unit's last reply: the matcher
    stops at the ReadyForQuery that ended the unit, and says where the rest begins."""
    r = ReplyMatcher()
    r.push(X_BIND)
    r.push(X_EXEC)
    r.push(X_SYNC, swallowed)
    fb = FrameBuffer(allowed=BACKEND_TYPES)
    fb.feed(BIND_OK + SELECT1 + Z() + FATAL)
    frames, buf = fb.scan()
    write, state = r.feed(frames, buf)
    got = b"".join(bytes(w) for w in write) if isinstance(write, list) else bytes(write)
    assert got == BIND_OK + SELECT1 + (b"" if swallowed else Z()) and state == AT_IDLE
    assert r.rest == 3 and not r.events
    # The caller feeds the rest on its own (here nobody owes it anything: a stray).
    write, state = r.feed(frames[r.rest:], buf)
    got = b"".join(bytes(w) for w in write) if isinstance(write, list) else bytes(write)
    assert got == FATAL and r.rest == 0
    assert r.events == [("stray_error", FATAL[5:])]


def test_a_ready_for_query_with_more_owed_matches_on():
    r = ReplyMatcher()
    r.push(X_QUERY, True)    # a replayed SET
    r.push(X_QUERY)
    got, state = feed(r, m.command_complete("SET") + Z() + SELECT1 + Z())
    assert (got, state) == (SELECT1 + Z(), AT_IDLE) and r.rest == 0
