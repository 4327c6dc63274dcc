"""Deadlocks across shards: two multi-shard transactions each waiting for a lock the other
holds on another shard. Each shard sees one wait and no cycle, so neither ends it; this
router sees both transactions and breaks the cycle.

Strategy: every `interval`, the servers of this router's multi-shard transactions that
have been waiting for an answer since the previous round are looked up on their shard
(`pg_blocking_pids`, over a connection of the detector's own, never a pool's: a deadlock
is when pools run dry). A blocking pid that is another of this router's transaction's
servers is an edge between the two transactions; a cycle's newest transaction is the
victim: its waiting statements are cancelled (the client gets the error and its
transaction fails; it may retry). Cycles through other routers' transactions are not seen
(each router sees only its own): those end by lock_timeout or statement_timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg

from pgshard.background import Background

log = logging.getLogger("pgshard.deadlock")

BLOCKERS_SQL = "SELECT pid, pg_blocking_pids(pid) FROM unnest($1::int[]) AS pid"


def find_cycle(edges: dict[int, set[int]]) -> list[int] | None:
    """A cycle in a waits-for graph (node -> the nodes it waits for), or None. Pure."""
    WHITE, GREY, BLACK = 0, 1, 2
    color = dict.fromkeys(edges, WHITE)
    for start in edges:
        if color[start] != WHITE:
            continue
        stack = [(start, iter(sorted(edges.get(start, ()))))]
        path = [start]
        color[start] = GREY
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                path.pop()
                color[node] = BLACK
                continue
            c = color.get(nxt, WHITE)
            if c == GREY:
                return path[path.index(nxt):]
            if c == WHITE and nxt in edges:
                color[nxt] = GREY
                path.append(nxt)
                stack.append((nxt, iter(sorted(edges[nxt]))))
    return None


class DeadlockDetector:
    """Finds wait cycles across shards (a transaction waiting on one shard for another that
    waits on it elsewhere) and cancels the newest transaction of each cycle."""

    def __init__(self, proxy, interval: float = 1.0, timeout: float = 2.0):
        self.proxy = proxy
        self.interval = interval
        self.timeout = timeout
        self.found = 0                                  # cycles broken (metrics, tests)
        self._waiting: dict[int, float] = {}            # id(server) -> seen waiting since
        self._conns: dict[str, asyncpg.Connection] = {}
        self._task = Background(self._run, "pgshard-deadlocks")

    def start(self) -> None:
        self._task.start()

    async def stop(self) -> None:
        await self._task.stop()
        for c in self._conns.values():
            c.terminate()
        self._conns = {}

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check_once()
            except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
                log.warning("distributed deadlock check failed: %s", exc)

    async def check_once(self) -> None:
        now = time.monotonic()
        txns = {}       # id(session) -> (session, multi)
        held = {}       # (shard, pid) -> id(session)
        waiting = {}    # shard -> [(id(session), server)] waiting since the last round
        seen = {}
        for session in list(self.proxy.clients.values()):
            multi = session.txn.multi
            if multi is None or not multi.servers:
                continue
            txns[id(session)] = (session, multi)
            for sh, (_, s) in multi.servers.items():
                held[(sh, s.pid)] = id(session)
                if s.expect and s.usable:
                    since = self._waiting.get(id(s), now)
                    seen[id(s)] = since
                    if since < now:
                        waiting.setdefault(sh, []).append((id(session), s))
        self._waiting = seen
        if len({who for ws in waiting.values() for who, _ in ws}) < 2:
            return
        edges: dict[int, set[int]] = {}
        for sh, ws in waiting.items():
            rows = await self._blockers(sh, [s.pid for _, s in ws])
            by_pid = {s.pid: who for who, s in ws}
            for pid, blockers in rows:
                who = by_pid.get(pid)
                for b in blockers or ():
                    other = held.get((sh, b))
                    if who is not None and other is not None and other != who:
                        edges.setdefault(who, set()).add(other)
        cycle = find_cycle(edges)
        if cycle is None:
            return
        victim = max(cycle, key=lambda who: txns[who][1].started)
        session, multi = txns[victim]
        self.found += 1
        log.warning("distributed deadlock between %d transactions of this router; cancelling "
                    "the newest (client %s)", len(cycle), session.peer)
        for ws in waiting.values():
            for who, s in ws:
                if who == victim:
                    await s.cancel()

    async def _blockers(self, shard: str, pids: list[int]) -> list[tuple[int, list[int]]]:
        conn = self._conns.get(shard)
        if conn is None or conn.is_closed():
            dsn = self.proxy.catalog.shard(shard).primary
            conn = self._conns[shard] = await asyncpg.connect(
                dsn, timeout=self.timeout, statement_cache_size=0)
        rows = await conn.fetch(BLOCKERS_SQL, pids, timeout=self.timeout)
        return [(r[0], list(r[1])) for r in rows]

