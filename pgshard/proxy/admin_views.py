"""The admin console's SHOW tables (PgBouncer-like columns) read from a running Proxy: pools,
clients, servers, stats, shards, config. Reads only; the console shell sends them."""

from __future__ import annotations

import dataclasses
import time

from pgshard.config import dsn_address

TEXT, INT8, BOOL, FLOAT8 = 25, 20, 16, 701


@dataclasses.dataclass(frozen=True)
class Table:
    """One admin console SHOW answer: its columns (name, type oid) and rows."""

    columns: list[tuple[str, int]]
    rows: list[list]


def _wall(monotonic_at: float) -> str:
    """A monotonic timestamp as UTC wall-clock text."""
    at = time.time() - (time.monotonic() - monotonic_at)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at)) + "+00"


def _addr_port(peer: str) -> tuple[str, int | None]:
    host, _, port = peer.rpartition(":")
    return (host, int(port)) if port.isdigit() else (peer, None)


def _client_state(s) -> str:
    from pgshard.proxy.limits import _waiting_for_client

    if getattr(s, "admin", None) is not None:
        return "console"
    if s.pid == 0:
        return "login"
    if not _waiting_for_client(s):
        return "active"
    status = s._status()
    return {b"I": "idle", b"T": "idle in transaction"}.get(status, "idle in failed transaction")


def pools(proxy) -> Table:
    by_pool: dict[int, int] = {}
    for c in list(proxy.clients.values()):
        srv = c.server
        if srv is not None and srv.pool is not None:
            by_pool[id(srv.pool)] = by_pool.get(id(srv.pool), 0) + 1
    rows = []
    for key, p in sorted(proxy.pools.items(), key=lambda kv: (kv[0].shard, kv[0].role,
                                                                kv[0].user, kv[0].client or "")):
        db = proxy.database_of(key)
        logical = proxy.config.database(db)
        mode = logical.pool_mode if logical and logical.pool_mode else proxy.config.proxy.pool_mode
        if key.client:
            u = proxy.config.user(key.client)
            mode = (u.pool_mode if u and u.pool_mode else mode)
        rows.append([db, key.client or key.user, key.shard, key.role, by_pool.get(id(p), 0),
                     len(p.waiters), p.active, len(p.idle), p.connecting, p.settings.pool_size,
                     mode, _paused(proxy, key)])
    return Table([("database", TEXT), ("user", TEXT), ("shard", TEXT), ("role", TEXT),
                  ("cl_active", INT8), ("cl_waiting", INT8), ("sv_active", INT8),
                  ("sv_idle", INT8), ("sv_login", INT8), ("pool_size", INT8),
                  ("pool_mode", TEXT), ("paused", BOOL)], rows)


def _paused(proxy, key) -> bool:
    gate = getattr(proxy, "admin_pause", None)
    return gate is not None and gate.paused(key)


def _shard_paused(proxy, shard: str) -> bool:
    gate = getattr(proxy, "admin_pause", None)
    return gate is not None and (gate.everything or shard in gate.shards)


def clients(proxy) -> Table:
    db = proxy.config.proxy.database
    rows = []
    sessions = {id(s): s for s in (*proxy.clients.values(), *proxy.limits.sessions())}
    for s in sorted(sessions.values(), key=lambda s: s.accepted_at):
        addr, port = _addr_port(s.peer)
        srv = s.server
        pinned = bool((srv is not None and srv.sticky) or s.parked)
        console = getattr(s, "admin", None) is not None
        rows.append(["C", s.user_name, "pgshard" if console else s.database or db,
                     _client_state(s), addr,
                     port, _wall(s.accepted_at), _wall(s.last_active), s.pid,
                     s.shard if srv is not None else None, srv.pid if srv is not None else None,
                     s.tls, s.settings.startup.get("application_name", ""), s.pool_mode, pinned])
    return Table([("type", TEXT), ("user", TEXT), ("database", TEXT), ("state", TEXT),
                  ("addr", TEXT), ("port", INT8), ("connect_time", TEXT),
                  ("request_time", TEXT), ("pid", INT8), ("shard", TEXT),
                  ("server_pid", INT8), ("tls", BOOL), ("application_name", TEXT),
                  ("pool_mode", TEXT), ("pinned", BOOL)], rows)


