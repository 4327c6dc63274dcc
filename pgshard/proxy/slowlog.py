"""The slow-query log: one JSON line (logger pgshard.slowlog) for each statement that took at
least [proxy] slow_query_ms (0: every statement, -1: off), naming its shard, role, user and
kind with the duration; never a bound parameter."""

from __future__ import annotations

import logging
import re

log = logging.getLogger("pgshard.slowlog")

MAX_STATEMENT = 1000   # characters of the statement's fingerprint kept in a line
# Literals a fingerprint hides: dollar-quoted and quoted strings, then numbers standing alone.
_LITERALS = re.compile(r"\$([A-Za-z_]\w*|)\$.*?\$\1\$|(?<!\w)[Ee]'(?:[^'\\]|\\.|'')*'|"
                       r"(?<!\w)[BbXxUu]?'(?:[^']|'')*'|"
                       r"(?<![\w$.])[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?(?![\w.])", re.S)

_OPEN_LITERAL = re.compile(r"'|\$(?:[A-Za-z_]\w*)?\$")


def fingerprint(sql: str | bytes) -> str:
    """The statement with every literal replaced by ?, whitespace collapsed, truncated: what a
    slow line may show (bound parameters are never part of it: they are $n in the text).
    A Query message's bytes are accepted as they are."""
    if isinstance(sql, bytes | bytearray | memoryview):
        raw = bytes(sql)
        if raw[:1] == b"Q":
            raw = raw[5:]
        sql = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
    cut = len(sql) > 2 * MAX_STATEMENT
    text = " ".join(_LITERALS.sub("?", sql[:2 * MAX_STATEMENT]).split())   # bounded work
    # A literal left open (cut off, or unterminated) is dropped from its start, never shown.
    rest = _OPEN_LITERAL.search(text)
    if rest is not None:
        text, cut = text[:rest.start()].rstrip(), True
    if len(text) > MAX_STATEMENT:
        text, cut = text[:MAX_STATEMENT], True
    return text + "…" if cut else text


def slow_record(threshold_ms: float, elapsed: float, *, shard: str | None, role: str,
                user: str, kind: str, client: str, pid: int) -> dict | None:
    """The fields of the log line for a statement that took `elapsed` seconds, or None."""
    if threshold_ms is None or threshold_ms < 0:
        return None
    ms = elapsed * 1000.0
    if ms < threshold_ms:
        return None
    return {"event": "slow_query", "shard": shard, "role": role, "user": user, "kind": kind,
            "duration_ms": round(ms, 3), "client": client, "client_pid": pid}


class SlowLog:
    """One per Proxy; reads the threshold from the live config, so a reload applies at once."""

    def __init__(self, proxy):
        self.proxy = proxy
        self.logged = 0

    def note(self, session, shard: str | None, elapsed: float,
             sql: str | bytes | None = None) -> None:
        """Called by the session when a statement on one server has been answered; sql (the
        text or the Query message) adds its fingerprint, literals masked."""
        threshold = self.proxy.config.proxy.slow_query_ms
        if threshold < 0:
            return
        rec = slow_record(threshold, elapsed, shard=shard, role=session.role,
                          user=session.user_name, kind=session._qkind, client=session.peer,
                          pid=session.pid)
        if rec is None:
            return
        if sql is not None:
            rec["statement"] = fingerprint(sql)
        self.logged += 1
        log.warning("slow query: %.1f ms on %s (%s) for user %s", rec["duration_ms"], shard,
                    rec["kind"], rec["user"], extra=rec)
