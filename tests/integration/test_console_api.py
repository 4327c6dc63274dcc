"""The console's server side against the session's real 2-shard cluster (primary + replica
each): the bundle served at /ui with a strict CSP, the overview's health, lag, pool and query
figures, the ring lookup agreeing with where the proxy really puts rows, and /auth/me."""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp
import asyncpg
import pytest

from pgshard.cluster import free_port
from pgshard.ring.catalog import Catalog
from pgshard.ring.hashing import canonical_key
from tests.fixtures.runtime import (
    ADMIN_PASSWORD,
    Api,
    running_runtime,
    runtime_config,
    shards_of,
)

TABLE = "console_items"


@pytest.fixture(scope="module")
async def rt(pg_cluster):
    for s in pg_cluster.shards:
        s.primary.psql(f"DROP TABLE IF EXISTS {TABLE}; "
                       f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, note text)")
    async with running_runtime(runtime_config(pg_cluster)) as runtime:
        yield runtime


@pytest.fixture(scope="module")
async def api(rt):
    async with aiohttp.ClientSession() as session:
        api = Api(rt.api_url, session)
        api.tokens["admin"] = await api.login("admin", ADMIN_PASSWORD)
        for role in ("viewer", "app"):
            status, body, _ = await api.request(
                "POST", "/api/v1/users", role="admin",
                json={"name": f"c-{role}", "password": f"{role}-password", "role": role})
            assert status == 201, body
            api.tokens[role] = await api.login(f"c-{role}", f"{role}-password")
        status, body, _ = await api.request("PUT", f"/api/v1/tables/{TABLE}", role="admin",
                                            json={"shard_key": "id"})
        assert status in (200, 201), body
        yield api


async def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await predicate()
        if last:
            return last
        await asyncio.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}: {last!r}")


# ---------------------------------------------------------------------- static bundle

async def test_ui_is_served_with_a_strict_csp(api):
    async with api.session.get(api.base + "/ui", allow_redirects=False) as resp:
        assert resp.status == 302 and resp.headers["Location"] == "/ui/"
    status, html, headers = await api.request("GET", "/ui/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Cache-Control"] == "no-cache"
    # A deep link into the single-page app gets the same page.
    status, deep, _ = await api.request("GET", "/ui/some/page")
    assert status == 200 and deep == html
    assets = re.findall(r'(?:src|href)="(/ui/assets/[^"]+)"', html)
    assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
    for asset in assets:
        async with api.session.get(api.base + asset) as resp:
            assert resp.status == 200, asset
            assert "immutable" in resp.headers["Cache-Control"]
            assert len(await resp.read()) > 100
    status, _, _ = await api.request("GET", "/ui/assets/missing-0000.js")
    assert status == 404
    for probe in ("/ui/%2e%2e/%2e%2e/setup.cfg", "/ui/..%2f..%2fsetup.cfg"):
        async with api.session.get(api.base + probe) as resp:
            body = await resp.text()
            assert "[metadata]" not in body and "install_requires" not in body, probe


# ---------------------------------------------------------------------- overview

async def test_overview_shows_both_shards_healthy_with_replica_lag(api, rt, pg_cluster):
    async def healthy():
        status, doc, _ = await api.request("GET", "/api/v1/overview", role="viewer")
        assert status == 200, doc
        # A router's registration follows a catalog change within a lease refresh.
        ready = (len(doc["shards"]) == 2 and not doc["alerts"] and all(
            s["healthy"] and all(v["healthy"] and v["lag_bytes"] is not None
                                 for v in s["servers"][1:]) for s in doc["shards"]))
        return doc if ready else None

    doc = await wait_for(healthy, what="both shards and replicas healthy, no alerts")
    assert doc["health_source"] == "replica-monitor"
    assert doc["catalog_version"] == rt.proxy.catalog.version
    assert doc["store"]["reachable"] is True
    assert [r["id"] for r in doc["routers"]] == [rt.plane.node_id]
    assert doc["routers"][0]["up_to_date"] and doc["routers"][0]["leader"]
    for shard, cluster_shard in zip(doc["shards"], pg_cluster.shards, strict=True):
        assert shard["name"] == cluster_shard.name
        primary, replica = shard["servers"]
        assert primary["address"] == f"127.0.0.1:{cluster_shard.primary.port}"
        assert replica["address"] == f"127.0.0.1:{cluster_shard.replicas[0].port}"
        assert replica["lag_seconds"] is not None and replica["lag_seconds"] >= 0
        assert shard["vnodes"] == 256


async def test_overview_counts_statements_and_pools_per_shard(api, rt):
    status, before, _ = await api.request("GET", "/api/v1/overview", role="viewer")
    assert status == 200
    conn = await asyncpg.connect(f"postgresql://app:app-secret@127.0.0.1:{rt.proxy.port}/app",
                                 timeout=10)
    try:
        for i in range(40):
            await asyncio.wait_for(conn.fetch(f"SELECT * FROM {TABLE} WHERE id = $1", i), 10)
    finally:
        await conn.close()
    status, after, _ = await api.request("GET", "/api/v1/overview", role="viewer")
    catalog = rt.proxy.catalog
    expected = {s.name: 0 for s in catalog.shards}
    for i in range(40):
        expected[catalog.shard_for_key(canonical_key(i)).name] += 1
    for b, a in zip(before["shards"], after["shards"], strict=True):
        got = a["servers"][0]["queries_total"] - b["servers"][0]["queries_total"]
        assert got >= expected[a["name"]] > 0, (a["name"], got, expected)
        assert a["servers"][0]["pool"]["servers"] >= 1
        assert a["servers"][0]["pool"]["max_servers"] >= 4
    assert after["queries_total"] - before["queries_total"] >= 40