def servers(proxy) -> Table:
    rows = []
    for key, p in sorted(proxy.pools.items(), key=lambda kv: (kv[0].shard, kv[0].role)):
        for s in sorted(p.servers, key=lambda s: s.created):
            client = s.client
            linked = getattr(client, "pid", None) if client is not None else None
            rows.append(["S", key.user, proxy.database_of(key), key.shard, key.role, s.state,
                         p.host, p.port,
                         _wall(s.created), _wall(s.last_used), s.pid,
                         linked if isinstance(linked, int) and linked else None,
                         s.txn_status.decode() if isinstance(s.txn_status, bytes) else None,
                         s.sticky or None])
    return Table([("type", TEXT), ("user", TEXT), ("database", TEXT), ("shard", TEXT),
                  ("role", TEXT), ("state", TEXT), ("addr", TEXT), ("port", INT8),
                  ("connect_time", TEXT), ("request_time", TEXT), ("pid", INT8),
                  ("client_pid", INT8), ("txn_status", TEXT), ("pinned_by", TEXT)], rows)


def stats(proxy) -> Table:
    rows = []
    for key, p in sorted(proxy.pools.items(), key=lambda kv: (kv[0].shard, kv[0].role)):
        st = p.stats
        rows.append([proxy.database_of(key), key.shard, key.role, key.client or key.user,
                     st["acquired"],
                     st["waited"], st["timeouts"], st["connects"], st["connect_errors"]])
    return Table([("database", TEXT), ("shard", TEXT), ("role", TEXT), ("user", TEXT),
                  ("total_acquired", INT8), ("total_waited", INT8),
                  ("total_wait_timeouts", INT8), ("total_connects", INT8),
                  ("total_connect_errors", INT8)], rows)


def shards(proxy) -> Table:
    cat = proxy.catalog
    rows = []
    if cat is not None:
        counts: dict[str, int] = {}
        for _, owner in cat.ring.vnodes():
            counts[owner] = counts.get(owner, 0) + 1
        for sh in cat.shards:
            rows.append([sh.name, sh.status, dsn_address(sh.primary),
                         ", ".join(dsn_address(r) for r in sh.replicas),
                         counts.get(sh.name, 0),
                         sh.name in cat.ring.shards(), sh.hold or None,
                         _shard_paused(proxy, sh.name), cat.version])
    return Table([("name", TEXT), ("status", TEXT), ("primary", TEXT), ("replicas", TEXT),
                  ("vnodes", INT8), ("owns_ranges", BOOL), ("hold", TEXT), ("paused", BOOL),
                  ("catalog_version", INT8)], rows)


def config(proxy) -> Table:
    from pgshard.reload import PROXY_RESTART

    cfg = proxy.config
    rows = []
    for f in dataclasses.fields(cfg.proxy):
        value = getattr(cfg.proxy, f.name)
        if isinstance(value, tuple):
            value = ", ".join(value)
        default = f.default if f.default is not dataclasses.MISSING else None
        if isinstance(default, tuple):
            default = ", ".join(default)
        rows.append([f.name, _text(value), _text(default), f.name not in PROXY_RESTART])
    rows.append(["log_level", cfg.log_level, "INFO", True])
    from pgshard.control.execute import INTERNAL_USER

    rows.append(["users", ", ".join(u.name for u in cfg.users if u.name != INTERNAL_USER),
                 "", True])
    return Table([("key", TEXT), ("value", TEXT), ("default", TEXT), ("changeable", BOOL)],
                 rows)


def _text(v) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return "on" if v else "off"
    return str(v)


VIEWS = {"pools": pools, "clients": clients, "servers": servers, "stats": stats,
         "shards": shards, "config": config}
