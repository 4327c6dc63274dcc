"""The REST sidecar end to end: every endpoint for every role, error bodies, and the catalog
changes reaching the proxy — an in-process runtime over the session's 2-shard cluster."""

from __future__ import annotations

import asyncio
import json
import ssl
import time

import aiohttp
import asyncpg
import jwt
import pytest

from pgshard.cluster import free_port
from pgshard.ring import hashing
from tests.fixtures.runtime import ADMIN_PASSWORD, Api, running_runtime, runtime_config

ROLES = ("admin", "operator", "viewer", "app")
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
async def rt(pg_cluster):
    cfg = runtime_config(pg_cluster, sidecar={"cors_origins": ["https://ui.example"],
                                              "max_body_size": 4096})
    async with running_runtime(cfg) as runtime:
        yield runtime


@pytest.fixture(scope="module")
async def api(rt):
    async with aiohttp.ClientSession() as session:
        api = Api(rt.api_url, session)
        api.tokens["admin"] = await api.login("admin", ADMIN_PASSWORD)
        for role in ROLES[1:]:
            status, body, _ = await api.request(
                "POST", "/api/v1/users", role="admin",
                json={"name": f"u-{role}", "password": f"{role}-password", "role": role})
            assert status == 201, body
            api.tokens[role] = await api.login(f"u-{role}", f"{role}-password")
        yield api


@pytest.fixture(scope="module")
def rest_items(pg_cluster):
    for s in pg_cluster.shards:
        s.primary.psql("DROP TABLE IF EXISTS rest_items; "
                       "CREATE TABLE rest_items (id bigint PRIMARY KEY, name text, price numeric, "
                       "at timestamptz, tags text[])")
    return "rest_items"


def is_problem(status: int, body, headers, expected: int) -> None:
    assert status == expected, body
    assert headers["Content-Type"].startswith(PROBLEM)
    assert {"type", "title", "status", "detail"} <= set(body)
    assert body["status"] == expected


# ------------------------------------------------------------------ public endpoints

async def test_health_ready_openapi_are_public(api, rt):
    for path in ("/health", "/v1/health"):
        status, body, _ = await api.request("GET", path)
        assert status == 200
        assert body["catalog_version"] == rt.proxy.catalog.version
        assert body["store"]["reachable"] is True and body["status"] == "ok"
        assert body["leader"] is True
    status, body, _ = await api.request("GET", "/ready")
    assert status == 200 and body["ready"] is True
    status, doc, _ = await api.request("GET", "/api/v1/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    for path in ("/api/v1/shards", "/api/v1/shards/{name}", "/api/v1/tables/{name}",
                 "/v1/execute", "/api/v1/users", "/api/v1/audit", "/api/v1/routers",
                 "/api/v1/auth/login", "/metrics"):
        assert path in doc["paths"]
    for schema in ("ShardCreate", "ShardPatch", "TablePut", "UserCreate", "Execute", "Login"):
        assert doc["components"]["schemas"][schema]["additionalProperties"] is False


async def test_unknown_route_and_method_are_problems(api):
    is_problem(*await api.request("GET", "/api/v1/nope", role="admin"), 404)
    status, body, headers = await api.request("PUT", "/api/v1/shards", role="admin", json={})
    is_problem(status, body, headers, 405)


# ------------------------------------------------------------------ login

async def test_login(api):
    status, body, _ = await api.request("POST", "/api/v1/auth/login",
                                        json={"username": "admin", "password": ADMIN_PASSWORD})
    assert status == 200 and body["role"] == "admin" and body["expires_at"].endswith("Z")
    assert body["token"].count(".") == 2
    is_problem(*await api.request("POST", "/api/v1/auth/login",
                                  json={"username": "admin", "password": "wrong"}), 401)
    is_problem(*await api.request("POST", "/api/v1/auth/login",
                                  json={"username": "ghost", "password": "x"}), 401)
    is_problem(*await api.request("POST", "/api/v1/auth/login", data=b"{not json",
                                  headers={"Content-Type": "application/json"}), 400)
    is_problem(*await api.request("POST", "/api/v1/auth/login",
                                  json={"username": "admin", "password": "x", "extra": 1}), 400)
    is_problem(*await api.request("POST", "/api/v1/auth/login",
                                  json={"username": 5, "password": "x"}), 400)
    is_problem(*await api.request("POST", "/api/v1/auth/login", json=["admin"]), 400)
    is_problem(*await api.request("POST", "/api/v1/auth/login", data=b"username=admin",
                                  headers={"Content-Type": "application/x-www-form-urlencoded"}),
               415)
    is_problem(*await api.request("POST", "/api/v1/auth/login",
                                  json={"username": "admin", "password": "x" * 5000}), 413)


