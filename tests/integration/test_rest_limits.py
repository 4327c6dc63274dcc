"""REST limits against a real sidecar: pathological JSON on every JSON endpoint is a 400
problem (no 500, no logged traceback, the server keeps answering), and logins are throttled
per user (lockout with back-off) and per client address (429 + Retry-After), audited.

Client addresses: Linux routes all of 127.0.0.0/8 to loopback, so each scenario binds its
own source address (127.0.0.N) and the per-address budgets do not mix."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

import aiohttp
import pytest

from pgshard.control.json_body import MAX_DEPTH
from pgshard.control.routes import ROUTES
from tests.fixtures.runtime import ADMIN_PASSWORD, Api, running_runtime, runtime_config

PROBLEM = "application/problem+json"
MAX_FAILURES = 3
LOCKOUT = 1.0
RATE_PER_IP = 20
TIMEOUT = aiohttp.ClientTimeout(total=30)


@pytest.fixture(scope="module")
async def rt(pg_cluster):
    cfg = runtime_config(pg_cluster, sidecar={
        "login_max_failures": MAX_FAILURES, "login_lockout": LOCKOUT,
        "login_lockout_max": 4 * LOCKOUT, "login_rate_per_ip": RATE_PER_IP})
    async with running_runtime(cfg) as runtime:
        yield runtime


@asynccontextmanager
async def client(rt, source: str = "127.0.0.1"):
    """An Api whose connections come from `source`."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=TIMEOUT) as session:
        yield Api(rt.api_url, session)


@pytest.fixture(scope="module")
async def admin(rt):
    async with client(rt) as api:
        api.tokens["admin"] = await api.login("admin", ADMIN_PASSWORD)
        yield api


async def add_user(admin: Api, name: str, password: str) -> None:
    status, body, _ = await admin.request("POST", "/api/v1/users", role="admin",
                                          json={"name": name, "password": password,
                                                "role": "viewer"})
    assert status == 201, body


def login(api: Api, user: str, password: str):
    return api.request("POST", "/api/v1/auth/login",
                       json={"username": user, "password": password})


def assert_problem(status, body, headers, expected: int) -> None:
    assert status == expected, body
    assert headers["Content-Type"].startswith(PROBLEM)
    assert body["status"] == expected and body["detail"]


def assert_throttled(result) -> int:
    """A 429 problem with a Retry-After in whole seconds; returns it."""
    status, body, headers = result
    assert_problem(status, body, headers, 429)
    retry_after = int(headers["Retry-After"])
    assert retry_after >= 1 and body["retry_after_seconds"] == retry_after
    return retry_after


# ------------------------------------------------------------------ pathological JSON

JSON_ROUTES = [r for r in ROUTES if r.schema is not None]
SAMPLE_PATH = {"/api/v1/shards/{name}": "/api/v1/shards/shard0",
               "/api/v1/tables/{name}": "/api/v1/tables/deep_json_t"}


def deep_bodies(depth: int) -> dict[str, bytes]:
    arrays = b"[" * depth + b"]" * depth
    objects = b'{"a":' * depth + b"1" + b"}" * depth
    return {"arrays": arrays, "objects": objects,
            "in-field": b'{"username": ' + arrays + b', "shard_key": ' + objects + b"}",
            "unclosed": b"[" * depth}


def test_every_json_route_is_covered():
    methods = {(r.method, r.path) for r in JSON_ROUTES}
    assert {("POST", "/api/v1/auth/login"), ("PUT", "/api/v1/tables/{name}"),
            ("POST", "/api/v1/shards"), ("PATCH", "/api/v1/shards/{name}"),
            ("POST", "/v1/execute"), ("POST", "/api/v1/users")} <= methods


@pytest.mark.parametrize("depth", [10_000, 100_000])
async def test_deep_json_is_a_400_on_every_json_endpoint(rt, admin, depth, caplog):
    caplog.set_level(logging.WARNING)
    seen = 0
    for route in JSON_ROUTES:
        path = SAMPLE_PATH.get(route.path, route.path)
        for shape, body in deep_bodies(depth).items():
            status, problem, headers = await admin.request(
                route.method, path, role="admin", data=body,
                headers={"Content-Type": "application/json"})
            where = f"{route.method} {path} {shape}"
            assert status == 400, (where, problem)
            assert headers["Content-Type"].startswith(PROBLEM), where
            assert problem["status"] == 400 and problem["title"] == "Bad Request", where
            if shape != "unclosed":
                assert f"deeper than {MAX_DEPTH} levels" in problem["detail"], (where, problem)
            seen += 1
        status, health, _ = await admin.request("GET", "/health")
        assert status == 200 and health["status"] == "ok"
    assert seen == 4 * len(JSON_ROUTES)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not errors, [r.getMessage() for r in errors]
    # Nothing was changed by the refused bodies, and the API still works.
    status, _, _ = await admin.request("GET", "/api/v1/tables/deep_json_t", role="admin")
    assert status == 404
    status, body, _ = await admin.request("POST", "/v1/execute", role="admin",
                                          json={"query": "SELECT 1 AS one"})
    assert status == 200, body


