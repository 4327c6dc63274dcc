"""The audit trail of a session of admin calls: one record per mutating call (actor, action,
target, result, time) in the store, in GET /api/v1/audit and in the JSON log; no secrets."""

from __future__ import annotations

import io
import json
import logging

import aiohttp
from pythonjsonlogger.json import JsonFormatter

from tests.fixtures.runtime import ADMIN_PASSWORD, Api, running_runtime, runtime_config

SECRET_PASSWORD = "very-secret-pw-123"


async def test_audit_trail_of_an_admin_session(pg_cluster):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    tokens = []
    for s in pg_cluster.shards:
        s.primary.psql("DROP TABLE IF EXISTS audit_t; CREATE TABLE audit_t (id int)")
    try:
        async with running_runtime(runtime_config(pg_cluster)) as rt, \
                aiohttp.ClientSession() as session:
            api = Api(rt.api_url, session)
            api.tokens["admin"] = await api.login("admin", ADMIN_PASSWORD)
            tokens.append(api.tokens["admin"])
            calls = [
                ("POST", "/api/v1/users", {"name": "bob", "password": SECRET_PASSWORD,
                                           "role": "viewer"}, 201),
                ("PUT", "/api/v1/tables/audit_t", {"shard_key": "id"}, 201),
                ("DELETE", "/api/v1/tables/audit_t", None, 200),
                ("DELETE", "/api/v1/tables/audit_t", None, 404),
                ("DELETE", "/api/v1/shards/shard0", None, 409),
            ]
            for method, path, body, expected in calls:
                status, got, _ = await api.request(method, path, role="admin", json=body)
                assert status == expected, got
            bob = await api.login("bob", SECRET_PASSWORD)
            tokens.append(bob)
            status, _, _ = await api.request("PUT", "/api/v1/tables/nope", token=bob,
                                             json={"shard_key": "id"})
            assert status == 403
            status, _, _ = await api.request("POST", "/api/v1/auth/login",
                                             json={"username": "bob", "password": "wrong-pw"})
            assert status == 401
            status, _, _ = await api.request("DELETE", "/api/v1/users/bob", role="admin")
            assert status == 200
            # Reads are not audited.
            await api.request("GET", "/api/v1/shards", role="admin")

            status, body, _ = await api.request("GET", "/api/v1/audit?limit=50", role="admin")
            assert status == 200
            records = list(reversed(body["records"]))  # oldest first
            got = [(r["actor"], r["action"], r["target"], r["result"], r["status"])
                   for r in records]
            assert got == [
                ("admin", "auth.login", "admin", "ok", 200),
                ("admin", "user.add", "bob", "ok", 201),
                ("admin", "table.put", "audit_t", "ok", 201),
                ("admin", "table.remove", "audit_t", "ok", 200),
                ("admin", "table.remove", "audit_t", "error", 404),
                ("admin", "shard.remove", "shard0", "error", 409),
                ("bob", "auth.login", "bob", "ok", 200),
                ("bob", "table.put", "nope", "denied", 403),
                ("bob", "auth.login", "bob", "denied", 401),
                ("admin", "user.remove", "bob", "ok", 200),
            ]
            assert all(r["time"].endswith("Z") and r["node"] == rt.node_id for r in records)
            assert records[0]["role"] is None and records[1]["role"] == "admin"
            assert "catalog_version" in records[2]["detail"]
            assert "owns 256 vnodes" in records[5]["detail"]
            # Filters, and the store holds the same records.
            status, body, _ = await api.request("GET", "/api/v1/audit?actor=bob", role="admin")
            assert [r["action"] for r in body["records"]] == ["auth.login", "table.put",
                                                               "auth.login"]
            status, body, _ = await api.request("GET", "/api/v1/audit?action=user.add",
                                                role="admin")
            assert len(body["records"]) == 1
            status, _, _ = await api.request("GET", "/api/v1/audit?limit=0", role="admin")
            assert status == 400
            stored = [json.loads(kv.value) for kv in await rt.store.list("audit")]
            assert [r["seq"] for r in stored] == [r["seq"] for r in records]
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    audit_lines = [line for line in lines if line["name"] == "pgshard.audit"]
    assert [(a["audit"]["action"], a["audit"]["result"]) for a in audit_lines] == \
        [(r[1], r[3]) for r in got]
    text = stream.getvalue() + json.dumps(stored)
    for secret in (SECRET_PASSWORD, ADMIN_PASSWORD, "wrong-pw", *tokens):
        assert secret not in text