# ------------------------------------------------------------------ RBAC matrix

# (method, path, body, roles allowed); allowed calls are chosen to change nothing.
MATRIX = [
    ("GET", "/api/v1/catalog", None, {"admin", "operator", "viewer"}),
    ("GET", "/api/v1/shards", None, {"admin", "operator", "viewer"}),
    ("GET", "/api/v1/shards/shard0", None, {"admin", "operator", "viewer"}),
    ("POST", "/api/v1/shards", {"name": "shard0", "primary": "postgresql://u@127.0.0.1:1/x"},
     {"admin", "operator"}),
    ("PATCH", "/api/v1/shards/nosuch", {"weight": 2}, {"admin", "operator"}),
    ("DELETE", "/api/v1/shards/nosuch", None, {"admin", "operator"}),
    ("GET", "/api/v1/tables", None, {"admin", "operator", "viewer"}),
    ("GET", "/api/v1/tables/nosuch", None, {"admin", "operator", "viewer"}),
    ("DELETE", "/api/v1/tables/nosuch", None, {"admin", "operator"}),
    ("POST", "/v1/execute", {"query": "SELECT 1 AS one", "shard_key": 1}, {"admin", "app"}),
    ("GET", "/api/v1/users", None, {"admin"}),
    ("POST", "/api/v1/users", {"name": "u-viewer", "password": "whatever-pw", "role": "viewer"},
     {"admin"}),
    ("DELETE", "/api/v1/users/nosuch", None, {"admin"}),
    ("GET", "/api/v1/audit", None, {"admin", "operator", "viewer"}),
    ("GET", "/api/v1/routers", None, {"admin", "operator", "viewer"}),
]


@pytest.mark.parametrize("method,path,body,allowed", MATRIX,
                         ids=[f"{m} {p}" for m, p, _, _ in MATRIX])
async def test_rbac(api, rt, method, path, body, allowed):
    expired = jwt.encode({"sub": "admin", "role": "admin", "iat": 1, "exp": 2, "iss": "pgshard"},
                         rt.plane.tokens._secret, algorithm="HS256")
    forged = jwt.encode({"sub": "admin", "role": "admin", "iat": int(time.time()),
                         "exp": int(time.time()) + 60, "iss": "pgshard"}, "not-the-secret-but-long-enough-for-hs256",
                        algorithm="HS256")
    is_problem(*await api.request(method, path, json=body), 401)
    for token in ("garbage", expired, forged):
        status, problem, headers = await api.request(method, path, json=body, token=token)
        is_problem(status, problem, headers, 401)
        assert headers["WWW-Authenticate"].startswith("Bearer")
    for role in ROLES:
        status, got, headers = await api.request(method, path, json=body, role=role)
        if role in allowed:
            assert status not in (401, 403, 500), (role, got)
        else:
            is_problem(status, got, headers, 403)
            assert role in got["detail"]


async def test_allowed_calls_answer_as_documented(api):
    """The matrix's allowed calls: 404 for unknown names, 409 for duplicates."""
    is_problem(*await api.request("PATCH", "/api/v1/shards/nosuch", role="operator",
                                  json={"weight": 2}), 404)
    is_problem(*await api.request("DELETE", "/api/v1/shards/nosuch", role="operator"), 404)
    is_problem(*await api.request("DELETE", "/api/v1/tables/nosuch", role="operator"), 404)
    is_problem(*await api.request("GET", "/api/v1/tables/nosuch", role="viewer"), 404)
    is_problem(*await api.request("GET", "/api/v1/shards/nosuch", role="viewer"), 404)
    is_problem(*await api.request("DELETE", "/api/v1/users/nosuch", role="admin"), 404)
    is_problem(*await api.request("POST", "/api/v1/shards", role="operator", json={
        "name": "shard0", "primary": "postgresql://u@127.0.0.1:1/x"}), 409)
    is_problem(*await api.request("POST", "/api/v1/users", role="admin", json={
        "name": "u-viewer", "password": "whatever-pw", "role": "viewer"}), 409)


# ------------------------------------------------------------------ bodies

