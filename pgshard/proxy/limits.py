"""Client limits: the file-descriptor budget, admission counted from accept (max_client_conn
includes sockets still logging in), and the login / idle / idle-in-transaction timeouts, all
enforced by one reaper that scans every accepted socket.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import time
from dataclasses import dataclass

from pgshard.background import Background
from pgshard.protocol import messages as m
from pgshard.protocol.errors import (
    IdleInTransactionSessionTimeout,
    IdleSessionTimeout,
    PgError,
    ProtocolViolation,
    TooManyConnections,
)

log = logging.getLogger("pgshard.limits")

# File descriptors kept free beyond the server pools: the store, the sidecar's listener and
# its HTTP clients, replica monitors, cancel requests, log files.
FD_MARGIN = 64
# Sockets over a limit are answered like PostgreSQL does (SSL negotiation, then the error
# after the startup packet, which drivers trust); at most this many at once, for at most
# REFUSAL_TIMEOUT seconds. Beyond that, over-limit sockets get the error at once and are
# closed in the same callback, so a flood never holds descriptors.
REFUSAL_SLOTS = 32
REFUSAL_TIMEOUT = 5.0
# A closed session whose transport has not gone away by then (a client that never reads
# the FATAL we wrote) is aborted.
ABORT_AFTER = 2.0
LOG_INTERVAL = 60.0

ADMIT, REFUSE, REFUSE_NOW = "admit", "refuse", "refuse-now"


# ------------------------------------------------------------------ pure cores

def fd_budget(soft_limit: int, in_use: int, reserve: int) -> int:
    """Client sockets that fit: the open-files limit less what is open and what is reserved."""
    return max(soft_limit - in_use - reserve, 0)


def fd_reserve(pool_sizes: list[int], servers_per_pool_set: int, extra: int = 0) -> int:
    """Descriptors kept for server connections (every pool full on every shard and role),
    graceful refusals and FD_MARGIN."""
    return sum(pool_sizes) * servers_per_pool_set + extra + REFUSAL_SLOTS + FD_MARGIN


def admission(admitted: int, refusing: int, max_client_conn: int, budget: int) -> tuple[str, str]:
    """What to do with a socket just accepted: (ADMIT|REFUSE|REFUSE_NOW, which limit)."""
    if admitted < min(max_client_conn, budget):
        return ADMIT, ""
    why = "max_client_conn" if admitted >= max_client_conn else "fd_budget"
    return (REFUSE if refusing < REFUSAL_SLOTS else REFUSE_NOW), why


@dataclass(frozen=True)
class Timeouts:
    """The client timeouts the reaper enforces, in seconds (0: off)."""

    login: float = 15.0        # 0 = off
    idle: float = 0.0
    idle_txn: float = 0.0

    def tick(self) -> float:
        """How often the reaper scans: a tenth of the shortest timeout, within [0.05, 0.5] s."""
        shortest = min([t for t in (self.login, self.idle, self.idle_txn) if t > 0]
                       + [REFUSAL_TIMEOUT])
        return min(max(shortest / 10, 0.05), 0.5)


def expiry(t: Timeouts, *, age: float, logged_in: bool, refusal: PgError | None,
           idle_for: float | None, status: bytes) -> PgError | None:
    """The FATAL error a session has earned, or None.

    age: seconds since accept; refusal: the error a socket admitted only to be refused
    waits to answer its startup packet with; idle_for: seconds the session has been waiting
    for the client with nothing outstanding (None while a request is in progress); status:
    the transaction status the client sees (I, T, E)."""
    if refusal is not None:
        return refusal if age >= min(t.login or REFUSAL_TIMEOUT, REFUSAL_TIMEOUT) else None
    if not logged_in:
        if t.login and age >= t.login:
            return ProtocolViolation("canceling authentication due to timeout", severity="FATAL",
                                     detail=f"startup and authentication did not complete within "
                                            f"client_login_timeout = {t.login:g} s")
        return None
    if idle_for is None:
        return None
    if status == b"I":
        if t.idle and idle_for >= t.idle:
            return IdleSessionTimeout("terminating connection due to idle-session timeout",
                                      severity="FATAL",
                                      detail=f"client_idle_timeout = {t.idle:g} s")
    elif t.idle_txn and idle_for >= t.idle_txn:
        return IdleInTransactionSessionTimeout(
            "terminating connection due to idle-in-transaction timeout", severity="FATAL",
            detail=f"idle_transaction_timeout = {t.idle_txn:g} s; the transaction was rolled "
                   "back")
    return None


class RateLimitedLog:
    """One log line per interval for a recurring condition, with the count it stands for."""

    def __init__(self, interval: float = LOG_INTERVAL):
        self.interval = interval
        self.last = -float("inf")
        self.suppressed = 0

    def due(self, now: float) -> int | None:
        """None if a line was logged within the interval (counted), else how many events
        were not logged since the last line."""
        if now - self.last < self.interval:
            self.suppressed += 1
            return None
        n, self.suppressed, self.last = self.suppressed, 0, now
        return n


# ------------------------------------------------------------------ process limits

def raise_nofile() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit where allowed; (soft, hard) after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            with open("/proc/sys/fs/nr_open") as fh:
                target = int(fh.read())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError) as exc:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, target, exc)
    return soft, hard


def open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd")) - 1   # less the directory listing's own
    except OSError:
        return 16


# ------------------------------------------------------------------ the shell

def _waiting_for_client(s) -> bool:
    """The session is blocked on client input with nothing in progress or owed by a server."""
    w = s._waiter
    if w is None or w.done() or s._pending is not None:
        return False
    srv = s.server
    return srv is None or not srv.expect


class ClientLimits:
    """Tracks every accepted client socket of one Proxy and enforces the limits above."""

    def __init__(self, proxy):
        self.proxy = proxy
        pc = proxy.config.proxy
        self.timeouts = Timeouts(pc.client_login_timeout, pc.client_idle_timeout,
                                 pc.idle_transaction_timeout)
        self.admitted: set = set()
        self.refusing: set = set()
        self.nofile = (0, 0)
        self.in_use_at_start = 0
        # One line a minute per kind (a refused limit, accept failures, each timeout's
        # SQLSTATE): a flood must not become a flood of log lines.
        self._logs: dict[str, RateLimitedLog] = {}
        self._budget: tuple[object, int] = (None, 0)   # (catalog it was computed for, budget)
        self._reaper = Background(self._reap_forever, "pgshard-client-limits")

    # ---- budget

    def start(self) -> None:
        self.nofile = raise_nofile()
        self.in_use_at_start = open_fds()
        budget = self.budget()
        pc = self.proxy.config.proxy
        log.info("client limits: RLIMIT_NOFILE %d (hard %d), %d open at start, budget %d client "
                 "sockets, max_client_conn %d", self.nofile[0], self.nofile[1],
                 self.in_use_at_start, budget, pc.max_client_conn)
        if budget < pc.max_client_conn:
            log.warning("max_client_conn = %d exceeds the file-descriptor budget of %d client "
                        "sockets (RLIMIT_NOFILE %d less server pools and a margin); clients "
                        "beyond it are refused with 53300", pc.max_client_conn, budget,
                        self.nofile[0])
        self._reaper.start()

    async def stop(self) -> None:
        await self._reaper.stop()

    def budget(self) -> int:
        """Client sockets allowed by the open-files limit; recomputed when shards change."""
        catalog = self.proxy.catalog
        if self._budget[0] is catalog and catalog is not None:
            return self._budget[1]
        cfg = self.proxy.config
        per_cred: dict[object, int] = {}   # one entry per pool set, as Proxy._pool_for keys them
        for u in cfg.users or ():
            if u.pool_size:
                per_cred[("user", u.name)] = u.pool_size
            else:
                per_cred[u.server_user] = max(per_cred.get(u.server_user, 0), cfg.proxy.pool_size)
        if not per_cred:
            per_cred[None] = cfg.proxy.pool_size
        sizes = list(per_cred.values())
        for db in cfg.databases:   # every logical database has pool sets of its own
            sizes += [v if isinstance(k, tuple) else (db.pool_size or v)
                      for k, v in per_cred.items()]
        servers = sum(1 + len(sh.replicas) for sh in (catalog.shards if catalog else ()))
        # A replica monitor connection per server and the sidecar's /v1/execute clients.
        extra = servers + cfg.sidecar.execute_pool_size
        reserve = fd_reserve(sizes, servers, extra)
        value = fd_budget(self.nofile[0] or resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                          self.in_use_at_start, reserve)
        self._budget = (catalog, value)
        return value

    # ---- admission

    def admit(self) -> tuple[str, PgError | None]:
        pc = self.proxy.config.proxy
        budget = self.budget()
        what, why = admission(len(self.admitted), len(self.refusing), pc.max_client_conn, budget)
        if what == ADMIT:
            return what, None
        now = time.monotonic()
        if why == "fd_budget":
            exc = TooManyConnections(
                f"too many client connections: pgshard's file-descriptor budget of {budget} "
                "client sockets is exhausted",
                hint="raise pgshard's open-files limit (ulimit -n, LimitNOFILE=)")
            n = self._log(why, now)
            if n is not None:
                log.warning("refusing clients: the file-descriptor budget of %d client sockets "
                            "is exhausted (RLIMIT_NOFILE %d; %d refused since the last such "
                            "line); raise the open-files limit", budget, self.nofile[0], n)
        else:
            exc = TooManyConnections(
                f"too many client connections (max_client_conn = {pc.max_client_conn})")
            n = self._log(why, now)
            if n is not None:
                log.warning("refusing clients: max_client_conn = %d reached (%d refused since "
                            "the last such line)", pc.max_client_conn, n)
        return what, exc

    def accept_failed(self, exc: OSError) -> None:
        n = self._log("accept", time.monotonic())
        if n is not None:
            log.warning("accept() failed: %s; pausing new clients briefly (%d more since the "
                        "last such line)", exc, n)

    def _log(self, kind: str, now: float) -> int | None:
        limiter = self._logs.get(kind)
        if limiter is None:
            limiter = self._logs[kind] = RateLimitedLog()
        return limiter.due(now)

    def track(self, session, refusing: bool) -> None:
        (self.refusing if refusing else self.admitted).add(session)

    def release(self, session) -> None:
        self.admitted.discard(session)
        self.refusing.discard(session)

    def sessions(self) -> list:
        return [*self.admitted, *self.refusing]

    # ---- timeouts

    async def _reap_forever(self) -> None:
        tick = self.timeouts.tick()
        while True:
            await asyncio.sleep(tick)
            try:
                self.reap(time.monotonic())
            except Exception:
                log.exception("client limits scan failed")

    def reap(self, now: float) -> None:
        t = self.timeouts
        for group in (self.admitted, self.refusing):
            for s in list(group):
                if s.task is not None and s.task.done():
                    group.discard(s)   # ended without reaching _cleanup: never leak a count
                    continue
                if s.reaped_at:
                    if not s.closed and now - s.reaped_at > ABORT_AFTER and s.transport:
                        s.transport.abort()   # it never read our FATAL: close() would wait
                    continue
                logged_in = s.pid != 0
                idle_for = None
                status = b"I"
                if logged_in:
                    if _waiting_for_client(s):
                        idle_for = now - max(s.last_active, s.busy_at)
                        status = s._status()
                    else:
                        s.busy_at = now
                exc = expiry(t, age=now - s.accepted_at, logged_in=logged_in,
                             refusal=s.refusal, idle_for=idle_for, status=status)
                if exc is not None:
                    self._close(s, exc, now)

    def _close(self, s, exc: PgError, now: float) -> None:
        """Tell the client why, then close; the session's cleanup rolls back its server."""
        s.reaped_at = now
        tr = s.transport
        if tr is None or s.closed:
            return
        if not s.in_tls_handshake:
            try:
                tr.write(m.error_from(exc))
            except Exception:
                pass
        n = self._log(exc.sqlstate, now)
        if n is not None:
            log.info("closing client %s: %s (%d more closed for this since the last such "
                     "line)", s.peer, exc.message, n)
        tr.close()
