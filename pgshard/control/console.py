"""The web console: its read-only REST endpoints (overview, ring lookup, who am I; moving
ranges and job previews from console_jobs) and the built React bundle served as static
files at /ui (a single-page app: unknown paths under /ui get index.html)."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import asyncpg
from aiohttp import web

from pgshard.config import dsn_address
from pgshard.control.auth import PERMISSIONS, bearer_token
from pgshard.control.console_jobs import CONSOLE_JOB_ROUTES
from pgshard.control.errors import BadRequest, ServiceUnavailable, Unauthorized
from pgshard.control.membership import list_routers
from pgshard.control.overview import KEY_KINDS, Facts, PoolUse, assemble_overview, ring_lookup
from pgshard.control.routes import Route, ok, plane
from pgshard.protocol.errors import PgError
from pgshard.ring.ring import EmptyRing
from pgshard.store import StoreError

log = logging.getLogger("pgshard.control")

STATIC_ROOT = Path(__file__).parent / "static" / "ui"
PROBE_TTL = 2.0        # seconds a primary's probe result is reused (the console polls at 2 s)
PROBE_TIMEOUT = 2.0

# The bundle is self-contained (no CDN): everything from this origin, nothing inline.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


# ---------------------------------------------------------------------- REST handlers

async def ring_lookup_handler(request: web.Request) -> web.Response:
    key = request.query.get("key")
    kind = request.query.get("kind", "auto")
    if key is None or key == "":
        raise BadRequest("give the key to look up: ?key=…")
    if len(key) > 1024:
        raise BadRequest("the key is longer than 1024 characters")
    if kind not in KEY_KINDS:
        raise BadRequest(f"kind must be one of {', '.join(KEY_KINDS)}")
    catalog = plane(request).proxy.catalog
    if catalog is None:
        raise ServiceUnavailable("this router has no catalog yet")
    try:
        return ok(ring_lookup(catalog, key, kind))
    except EmptyRing:
        raise ServiceUnavailable("the ring has no shards") from None
    except PgError as exc:
        raise BadRequest(f"not a valid {kind} key: {exc}") from None


async def whoami(request: web.Request) -> web.Response:
    """The caller's name, role and permissions, so the console offers only what is allowed."""
    p = plane(request)
    claimed = p.tokens.verify(bearer_token(request.headers.get("Authorization")))
    role = claimed.role
    try:
        user = await p.users.get(claimed.name)
        if user is None:
            raise Unauthorized(f'user "{claimed.name}" no longer exists')
        role = user.role
    except StoreError:
        pass  # as the auth middleware: trust the signed claims while the store is down
    return ok({"name": claimed.name, "role": role,
               "permissions": sorted(perm for perm, roles in PERMISSIONS.items()
                                     if role in roles)})