@pytest.mark.parametrize("path,body", [
    ("/api/v1/shards", {"name": "s9", "primary": "postgresql://a@b/c", "bogus": 1}),
    ("/api/v1/shards", {"name": "s9"}),
    ("/api/v1/shards", {"name": "bad name!", "primary": "postgresql://a@b/c"}),
    ("/api/v1/shards", {"name": "s9", "primary": "mysql://a@b/c"}),
    ("/api/v1/shards", {"name": "s9", "primary": "postgresql://a@b/c", "replicas": "x"}),
    ("/api/v1/users", {"name": "x1", "password": "short", "role": "admin"}),
    ("/api/v1/users", {"name": "x1", "password": "long-enough", "role": "root"}),
    ("/v1/execute", {"query": "SELECT 1", "consistency": "sometimes"}),
    ("/v1/execute", {"query": "SELECT 1", "shard_key": {"a": 1}}),
    ("/v1/execute", {"query": 42}),
])
async def test_bad_bodies_are_400(api, path, body):
    status, problem, headers = await api.request("POST", path, role="admin", json=body)
    is_problem(status, problem, headers, 400)


async def test_patch_and_put_bodies(api):
    is_problem(*await api.request("PATCH", "/api/v1/shards/shard0", role="admin", json={}), 400)
    is_problem(*await api.request("PATCH", "/api/v1/shards/shard0", role="admin",
                                  json={"weight": "heavy"}), 400)
    is_problem(*await api.request("PUT", "/api/v1/tables/t1", role="admin",
                                  json={"shard_key": "id", "x": 1}), 400)
    is_problem(*await api.request("PUT", "/api/v1/tables/bad;name", role="admin",
                                  json={"shard_key": "id"}), 400)
    is_problem(*await api.request("PUT", "/api/v1/tables/t1", role="admin", data=b"{}",
                                  headers={"Content-Type": "text/plain"}), 415)
    is_problem(*await api.request("PUT", "/api/v1/tables/t1", role="admin",
                                  data=json.dumps({"shard_key": "x" * 5000}),
                                  headers={"Content-Type": "application/json"}), 413)

    async def chunks():  # no Content-Length: the limit applies while reading
        for _ in range(10):
            yield b" " * 1000

    is_problem(*await api.request("PUT", "/api/v1/tables/t1", role="admin", data=chunks(),
                                  headers={"Content-Type": "application/json"}), 413)


# ------------------------------------------------------------------ shards

