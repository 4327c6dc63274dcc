"""The console's read models: a key's place on the ring, and one overview of the cluster
(shards and their servers, pools, query counts, routers, store, alerts) assembled from facts
the sidecar already holds. Pure functions; the shell that gathers the facts is console.py."""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

from pgshard.ring import hashing
from pgshard.ring.catalog import Catalog
from pgshard.ring.ring import MAX_TOKEN

KEY_KINDS = ("auto", "int", "uuid", "text")


# ---------------------------------------------------------------------- ring lookup

def ring_lookup(catalog: Catalog, key: str, kind: str = "auto") -> dict:
    """Where `key` (as written in SQL or a hint; `kind` as for hints) routes in `catalog`.

    The same reduction routing applies: hashing.key_from_literal → canonical bytes →
    hashing.token → the ring's owner. Raises hashing.InvalidKey for a malformed int/uuid."""
    canonical = hashing.key_from_literal(key, kind)
    token = hashing.token(canonical)
    tokens = catalog.ring.tokens
    i = bisect_left(tokens, token)
    vnode = i if i < len(tokens) else 0
    owner = catalog.ring.owner(token)
    lo = tokens[vnode - 1] if vnode > 0 else tokens[-1]
    fence = catalog.is_fenced(token)
    return {
        "key": key, "kind": kind, "canonical": canonical.decode("utf-8", "replace"),
        "token": token, "shard": owner, "vnode_token": tokens[vnode],
        # (lo, hi] with wrap-around: the first vnode also owns (last token, MAX_TOKEN].
        "range": {"lo": lo, "hi": tokens[vnode], "wraps": vnode == 0},
        "fenced": fence.to_json() if fence is not None else None,
        "catalog_version": catalog.version, "max_token": MAX_TOKEN,
    }


# ---------------------------------------------------------------------- overview

@dataclass(frozen=True)
class PoolUse:
    """Server connections of one (shard, role), summed over users and databases."""

    servers: int = 0
    active: int = 0
    idle: int = 0
    waiters: int = 0
    max_servers: int = 0

    def __add__(self, other: PoolUse) -> PoolUse:
        return PoolUse(self.servers + other.servers, self.active + other.active,
                       self.idle + other.idle, self.waiters + other.waiters,
                       self.max_servers + other.max_servers)

    def to_json(self) -> dict:
        return {"servers": self.servers, "active": self.active, "idle": self.idle,
                "waiters": self.waiters, "max_servers": self.max_servers}


@dataclass(frozen=True)
class Facts:
    """Everything the overview is made of, as gathered at one moment."""

    catalog: Catalog
    health: dict                      # ControlPlane.health()
    servers: dict                     # shard -> {"primary": {...}, "replicas": [{...}]}
    pools: dict                       # (shard, role) -> PoolUse
    queries: dict                     # (shard, role) -> statements routed (cumulative)
    errors_total: float               # errors sent to clients (cumulative)
    routers: list                     # registered routers (membership records)
    leader: str | None
    max_replica_lag: float
    monitor: str                      # "replica-monitor" | "probe"


def assemble_overview(f: Facts) -> dict:
    """The overview document the console polls; alerts derived from the same facts."""
    shards = []
    for shard in f.catalog.shards:
        known = f.servers.get(shard.name, {})
        primary = known.get("primary") or {"dsn": None, "reachable": None}
        servers = [_server("primary", primary, f, shard.name)]
        for i, _ in enumerate(shard.replicas):
            reps = known.get("replicas") or []
            rep = reps[i] if i < len(reps) else {"healthy": None}
            servers.append(_server(f"replica:{i}", rep, f, shard.name))
        vnodes = sum(1 for owner in f.catalog.ring.owners if owner == shard.name)
        shards.append({
            "name": shard.name, "status": shard.status, "weight": shard.weight,
            "vnodes": vnodes,
            "ownership": round(f.catalog.ring.ownership().get(shard.name, 0.0), 6),
            "healthy": servers[0]["healthy"], "servers": servers,
            "queries_total": sum(s["queries_total"] for s in servers),
        })
    routers = []
    for r in f.routers:
        routers.append({**r, "up_to_date": r.get("catalog_version") == f.catalog.version,
                        "leader": r.get("id") == f.leader})
    doc = {
        "catalog_version": f.catalog.version,
        "node": {k: f.health.get(k) for k in ("node_id", "role", "catalog_version",
                                              "leader", "uptime_seconds")},
        "store": f.health.get("store", {}),
        "shards": shards, "routers": routers, "leader": f.leader,
        "queries_total": sum(f.queries.values()), "errors_total": f.errors_total,
        "max_replica_lag": f.max_replica_lag, "health_source": f.monitor,
        "fences": [fe.to_json() for fe in f.catalog.fences],
    }
    doc["alerts"] = alerts(doc)
    return doc


