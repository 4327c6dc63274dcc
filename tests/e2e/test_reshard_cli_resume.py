"""Resharding through the REST API and the `pgshard` CLI against a real `pgshard serve`
process: refusals (422, 404, 409, 403), a split whose manager is killed with SIGKILL in the
middle and that a restarted manager finishes, then a merge with `--wait`, jobs list/show and
a refused cancel, each job audited; then a split cancelled during its copy leaves nothing."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request

import mmh3
import psycopg
import pytest

from pgshard.cluster import free_port
from pgshard.ring.catalog import Catalog
from tests.fixtures.clusters import temp_cluster
from tests.fixtures.proxy import PGSHARD, ProxyProcess
from tests.fixtures.runtime import ADMIN_PASSWORD, runtime_config

pytestmark = pytest.mark.integration

ROWS = 100_000


def token(key) -> int:
    return mmh3.hash(str(key).encode(), seed=0, signed=False)


class Rest:
    def __init__(self, url: str):
        self.url = url
        self.token = None

    def call(self, method: str, path: str, body=None, token: str | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        tok = token or self.token
        if tok:
            req.add_header("Authorization", f"Bearer {tok}")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"null"), resp.headers
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null"), exc.headers

    def login(self, user: str, password: str) -> str:
        status, body, _ = self.call("POST", "/api/v1/auth/login",
                                    {"username": user, "password": password})
        assert status == 200, body
        return body["token"]


def wait_up(rest: Rest, proc: ProxyProcess) -> None:
    for _ in range(200):
        try:
            if rest.call("GET", "/health")[0] == 200:
                return
        except OSError:
            pass
        assert proc.alive(), proc.log()
        time.sleep(0.1)
    raise AssertionError(proc.log())


def cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PGSHARD, *args], env=env, capture_output=True, text=True, timeout=120)


def placement(cluster, catalog: Catalog) -> dict:
    """Rows per shard, checking each is on its owner and exists once."""
    seen, per = set(), {}
    for s in cluster.describe()["shards"]:
        if s["name"] not in catalog.shard_names():
            continue
        with psycopg.connect(s["primary"]) as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM acct")]
        for i in ids:
            assert catalog.ring.owner(token(i)) == s["name"], f"{i} misplaced on {s['name']}"
            assert i not in seen
            seen.add(i)
        per[s["name"]] = len(ids)
    assert len(seen) == ROWS
    return per


def no_slots(cluster) -> None:
    for s in cluster.describe()["shards"]:
        with psycopg.connect(s["primary"]) as conn:
            assert conn.execute("SELECT slot_name FROM pg_replication_slots").fetchall() == []
            assert conn.execute("SELECT pubname FROM pg_publication").fetchall() == []
            names = conn.execute("SELECT tgname FROM pg_trigger WHERE tgname LIKE "
                                 "'pgshard_guard_%'").fetchall()
            assert names == []


def test_rest_cli_and_resume_after_sigkill(tmp_path):
    with temp_cluster(shards=3, replicas=0) as cluster:
        desc = cluster.describe()["shards"]
        store = f"sqlite:///{tmp_path / 'meta.db'}"
        cfg = runtime_config(cluster, store=store, proxy={"port": free_port()},
                             sidecar={"port": free_port()},
                             shards=[{"name": s["name"], "primary": s["primary"], "replicas": []}
                                     for s in desc[:2]],
                             tables=[{"name": "acct", "shard_key": "id"}])
        for s in desc[:2]:
            with psycopg.connect(s["primary"], autocommit=True) as conn:
                conn.execute("CREATE TABLE acct (id bigint PRIMARY KEY, v text NOT NULL)")
        (tmp_path / "p").mkdir()
        proc = ProxyProcess(cfg, workdir=str(tmp_path / "p")).start()
        try:
            rest = Rest(f"http://127.0.0.1:{proc.api_port}")
            wait_up(rest, proc)
            rest.token = rest.login("admin", ADMIN_PASSWORD)
            catalog = Catalog.from_json(rest.call("GET", "/api/v1/catalog")[1])
            for s in desc[:2]:
                spans = ",".join(f"({r.lo},{r.hi}]" for r in catalog.ring.ranges(s["name"]))
                with psycopg.connect(s["primary"], autocommit=True) as conn:
                    conn.execute("INSERT INTO acct SELECT g, 'v' || g FROM generate_series(1, %s) g "
                                 "WHERE pgshard.hash(g::text) <@ %s::int8multirange",
                                 (ROWS, "{" + spans + "}"))
                    conn.execute("ANALYZE acct")
            before = placement(cluster, catalog)

            # Refusals.
            assert rest.call("POST", "/api/v1/jobs", {"kind": "split"})[0] == 422
            assert rest.call("POST", "/api/v1/jobs", {"kind": "split", "source": "shard0",
                                                      "target": "x", "extra": 1})[0] == 422
            status, body, _ = rest.call("POST", "/api/v1/jobs", {
                "kind": "split", "source": "nope", "target": "shard1"})
            assert status == 404 and "nope" in body["detail"]
            status, body, _ = rest.call("POST", "/api/v1/jobs", {
                "kind": "split", "source": "shard0", "target": "shard1"})
            assert status == 409 and "owns vnodes" in body["detail"]
            assert rest.call("GET", "/api/v1/jobs/doesnotexist")[0] == 404
            assert rest.call("POST", "/api/v1/users", {"name": "vi", "password": "viewer-pw-1",
                                                       "role": "viewer"})[0] == 201
            viewer = rest.login("vi", "viewer-pw-1")
            assert rest.call("POST", "/api/v1/jobs", {"kind": "rebalance", "target": "shard1"},
                             token=viewer)[0] == 403
            assert rest.call("GET", "/api/v1/jobs", token=viewer)[0] == 200

            env = {**os.environ, "PGSHARD_API": rest.url, "PGSHARD_TOKEN": rest.token,
                   "PGSHARD_CONFIG_DIR": str(tmp_path / "cfg")}
            r = cli(env, "shards", "add", "shard2", "--primary", desc[2]["primary"])
            assert r.returncode == 0, r.stderr
            r = cli(env, "reshard", "split", "shard0", "--into", "shard2", "--json")
            assert r.returncode == 0, r.stderr
            job_id = json.loads(r.stdout)["id"]

            # SIGKILL the manager in the middle of the job, then start it again.
            seen = None
            for _ in range(3000):
                job = rest.call("GET", f"/api/v1/jobs/{job_id}")[1]
                if job["phase"] in ("copy", "catchup", "fence", "verify"):
                    seen = job
                    break
                assert job["state"] in ("pending", "running"), job
                time.sleep(0.005)
            assert seen is not None, job
            proc.proc.kill()
            proc.proc.wait()
            proc.start()
            wait_up(rest, proc)
            rest.token = rest.login("admin", ADMIN_PASSWORD)
            env["PGSHARD_TOKEN"] = rest.token
            r = cli(env, "jobs", "wait", job_id, "--interval", "0.2")
            assert r.returncode == 0, (seen, r.stdout, r.stderr)
            assert "done" in r.stdout and "rows" in r.stderr
            catalog = Catalog.from_json(rest.call("GET", "/api/v1/catalog")[1])
            after = placement(cluster, catalog)
            assert after["shard2"] > 0 and after["shard0"] + after["shard2"] == before["shard0"]
            assert after["shard1"] == before["shard1"]
            no_slots(cluster)

            r = cli(env, "reshard", "merge", "shard2", "--into", "shard0", "--wait")
            assert r.returncode == 0, r.stderr
            r = cli(env, "jobs", "list", "--json")
            jobs = json.loads(r.stdout)["jobs"]
            assert [j["state"] for j in jobs] == ["done", "done"]
            assert [j["kind"] for j in jobs] == ["split", "merge"]
            assert all(j["write_pause_ms"] is not None for j in jobs)
            r = cli(env, "jobs", "show", job_id)
            assert r.returncode == 0 and job_id in r.stdout
            r = cli(env, "jobs", "cancel", job_id)
            assert r.returncode == 7 and "already done" in r.stderr
            catalog = Catalog.from_json(rest.call("GET", "/api/v1/catalog")[1])
            assert "shard2" not in catalog.shard_names()
            assert placement(cluster, catalog) == before
            no_slots(cluster)
            status, body, _ = rest.call("GET", "/api/v1/audit?action=job.create")
            assert status == 200 and len(body["records"]) >= 2

            # Cancel during the copy: rolled back, nothing left behind, the ring unchanged.
            r = cli(env, "shards", "add", "shard2", "--primary", desc[2]["primary"])
            assert r.returncode == 0, r.stderr
            ring_before = Catalog.from_json(rest.call("GET", "/api/v1/catalog")[1]).ring
            r = cli(env, "reshard", "split", "shard1", "--into", "shard2", "--json")
            job_id = json.loads(r.stdout)["id"]
            for _ in range(3000):
                job = rest.call("GET", f"/api/v1/jobs/{job_id}")[1]
                if job["phase"] == "copy" or job["state"] != "pending" and job["phase"] is None:
                    break
                time.sleep(0.002)
            assert job["phase"] == "copy", job
            r = cli(env, "jobs", "cancel", job_id)
            assert r.returncode == 0, r.stderr
            r = cli(env, "jobs", "wait", job_id, "--interval", "0.2")
            assert r.returncode == 1 and "cancelled" in r.stdout, r.stdout
            catalog = Catalog.from_json(rest.call("GET", "/api/v1/catalog")[1])
            assert catalog.ring == ring_before and not catalog.fences and not catalog.filter_reads
            with psycopg.connect(desc[2]["primary"]) as conn:
                left = conn.execute("SELECT count(*) FROM acct").fetchone()[0] if conn.execute(
                    "SELECT to_regclass('acct')").fetchone()[0] else 0
            assert left == 0
            no_slots(cluster)
            assert placement(cluster, catalog) == {**before, "shard2": 0}
        finally:
            proc.stop()