async def test_json_just_under_the_limit_reaches_validation(admin):
    # 64 levels are parsed; the schema then refuses the field, naming it.
    body = b'{"shard_key": ' + b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1) + b"}"
    status, problem, headers = await admin.request(
        "PUT", "/api/v1/tables/deep_json_t", role="admin", data=body,
        headers={"Content-Type": "application/json"})
    assert_problem(status, problem, headers, 400)
    assert problem["field"] == "$.shard_key" and "expected string" in problem["detail"]


# ------------------------------------------------------------------ login throttling

async def test_user_lockout_backs_off_and_ends(rt, admin):
    await add_user(admin, "victim", "victim-password")
    async with client(rt, "127.0.0.2") as a, client(rt, "127.0.0.3") as b:
        for _ in range(MAX_FAILURES):
            assert_problem(*await login(a, "victim", "wrong-guess"), 401)
        # Locked: the right password is refused too, from this and from any other address.
        assert assert_throttled(await login(a, "victim", "victim-password")) == 1
        status, body, _ = await login(b, "victim", "victim-password")
        assert status == 429 and "locked" in body["detail"]
        # Another user is not affected by this one's lockout.
        await add_user(admin, "bystander", "bystander-password")
        assert (await login(a, "bystander", "bystander-password"))[0] == 200

        await asyncio.sleep(LOCKOUT + 0.2)
        # After the window one guess is allowed; failing it locks twice as long.
        assert_problem(*await login(a, "victim", "wrong-again"), 401)
        assert assert_throttled(await login(b, "victim", "victim-password")) == 2
        await asyncio.sleep(LOCKOUT + 0.2)
        assert (await login(b, "victim", "victim-password"))[0] == 429   # still locked
        await asyncio.sleep(LOCKOUT)
        status, body, _ = await login(b, "victim", "victim-password")
        assert status == 200 and body["token"]
        # The success ended the streak: a full budget of failures again before a lockout.
        for _ in range(MAX_FAILURES - 1):
            assert_problem(*await login(a, "victim", "wrong-guess"), 401)
        assert (await login(a, "victim", "victim-password"))[0] == 200

    status, body, _ = await admin.request("GET", "/api/v1/audit?action=auth.lockout&limit=50",
                                          role="admin")
    assert status == 200
    lockouts = [r for r in body["records"] if r["target"] == "victim"]
    assert len(lockouts) == 2
    assert all(r["result"] == "locked" and r["status"] == 429 and r["remote"] == "127.0.0.2"
               for r in lockouts)
    assert [r["detail"] for r in reversed(lockouts)] == [
        f"failures={MAX_FAILURES}; seconds={LOCKOUT:g}",
        f"failures={MAX_FAILURES + 1}; seconds={2 * LOCKOUT:g}"]
    status, body, _ = await admin.request("GET", "/api/v1/audit?action=auth.login&limit=200",
                                          role="admin")
    refused = [r for r in body["records"] if r["target"] == "victim" and r["status"] == 429]
    assert len(refused) == 4 and all(r["result"] == "denied" for r in refused)


async def test_two_hundred_wrong_passwords_are_all_answered_and_mostly_refused(rt, admin):
    await add_user(admin, "target", "target-password")
    async with client(rt, "127.0.0.4") as a:
        statuses = []
        for i in range(200):
            status, body, headers = await login(a, "target", f"guess-{i}")
            statuses.append(status)
            if status == 429:
                assert int(headers["Retry-After"]) >= 1
    assert statuses[:MAX_FAILURES] == [401] * MAX_FAILURES
    assert statuses[MAX_FAILURES:] == [429] * (200 - MAX_FAILURES)


async def test_parallel_guesses_do_not_slip_past_the_lockout(rt, admin):
    await add_user(admin, "parallel", "parallel-password")
    async with client(rt, "127.0.0.5") as a:
        results = await asyncio.gather(*(login(a, "parallel", f"guess-{i}") for i in range(20)))
    statuses = sorted(status for status, _, _ in results)
    assert statuses.count(401) <= MAX_FAILURES and statuses.count(401) >= 1
    assert statuses.count(429) == 20 - statuses.count(401)


async def test_address_budget_blocks_a_sprayer_but_not_other_clients(rt, admin):
    async with client(rt, "127.0.0.6") as sprayer, client(rt, "127.0.0.7") as other:
        # One guess each at many accounts: no user lockout, only the address budget.
        for i in range(RATE_PER_IP):
            assert_problem(*await login(sprayer, f"spray-{i}", "Summer2024!"), 401)
        retry_after = assert_throttled(await login(sprayer, "admin", ADMIN_PASSWORD))
        assert retry_after <= 60 // RATE_PER_IP   # one failure's worth of refill, less time spent
        assert_throttled(await login(sprayer, "spray-x", "Summer2024!"))
        # The admin's own login from another address is not blocked by the sprayer.
        status, body, _ = await login(other, "admin", ADMIN_PASSWORD)
        assert status == 200 and body["role"] == "admin"
        await asyncio.sleep(retry_after + 0.2)
        status, body, _ = await login(sprayer, "admin", ADMIN_PASSWORD)
        assert status == 200, body
    status, health, _ = await admin.request("GET", "/health")
    assert status == 200
