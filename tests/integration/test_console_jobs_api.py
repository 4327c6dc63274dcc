"""The console's resharding endpoints against a real runtime over the session's cluster and a
spare PostgreSQL: GET /api/v1/ring/plan (a dry run by the job's own planner: ranges, token
share, rows estimated from the source's statistics; refusals as the job would refuse; nothing
written) and GET /api/v1/ring/moves (the ranges an unfinished job moves, none once it is
done); the overview's per-shard HA view."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import asyncpg
import pytest

from pgshard.ring.ring import MAX_TOKEN
from tests.fixtures.clusters import temp_cluster
from tests.fixtures.runtime import ADMIN_PASSWORD, Api, running_runtime, runtime_config

TABLE = "console_job_items"
ROWS = 400


@pytest.fixture(scope="module")
def spare():
    with temp_cluster(shards=1, replicas=0, shard_prefix="spare") as cluster:
        yield cluster


@pytest.fixture(scope="module")
async def rt(pg_cluster, spare):   # spare outlives the runtime: its shard is never dead here
    for s in pg_cluster.shards:
        s.primary.psql(f"DROP TABLE IF EXISTS {TABLE}; "
                       f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, note text)")
    async with running_runtime(runtime_config(pg_cluster)) as runtime:
        yield runtime


@pytest.fixture(scope="module")
async def api(rt, spare):
    async with aiohttp.ClientSession() as session:
        api = Api(rt.api_url, session)
        api.tokens["admin"] = await api.login("admin", ADMIN_PASSWORD)
        for role in ("viewer", "app"):
            status, body, _ = await api.request(
                "POST", "/api/v1/users", role="admin",
                json={"name": f"j-{role}", "password": f"{role}-password", "role": role})
            assert status == 201, body
            api.tokens[role] = await api.login(f"j-{role}", f"{role}-password")
        status, body, _ = await api.request("PUT", f"/api/v1/tables/{TABLE}", role="admin",
                                            json={"shard_key": "id"})
        assert status in (200, 201), body

        async def declared():   # the proxy follows the catalog within a second
            return any(t == TABLE for t, _ in rt.proxy.catalog.tables)

        await wait_for(declared, what=f"the proxy's catalog to declare {TABLE}")
        conn = await asyncpg.connect(f"postgresql://app:app-secret@127.0.0.1:{rt.proxy.port}/app")
        try:
            await conn.execute(f"INSERT INTO {TABLE} (id, note) VALUES "
                               + ", ".join(f"({k}, 'r')" for k in range(ROWS)))
        finally:
            await conn.close()
        status, body, _ = await api.request(
            "POST", "/api/v1/shards", role="admin",
            json={"name": "spare", "primary": spare.describe()["shards"][0]["primary"]})
        assert status == 201, body
        yield api


async def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await predicate()
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}: {last!r}")


def on_shard0(pg_cluster) -> int:
    return int(pg_cluster.shards[0].primary.psql(f"SELECT count(*) FROM {TABLE}").strip())


async def test_plan_says_what_a_split_would_move_and_writes_nothing(api, rt, pg_cluster):
    status, cat, _ = await api.request("GET", "/api/v1/catalog", role="viewer")
    assert status == 200
    rows = on_shard0(pg_cluster)

    async def planned():
        status, body, _ = await api.request(
            "GET", "/api/v1/ring/plan?kind=split&source=shard0&target=spare", role="viewer")
        assert status == 200, body
        # n_live_tup follows the inserts once the server has flushed its statistics.
        return body if body["rows_by_source"]["shard0"]["live_rows"] == rows else None

    body = await wait_for(planned, what="shard0's live row count in pg_stat_user_tables")
    owned = sum(1 for _, s in cat["ring"] if s == "shard0")
    assert body["sources"] == ["shard0"] and body["target"] == "spare"
    assert body["ranges"] == len(body["moves"]) >= owned
    moves = body["moves"]
    assert all(m["src"] == "shard0" and m["dst"] == "spare" for m in moves)
    assert all(-1 <= m["lo"] < m["hi"] <= MAX_TOKEN for m in moves)
    covered = sum(m["hi"] - m["lo"] for m in moves) / (MAX_TOKEN + 1)
    assert body["share"] == pytest.approx(covered, abs=1e-6)
    # A split moves half of each of the source's ranges.
    own = body["source_ownership"]["shard0"]
    assert body["share"] == pytest.approx(own / 2, abs=1e-4)
    assert body["rows_estimate"] == round(rows * body["share"] / own)
    assert body["tables"] == [TABLE] and body["busy"] is None
    # Nothing was written: no job, the same catalog.
    status, jobs, _ = await api.request("GET", "/api/v1/jobs", role="viewer")
    assert jobs == {"jobs": []}
    status, again, _ = await api.request("GET", "/api/v1/catalog", role="viewer")
    assert again["version"] == cat["version"]


@pytest.mark.parametrize("query, status, says", [
    ("kind=split&source=shard0&target=shard1", 409, 'shard "shard1" already owns vnodes'),
    ("kind=merge&source=shard0&target=spare", 409, 'shard "spare" owns no vnodes'),
    ("kind=split&source=nope&target=spare", 404, 'shard "nope" does not exist'),
    ("kind=rebalance&source=shard0&target=spare", 422, "a rebalance names only its target"),
    ("kind=split&target=spare", 422, "a split needs a source shard"),
    ("kind=explode&target=spare", 400, "kind must be one of split, merge, rebalance"),
    ("kind=split&source=shard0", 400, "give the target shard"),
])
async def test_plan_refuses_what_the_job_would_refuse(api, query, status, says):
    got, body, headers = await api.request("GET", f"/api/v1/ring/plan?{query}", role="viewer")
    assert got == status, body
    assert headers["Content-Type"].startswith("application/problem+json")
    assert says in body["detail"]


async def test_plan_and_moves_need_catalog_read(api):
    for path in ("/api/v1/ring/plan?kind=rebalance&target=spare", "/api/v1/ring/moves"):
        status, _, _ = await api.request("GET", path)
        assert status == 401
        status, _, _ = await api.request("GET", path, role="app")
        assert status == 403
    status, doc, _ = await api.request("GET", "/api/v1/openapi.json")
    assert {"/api/v1/ring/plan", "/api/v1/ring/moves"} <= set(doc["paths"])


async def test_moves_lists_a_running_jobs_ranges_until_it_is_done(api, rt, pg_cluster):
    status, preview, _ = await api.request(
        "GET", "/api/v1/ring/plan?kind=split&source=shard0&target=spare", role="viewer")
    assert status == 200, preview
    # A lock on the source table holds the job at its copy, so it is seen running.
    holder = await asyncpg.connect(pg_cluster.shards[0].primary.dsn)
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE")
        status, job, _ = await api.request(
            "POST", "/api/v1/jobs", role="admin",
            json={"kind": "split", "source": "shard0", "target": "spare"})
        assert status == 202, job

        async def listed():
            status, body, _ = await api.request("GET", "/api/v1/ring/moves", role="viewer")
            assert status == 200, body
            return body["jobs"] or None

        (moving,) = await wait_for(listed, what="the job in /api/v1/ring/moves")
        assert (moving["id"], moving["kind"], moving["source"], moving["target"]) == \
            (job["id"], "split", "shard0", "spare")
        assert moving["state"] in ("pending", "running")
        # The same ranges the dry run announced.
        assert moving["moves"] == preview["moves"] and moving["share"] == preview["share"]
        status, busy, _ = await api.request(
            "GET", "/api/v1/ring/plan?kind=rebalance&target=spare", role="viewer")
        # A second request on the same shards: the dry run names the job in the way.
        assert status == 409 or busy["busy"]["job"] == job["id"], busy
        await tx.rollback()
    finally:
        await holder.close()

    async def done():
        status, body, _ = await api.request("GET", f"/api/v1/jobs/{job['id']}", role="viewer")
        assert body["state"] not in ("failed", "cancelled"), body
        return body if body["state"] == "done" else None

    await wait_for(done, timeout=60, what="the split to finish")
    status, body, _ = await api.request("GET", "/api/v1/ring/moves", role="viewer")
    assert body == {"jobs": []}


async def test_overview_carries_each_shards_ha_view(api, pg_cluster):
    status, doc, _ = await api.request("GET", "/api/v1/overview", role="viewer")
    assert status == 200, doc
    by_name = {s["name"]: s for s in doc["shards"]}
    for shard in pg_cluster.describe()["shards"]:
        ha = by_name[shard["name"]]["ha"]
        roles = [(s["role"], s["dsn"]) for s in ha["servers"]]
        assert roles[0][0] == "primary" and roles[0][1] in shard["primary"]
        assert [r for r, _ in roles[1:]] == ["replica"] * len(shard["replicas"])
        assert all(s["sync"] is False for s in ha["servers"][1:])   # asynchronous cluster
        assert ha["sync_quorum"] == 0
        # The overview's own servers and the HA view name the same addresses.
        assert [s["address"] for s in by_name[shard["name"]]["servers"]] == \
            [dsn for _, dsn in roles]