async def overview(request: web.Request) -> web.Response:
    p = plane(request)
    routers, leader = [], None
    try:
        catalog, _ = await p.catalog_ops.current()
        routers, leader = await list_routers(p.store)
    except (StoreError, ServiceUnavailable):
        catalog = p.proxy.catalog   # the store is down: show what this router serves
    if catalog is None:
        raise ServiceUnavailable("this router has no catalog yet")
    servers, source = await _server_states(request, catalog)
    pools: dict = {}
    for key, pool in list(p.proxy.pools.items()):
        use = PoolUse(pool.size, pool.active, len(pool.idle), len(pool.waiters),
                      pool.settings.pool_size)
        pools[(key.shard, key.role)] = pools.get((key.shard, key.role), PoolUse()) + use
    queries, errors = _counters(p.metrics)
    facts = Facts(catalog=catalog, health=p.health(), servers=servers, pools=pools,
                  queries=queries, errors_total=errors, routers=routers, leader=leader,
                  max_replica_lag=p.config.proxy.max_replica_lag, monitor=source)
    doc = assemble_overview(facts)
    _add_ha_facts(doc, p.proxy, catalog)
    doc["generated_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return ok(doc)


def _add_ha_facts(doc: dict, proxy, catalog) -> None:
    """Each shard's high-availability view (servers with role, health, lag and sync flag,
    fenced old primaries, the synchronous quorum, the last failover) as `ha`, where this
    build has it; the console shows what is there."""
    try:
        from pgshard.control.ha_status import server_views
    except ImportError:
        return
    for shard in doc["shards"]:
        try:
            shard["ha"] = server_views(proxy, catalog.shard(shard["name"]))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            log.debug("no HA view of %s: %s", shard["name"], exc)


def _counters(metrics) -> tuple[dict, float]:
    """Statements routed per (shard, role) and errors sent, read from the metrics registry."""
    queries: dict = {}
    errors = 0.0
    if metrics is None:
        return queries, errors
    for family in metrics.registry.collect():
        if family.name == "pgshard_queries":
            for s in family.samples:
                if s.name.endswith("_total"):
                    k = (s.labels.get("shard"), s.labels.get("role"))
                    queries[k] = queries.get(k, 0) + s.value
        elif family.name == "pgshard_errors":
            errors += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return queries, errors


async def _server_states(request: web.Request, catalog) -> tuple[dict, str]:
    """Per shard, its servers as the proxy's replica monitor last saw them; primaries it has
    not checked (no monitor runs when no shard had replicas at start) are probed here."""
    monitor = plane(request).proxy.replicas
    states = monitor.status() if monitor is not None else {}
    unchecked = []
    for shard in catalog.shards:
        st = states.get(shard.name)
        prim = st.get("primary") if st else None
        if prim is None or (not prim.get("reachable") and not prim.get("last_error")
                            and not prim.get("failures")):
            unchecked.append(shard)
    if unchecked:
        probe: PrimaryProbe = request.app[PROBE]
        results = await probe.check([s.primary for s in unchecked])
        for shard in unchecked:
            entry = states.setdefault(shard.name, {"replicas": []})
            entry["primary"] = results[shard.primary]
    sources = (["replica-monitor"] if monitor is not None else []) + (["probe"] if unchecked
                                                                       else [])
    return states, "+".join(sources)


class PrimaryProbe:
    """Connects to a primary and asks pg_is_in_recovery(); results reused for PROBE_TTL."""

    def __init__(self, ttl: float = PROBE_TTL, timeout: float = PROBE_TIMEOUT):
        self.ttl = ttl
        self.timeout = timeout
        self._cache: dict[str, tuple[float, dict]] = {}
        self._inflight: dict[str, asyncio.Task] = {}

    async def check(self, dsns: list[str]) -> dict[str, dict]:
        now = time.monotonic()
        out, waits = {}, {}
        for dsn in dsns:
            hit = self._cache.get(dsn)
            if hit is not None and now - hit[0] < self.ttl:
                out[dsn] = hit[1]
                continue
            task = self._inflight.get(dsn)
            if task is None:
                task = self._inflight[dsn] = asyncio.ensure_future(self._probe(dsn))
                task.add_done_callback(lambda _t, d=dsn: self._inflight.pop(d, None))
            waits[dsn] = task
        for dsn, task in waits.items():
            out[dsn] = await asyncio.shield(task)
        return out

    async def _probe(self, dsn: str) -> dict:
        result = {"dsn": dsn_address(dsn), "reachable": False, "in_recovery": None,
                  "last_error": None}
        try:
            conn = await asyncio.wait_for(asyncpg.connect(dsn, timeout=self.timeout),
                                          self.timeout + 0.5)
            try:
                result["in_recovery"] = await asyncio.wait_for(
                    conn.fetchval("SELECT pg_is_in_recovery()"), self.timeout)
                result["reachable"] = True
            finally:
                await asyncio.wait_for(conn.close(), self.timeout)
        except Exception as exc:   # whatever the failure, the answer is "not reachable"
            result["last_error"] = str(exc) or type(exc).__name__
        self._cache[dsn] = (time.monotonic(), result)
        return result


PROBE = web.AppKey("console_probe", PrimaryProbe)

CONSOLE_ROUTES: tuple[Route, ...] = (
    Route("GET", "/api/v1/overview", overview, "getOverview", "Shards with their servers' "
          "health, lag and pool use, query and error counts, routers, store health and "
          "alerts (what the console's overview shows)", "console", "catalog:read",
          statuses=(503,)),
    Route("GET", "/api/v1/ring/lookup", ring_lookup_handler, "ringLookup", "Which shard a "
          "key routes to (the routing function itself), its token and vnode range", "console",
          "catalog:read", statuses=(400, 503),
          query_params={"key": {"type": "string", "minLength": 1, "maxLength": 1024},
                        "kind": {"type": "string", "enum": list(KEY_KINDS)}}),
    Route("GET", "/api/v1/auth/me", whoami, "whoAmI", "The caller's name, role and "
          "permissions (send the bearer token)", "auth", statuses=(401, 503)),
    *CONSOLE_JOB_ROUTES,
)


# ---------------------------------------------------------------------- static bundle

def add_console(app: web.Application, root: Path = STATIC_ROOT) -> None:
    """Serve the bundle at /ui (and the probe the overview uses)."""
    app[PROBE] = PrimaryProbe()
    app[STATIC] = root
    app.router.add_get("/ui", _redirect_to_ui)
    app.router.add_get("/ui/{path:.*}", serve_ui)


STATIC = web.AppKey("console_static", Path)


async def _redirect_to_ui(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/ui/")


def resolve_static(root: Path, path: str) -> Path | None:
    """The file under `root` that `path` names, or None (missing, a directory, or outside)."""
    if "\x00" in path:
        return None
    try:
        candidate = (root / path).resolve()
        base = root.resolve()
    except (OSError, ValueError):
        return None
    if candidate != base and base not in candidate.parents:
        return None
    return candidate if candidate.is_file() else None


async def serve_ui(request: web.Request) -> web.StreamResponse:
    root: Path = request.app[STATIC]
    index = root / "index.html"
    if not index.is_file():
        resp = web.Response(status=503, content_type="text/plain", text=(
            "The web console is not built into this installation: run `make ui` (npm ci && "
            "npm run build in ui/) or install a wheel built with it.\n"))
        resp.headers.update(SECURITY_HEADERS)
        return resp
    path = request.match_info.get("path", "")
    found = resolve_static(root, path) if path else None
    if found is None and path.startswith("assets/"):
        raise web.HTTPNotFound()   # a missing asset is a 404, not the app's index page
    resp = web.FileResponse(found or index)
    # Asset names carry a content hash; index.html must be fetched fresh to find new ones.
    resp.headers["Cache-Control"] = ("public, max-age=31536000, immutable"
                                     if found is not None and path.startswith("assets/")
                                     else "no-cache")
    resp.headers.update(SECURITY_HEADERS)
    return resp