async def test_shard_lifecycle_on_populated_cluster(api, rt, pg_cluster, rest_items):
    s0, s1 = pg_cluster.shards
    for s in (s0, s1):
        s.primary.psql("DROP DATABASE IF EXISTS extra_rest")
        s.primary.psql("CREATE DATABASE extra_rest")
    pg_cluster.wait_replicas()
    extra = s0.primary.dsn.rsplit("/", 1)[0] + "/extra_rest"
    # A standby no shard uses yet (shard1's replica, another database).
    spare = s1.replicas[0].dsn.rsplit("/", 1)[0] + "/extra_rest"
    status, body, _ = await api.request("PUT", f"/api/v1/tables/{rest_items}", role="operator",
                                        json={"shard_key": "id"})
    assert status in (200, 201), body
    v0 = body["catalog_version"]
    s0.primary.psql(f"INSERT INTO {rest_items} VALUES (-1, 'seed', 1, now(), '{{}}')")
    try:
        # A replica as primary, a dead port, a primary as replica, another shard's servers,
        # one server twice: all refused, nothing written.
        s1_extra = s1.primary.dsn.rsplit("/", 1)[0] + "/extra_rest"
        for primary, replicas, code in (
                (spare.replace("/extra_rest", "/postgres"), [], 422),
                (f"postgresql://x:y@127.0.0.1:{free_port()}/app", [], 422),
                (extra, [s1_extra], 422),
                (s1.primary.dsn, [], 409), (extra, [s1.replicas[0].dsn], 409),
                (extra, [spare, spare.replace("127.0.0.1", "localhost")], 409)):
            status, problem, headers = await api.request(
                "POST", "/api/v1/shards", role="operator",
                json={"name": "extra", "primary": primary, "replicas": replicas})
            is_problem(status, problem, headers, code)
            assert "y@" not in problem["detail"]
        status, body, _ = await api.request(
            "POST", "/api/v1/shards", role="operator",
            json={"name": "extra", "primary": extra, "replicas": [spare]})
        assert status == 201, body
        assert body["owns_ranges"] is False and body["rebalance_required"] is True
        assert body["vnodes"] == 0 and ":***@" in body["primary"]
        assert body["catalog_version"] == v0 + 1
        await wait_for_version(rt, v0 + 1)
        # A shard that owns no vnodes holds no visible rows (and here not even the table):
        # keyless reads and statements needing no shard do not ask it.
        for query in (f"SELECT count(*) AS n FROM {rest_items} WHERE id = -1 OR id < 0",
                      "SELECT 1 AS n"):
            for _ in range(4):
                status, body, _ = await api.request("POST", "/v1/execute", role="app",
                                                    json={"query": query})
                assert status == 200 and body["rows"] == [{"n": 1}], body
        status, body, _ = await api.request("GET", "/api/v1/shards/extra", role="viewer")
        assert status == 200 and body["vnodes"] == 0 and body["ranges"] == 0
        status, body, _ = await api.request("PATCH", "/api/v1/shards/extra", role="operator",
                                            json={"weight": 3, "status": "draining"})
        assert status == 200 and body["weight"] == 3 and body["status"] == "draining"
        status, problem, headers = await api.request(
            "PATCH", "/api/v1/shards/extra", role="operator",
            json={"primary": f"postgresql://x:y@127.0.0.1:{free_port()}/app"})
        is_problem(status, problem, headers, 422)
        status, problem, headers = await api.request(
            "PATCH", "/api/v1/shards/extra", role="operator", json={"primary": s0.primary.dsn})
        is_problem(status, problem, headers, 409)
        status, body, _ = await api.request("GET", "/api/v1/shards", role="viewer")
        assert [s["name"] for s in body["shards"]] == ["extra", "shard0", "shard1"]
        assert all("***" in s["primary"] for s in body["shards"])
        # Shards that own ranges cannot go; one that owns none can.
        status, problem, headers = await api.request("DELETE", "/api/v1/shards/shard0",
                                                     role="operator")
        is_problem(status, problem, headers, 409)
        # A pool to the shard exists (as any shard's would, e.g. for the greeting) ...
        rt.proxy.pool_for("extra", None)
        assert any(k.shard == "extra" for k in rt.proxy.pools)
        status, body, _ = await api.request("DELETE", "/api/v1/shards/extra", role="operator")
        assert status == 200 and body["deleted"] == "extra"
        await wait_for_version(rt, body["catalog_version"])
        assert not any(k.shard == "extra" for k in rt.proxy.pools)   # ... and is gone with it
        is_problem(*await api.request("GET", "/api/v1/shards/extra", role="viewer"), 404)
    finally:
        s0.primary.psql(f"DELETE FROM {rest_items} WHERE id = -1")


async def test_new_shard_on_empty_cluster_gets_vnodes(pg_cluster, rest_items):
    """A separate runtime: adding a shard to an empty cluster changes routing for good."""
    s0 = pg_cluster.shards[0]
    s0.primary.psql("DROP DATABASE IF EXISTS extra_empty")
    s0.primary.psql("CREATE DATABASE extra_empty")
    extra = s0.primary.dsn.rsplit("/", 1)[0] + "/extra_empty"
    cfg = runtime_config(pg_cluster, tables=[{"name": rest_items, "shard_key": "id"}])
    async with running_runtime(cfg) as rt, aiohttp.ClientSession() as session:
        api = Api(rt.api_url, session)
        api.tokens["admin"] = await api.login("admin", ADMIN_PASSWORD)
        status, body, _ = await api.request("POST", "/api/v1/shards", role="admin",
                                            json={"name": "shard2", "primary": extra})
        assert status == 201, body
        assert body["owns_ranges"] is True and body["rebalance_required"] is False
        assert body["vnodes"] == 256 and 0.2 < body["ownership"] < 0.5
        await wait_for_version(rt, body["catalog_version"])
        assert "shard2" in rt.proxy.catalog.ring.shards()
        status, problem, headers = await api.request("DELETE", "/api/v1/shards/shard2",
                                                     role="admin")
        is_problem(status, problem, headers, 409)
        assert problem["vnodes"] == 256


