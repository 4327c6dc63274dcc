"""The slow-query log: one JSON line (logger pgshard.slowlog) for each statement that took at
least [proxy] slow_query_ms (0: every statement, -1: off), naming its shard, role, user and
kind with the duration; never a bound parameter."""

from __future__ import annotations

import logging

log = logging.getLogger("pgshard.slowlog")


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

    def note(self, session, shard: str | None, elapsed: float) -> None:
        """Called by the session when a statement on one server has been answered."""
        threshold = self.proxy.config.proxy.slow_query_ms
        if threshold < 0:
            return
        rec = slow_record(threshold, elapsed, shard=shard, role=session.role,
                          user=session.user_name, kind=session._qkind, client=session.peer,
                          pid=session.pid)
        if rec is None:
            return
        self.logged += 1
        log.warning("slow query: %.1f ms on %s (%s) for user %s", rec["duration_ms"], shard,
                    rec["kind"], rec["user"], extra=rec)