async def test_overview_and_lookup_need_catalog_read(api):
    for path in ("/api/v1/overview", "/api/v1/ring/lookup?key=1"):
        assert (await api.request("GET", path))[0] == 401
        assert (await api.request("GET", path, role="app"))[0] == 403


# ---------------------------------------------------------------------- ring lookup

async def test_lookup_agrees_with_the_catalog_and_with_where_rows_land(api, rt, pg_cluster):
    status, cat_json, _ = await api.request("GET", "/api/v1/catalog", role="viewer")
    assert status == 200
    # The API redacts passwords in shard DSNs; only the ring matters here.
    catalog = Catalog.from_json({k: cat_json[k] for k in ("version", "shards", "ring",
                                                          "tables", "fences")})
    keys = [7, 42, 1001, 65537, 123456789, 2**40 + 3]
    conn = await asyncpg.connect(f"postgresql://app:app-secret@127.0.0.1:{rt.proxy.port}/app",
                                 timeout=10)
    try:
        for k in keys:
            await asyncio.wait_for(conn.execute(
                f"INSERT INTO {TABLE} (id, note) VALUES ($1, 'c') ON CONFLICT DO NOTHING", k), 10)
    finally:
        await conn.close()
    where = {}
    for s in pg_cluster.shards:
        out = s.primary.psql(f"SELECT id FROM {TABLE}")
        for line in out.split():
            if line.strip().isdigit():
                where[int(line)] = s.name
    for k in keys:
        status, got, _ = await api.request("GET", f"/api/v1/ring/lookup?key={k}", role="viewer")
        assert status == 200, got
        assert got["shard"] == catalog.shard_for_key(canonical_key(k)).name == where[k]
        assert got["catalog_version"] == catalog.version
    # Typed keys are normalised as routing does; malformed ones are a 400, not a guess.
    status, a, _ = await api.request("GET", "/api/v1/ring/lookup?key=0042&kind=int",
                                     role="viewer")
    assert status == 200 and a["canonical"] == "42" and a["shard"] == where.get(42, a["shard"])
    for bad in ("?key=4x&kind=int", "?key=1&kind=float", "?key=", ""):
        status, body, _ = await api.request("GET", f"/api/v1/ring/lookup{bad}", role="viewer")
        assert status == 400, (bad, body)


# ---------------------------------------------------------------------- who am I

async def test_me_reports_role_and_permissions(api):
    status, me, _ = await api.request("GET", "/api/v1/auth/me", role="viewer")
    assert status == 200
    assert me == {"name": "c-viewer", "role": "viewer",
                  "permissions": ["audit:read", "catalog:read"]}
    status, me, _ = await api.request("GET", "/api/v1/auth/me", role="admin")
    assert me["role"] == "admin" and "users:admin" in me["permissions"]
    assert (await api.request("GET", "/api/v1/auth/me"))[0] == 401
    assert (await api.request("GET", "/api/v1/auth/me", token="x.y.z"))[0] == 401


async def test_new_endpoints_are_documented(api):
    status, doc, _ = await api.request("GET", "/api/v1/openapi.json")
    assert status == 200
    assert {"/api/v1/overview", "/api/v1/ring/lookup", "/api/v1/auth/me"} <= set(doc["paths"])


async def test_without_replicas_the_overview_probes_primaries_and_flags_a_dead_one(pg_cluster):
    """No shard has replicas, so no replica monitor runs: the console probes the primaries
    itself, and a primary nobody listens on is a critical alert."""
    shards = [{**s, "replicas": []} for s in shards_of(pg_cluster)]
    dead_port = free_port()
    shards.append({"name": "dead", "replicas": [],
                   "primary": f"postgresql://app:x@127.0.0.1:{dead_port}/app"})
    async with running_runtime(runtime_config(pg_cluster, shards=shards)) as rt, \
            aiohttp.ClientSession() as session:
        assert rt.proxy.replicas is None
        api = Api(rt.api_url, session)
        api.tokens["admin"] = await api.login("admin", ADMIN_PASSWORD)
        status, doc, _ = await api.request("GET", "/api/v1/overview", role="admin")
        assert status == 200, doc
        assert doc["health_source"] == "probe"
        health = {s["name"]: s["healthy"] for s in doc["shards"]}
        assert health == {"shard0": True, "shard1": True, "dead": False}
        dead = next(s for s in doc["shards"] if s["name"] == "dead")
        assert dead["servers"][0]["address"] == f"127.0.0.1:{dead_port}"
        assert dead["servers"][0]["reason"]
        assert [(a["severity"], a["subject"]) for a in doc["alerts"]
                if a["kind"] == "primary"] == [("critical", "dead")]