def _server(role: str, known: dict, f: Facts, shard: str) -> dict:
    if role == "primary":
        reachable = known.get("reachable")
        # A primary that answers but is in recovery is not a primary one can write to.
        healthy = None if reachable is None else bool(reachable and not known.get("in_recovery"))
        lag_bytes = lag_seconds = None
        reason = known.get("last_error") if reachable is False else (
            "in recovery (not writable)" if known.get("in_recovery") else None)
    else:
        healthy = known.get("healthy")
        lag_bytes, lag_seconds = known.get("lag_bytes"), known.get("lag_seconds")
        reason = known.get("reason") or known.get("last_error")
    return {"role": role, "address": known.get("dsn"), "healthy": healthy, "reason": reason,
            "lag_bytes": lag_bytes, "lag_seconds": lag_seconds,
            "pool": f.pools.get((shard, role), PoolUse()).to_json(),
            "queries_total": f.queries.get((shard, role), 0)}


def alerts(doc: dict) -> list[dict]:
    """What an operator should look at, most severe first."""
    out = []
    store = doc.get("store") or {}
    if store.get("reachable") is False:
        out.append(_alert("critical", "store", "metadata store",
                          f"the metadata store does not answer ({store.get('last_error')}); "
                          "routers serve the last catalog they know"))
    for shard in doc["shards"]:
        primary = shard["servers"][0]
        if primary["healthy"] is False:
            out.append(_alert("critical", "primary", shard["name"],
                              f"shard {shard['name']} has no healthy primary"
                              + (f": {primary['reason']}" if primary["reason"] else "")))
        elif primary["healthy"] is None:
            out.append(_alert("warning", "primary", shard["name"],
                              f"shard {shard['name']}: primary not checked yet"))
        if shard["vnodes"] == 0:
            out.append(_alert("info", "ownership", shard["name"],
                              f"shard {shard['name']} owns no ranges (a rebalance would "
                              "give it some)"))
        for s in shard["servers"][1:]:
            lag = s["lag_seconds"]
            if s["healthy"] is False:
                out.append(_alert("warning", "replica", f"{shard['name']}/{s['role']}",
                                  f"replica {s['role']} of {shard['name']} is not used for "
                                  f"reads: {s['reason'] or 'unhealthy'}"))
            elif lag is not None and lag > doc["max_replica_lag"]:
                out.append(_alert("warning", "lag", f"{shard['name']}/{s['role']}",
                                  f"replica {s['role']} of {shard['name']} lags {lag:g} s "
                                  f"(limit {doc['max_replica_lag']:g} s)"))
    for r in doc["routers"]:
        if not r["up_to_date"]:
            out.append(_alert("warning", "router", str(r.get("id")),
                              f"router {r.get('id')} serves catalog version "
                              f"{r.get('catalog_version')}, not {doc['catalog_version']}"))
    order = {"critical": 0, "warning": 1, "info": 2}
    return sorted(out, key=lambda a: order[a["severity"]])


def _alert(severity: str, kind: str, subject: str, message: str) -> dict:
    return {"severity": severity, "kind": kind, "subject": subject, "message": message}