async def wait_for_version(rt, version: int, timeout: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while rt.proxy.catalog.version < version:
        assert time.monotonic() < deadline, f"catalog {version} not applied within {timeout}s"
        await asyncio.sleep(0.02)


# ------------------------------------------------------------------ tables and catalog

async def test_tables(api, rt, pg_cluster):
    for s in pg_cluster.shards:
        s.primary.psql("DROP TABLE IF EXISTS orders")
    # A table or key column missing on some shard is refused.
    is_problem(*await api.request("PUT", "/api/v1/tables/public.orders", role="operator",
                                  json={"shard_key": "customer_id"}), 422)
    pg_cluster.shards[0].primary.psql("CREATE TABLE orders (id int, customer_id int)")
    pg_cluster.shards[1].primary.psql("CREATE TABLE orders (id int, customer int)")
    status, problem, _ = await api.request("PUT", "/api/v1/tables/public.orders",
                                           role="operator", json={"shard_key": "customer_id"})
    assert status == 422 and 'no column "customer_id" on shard shard1' in problem["detail"]
    pg_cluster.shards[1].primary.psql("ALTER TABLE orders RENAME customer TO customer_id")
    status, body, _ = await api.request("PUT", "/api/v1/tables/public.orders", role="operator",
                                        json={"shard_key": "customer_id"})
    assert status == 201, body
    version = body["catalog_version"]
    await wait_for_version(rt, version)
    assert rt.proxy.catalog.key_column("orders") == "customer_id"
    status, body, _ = await api.request("PUT", "/api/v1/tables/public.orders", role="operator",
                                        json={"shard_key": "customer_id"})
    assert status == 200 and body["catalog_version"] == version
    status, body, _ = await api.request("GET", "/api/v1/tables/public.orders", role="viewer")
    assert status == 200 and body["shard_key"] == "customer_id"
    status, body, _ = await api.request("GET", "/api/v1/tables", role="viewer")
    assert {"name": "public.orders", "shard_key": "customer_id"} in body["tables"]
    status, body, _ = await api.request("GET", "/api/v1/catalog", role="viewer")
    assert status == 200 and body["version"] == version and body["tables"]["public.orders"]
    assert all("***" in s["primary"] for s in body["shards"]) and len(body["ring"]) == 512
    status, body, _ = await api.request("DELETE", "/api/v1/tables/public.orders", role="admin")
    assert status == 200 and body["catalog_version"] == version + 1
    is_problem(*await api.request("GET", "/api/v1/tables/public.orders", role="viewer"), 404)
    is_problem(*await api.request("DELETE", "/api/v1/tables/public.orders", role="admin"), 404)


# ------------------------------------------------------------------ users

async def test_users(api):
    status, body, _ = await api.request("POST", "/api/v1/users", role="admin",
                                        json={"name": "temp", "password": "temp-password",
                                              "role": "viewer"})
    assert status == 201 and body == {"name": "temp", "role": "viewer",
                                      "created_at": body["created_at"]}
    token = await api.login("temp", "temp-password")
    status, body, _ = await api.request("GET", "/api/v1/users", role="admin")
    names = {u["name"]: u for u in body["users"]}
    assert {"admin", "temp", "u-app"} <= names.keys()
    assert all(set(u) == {"name", "role", "created_at"} for u in body["users"])
    status, body, _ = await api.request("DELETE", "/api/v1/users/temp", role="admin")
    assert status == 200
    # The deleted user's token stops working at once; so does their password.
    is_problem(*await api.request("GET", "/api/v1/shards", token=token), 401)
    is_problem(*await api.request("POST", "/api/v1/auth/login",
                                  json={"username": "temp", "password": "temp-password"}), 401)
    status, problem, headers = await api.request("DELETE", "/api/v1/users/admin", role="admin")
    is_problem(status, problem, headers, 409)
    assert "last admin" in problem["detail"]


# ------------------------------------------------------------------ /v1/execute

async def test_execute_routes_like_the_wire_protocol(api, rt, pg_cluster, rest_items):
    ring = rt.proxy.catalog.ring
    for i in range(1, 9):
        status, body, _ = await api.request("POST", "/v1/execute", role="app", json={
            "shard_key": i, "query": f"INSERT INTO {rest_items} VALUES ($1, $2, $3, $4, $5)",
            "params": [i, f"it's {i}", "1.50", "2024-01-02T03:04:05+00:00", ["a", "b"]]})
        assert status == 200, body
        assert body["command"] == "INSERT 0 1" and body["row_count"] == 0
        assert body["shard"] == ring.owner(hashing.token(str(i).encode()))
    for s in pg_cluster.shards:
        ids = {int(x) for x in s.primary.psql(f"SELECT id FROM {rest_items} WHERE id > 0").split()}
        assert ids == {i for i in range(1, 9)
                       if ring.owner(hashing.token(str(i).encode())) == s.name}
    status, body, _ = await api.request("POST", "/v1/execute", role="app", json={
        "shard_key": "3", "query": f"SELECT * FROM {rest_items} WHERE id = $1", "params": [3]})
    assert status == 200, body
    assert [c["name"] for c in body["columns"]] == ["id", "name", "price", "at", "tags"]
    assert body["rows"] == [{"id": 3, "name": "it's 3", "price": "1.50",
                             "at": "2024-01-02T03:04:05+00:00", "tags": ["a", "b"]}]
    # A key with quotes and the eventual consistency path reach the same routing.
    status, body, _ = await api.request("POST", "/v1/execute", role="admin", json={
        "shard_key": "o'brien; --", "query": "SELECT 1 AS one", "consistency": "eventual"})
    assert status == 200 and body["rows"] == [{"one": 1}], body
    # Errors keep their SQLSTATE: syntax, missing key on a write, bad parameters.
    status, problem, headers = await api.request("POST", "/v1/execute", role="app",
                                                 json={"shard_key": 1, "query": "SELEC 1"})
    is_problem(status, problem, headers, 400)
    assert problem["sqlstate"] == "42601"
    status, problem, headers = await api.request("POST", "/v1/execute", role="app", json={
        # (a write the proxy cannot route whether the table is declared or not: a keyless
        # DELETE of a declared table now runs on every shard)
        "query": f"INSERT INTO {rest_items} (name) VALUES ('x')"})
    is_problem(status, problem, headers, 400)
    assert problem["sqlstate"] == "0A000"
    status, problem, headers = await api.request("POST", "/v1/execute", role="app", json={
        "shard_key": 1, "query": f"SELECT * FROM {rest_items} WHERE id = $1",
        "params": ["not-a-number"]})
    is_problem(status, problem, headers, 400)
    status, problem, headers = await api.request("POST", "/v1/execute", role="app", json={
        "shard_key": 1, "query": f"INSERT INTO {rest_items} (id) VALUES (1)"})
    is_problem(status, problem, headers, 409)
    assert problem["sqlstate"] == "23505"
    status, problem, headers = await api.request("POST", "/v1/execute", role="app", json={
        "shard_key": 1, "query": "BEGIN"})
    is_problem(status, problem, headers, 409)
    # The pool is still healthy after all that.
    status, body, _ = await api.request("POST", "/v1/execute", role="app", json={
        "shard_key": 1, "query": "SELECT count(*) AS n FROM rest_items WHERE id = 1"})
    assert status == 200 and body["rows"] == [{"n": 1}]


# ------------------------------------------------------------------ routers, CORS

async def test_routers(api, rt):
    status, body, _ = await api.request("GET", "/api/v1/routers", role="viewer")
    assert status == 200
    me = [r for r in body["routers"] if r["id"] == rt.node_id]
    assert me and me[0]["leader"] is True and me[0]["up_to_date"] is True
    assert me[0]["api"] == rt.api_url and me[0]["proxy"].endswith(f":{rt.proxy.port}")
    assert body["leader"] == rt.node_id


async def test_cors(api):
    status, body, headers = await api.request("GET", "/health",
                                              headers={"Origin": "https://ui.example"})
    assert headers["Access-Control-Allow-Origin"] == "https://ui.example"
    status, body, headers = await api.request("GET", "/health",
                                              headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in headers
    pre = {"Origin": "https://ui.example", "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "authorization,content-type"}
    status, _, headers = await api.request("OPTIONS", "/api/v1/shards", headers=pre)
    assert status == 204 and "POST" in headers["Access-Control-Allow-Methods"]
    assert "Authorization" in headers["Access-Control-Allow-Headers"]
    is_problem(*await api.request("OPTIONS", "/api/v1/shards",
                                  headers={**pre, "Origin": "https://evil.example"}), 403)


async def test_sidecar_over_tls(pg_cluster, tls_pair):
    cert, key = tls_pair
    cfg = runtime_config(pg_cluster, sidecar={"tls_cert": str(cert), "tls_key": str(key)})
    async with running_runtime(cfg) as rt, aiohttp.ClientSession() as session:
        assert rt.api_url.startswith("https://")
        ctx = ssl.create_default_context(cafile=str(cert))
        async with session.get(rt.api_url + "/health", ssl=ctx) as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "ok"


async def test_proxy_still_serves_clients(rt):
    conn = await asyncpg.connect(host="127.0.0.1", port=rt.proxy.port, user="app",
                                 password="app-secret", database="app")
    try:
        assert await conn.fetchval("SELECT 41 + 1 /* shard: shard1 */") == 42
    finally:
        await conn.close()
