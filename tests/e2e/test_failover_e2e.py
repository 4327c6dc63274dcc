"""High availability end to end, on durable clusters with synchronous replication behind an
in-process pgshard (router + manager): a SIGKILLed primary is replaced by its replica while
asyncpg clients write to every shard, with a ledger of acknowledged writes; a switchover
under write load fails no statement; a manager that only lost sight of a primary (its
replica still streams from it) promotes nothing."""

from __future__ import annotations

import asyncio
import itertools
import time

import aiohttp
import asyncpg
import pytest

from pgshard.cluster import LocalCluster, free_port
from pgshard.control.membership import list_routers
from tests.fixtures.clusters import temp_cluster
from tests.fixtures.proxy import ProxyProcess
from tests.fixtures.runtime import ADMIN_PASSWORD, Api, running_runtime, runtime_config

pytestmark = pytest.mark.integration

DDL = "CREATE TABLE ledger (id bigint PRIMARY KEY, writer int NOT NULL)"
WRITERS = 6
APP = {"name": "app", "password": "app-secret", "pool_size": 6}


def config(cluster: LocalCluster, **ha) -> dict:
    return runtime_config(cluster, users=[APP], tables=[{"name": "ledger", "shard_key": "id"}],
                          ha={"local_cluster": str(cluster.base_dir), **ha},
                          proxy={"query_wait_timeout": 30})


def client_dsn(runtime) -> str:
    return f"postgresql://app:app-secret@127.0.0.1:{runtime.proxy.port}/app"


async def until(predicate, timeout: float, what, interval: float = 0.1):
    """Poll predicate() until it is true; `what` (a string or a callable giving one, for
    state worth showing) names it in the failure."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, \
            f"timed out waiting for {what() if callable(what) else what}"
        await asyncio.sleep(interval)


class Writers:
    """Clients inserting fresh keys through the proxy; the ledger keeps what was acknowledged,
    per shard, with every error and the time of each shard's writes."""

    def __init__(self, runtime, dsn: str):
        self.runtime = runtime
        self.dsn = dsn
        self.acked: dict[str, list[int]] = {}
        self.errors: dict[str, list[str]] = {}
        self.success_times: dict[str, list[float]] = {}
        self.latencies: list[float] = []
        self.stop = asyncio.Event()
        self._keys = itertools.count(1)
        self.tasks: list[asyncio.Task] = []

    def shard_of(self, key: int) -> str:
        return self.runtime.proxy.catalog.shard_for_key(str(key).encode()).name

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._write(w)) for w in range(WRITERS)]

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)

    async def _write(self, w: int) -> None:
        conn = None
        while not self.stop.is_set():
            key = next(self._keys)
            shard = self.shard_of(key)
            try:
                if conn is None or conn.is_closed():
                    conn = await asyncpg.connect(self.dsn, timeout=20)
                t0 = time.monotonic()
                await asyncio.wait_for(conn.execute("INSERT INTO ledger VALUES ($1, $2)",
                                                    key, w), 30)
                done = time.monotonic()
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError,
                    TimeoutError) as exc:
                self.errors.setdefault(shard, []).append(
                    f"{getattr(exc, 'sqlstate', None)} {type(exc).__name__}: {exc}")
                if conn is not None and not conn.is_closed():
                    conn.terminate()
                conn = None
                await asyncio.sleep(0.05)
                continue
            self.latencies.append(done - t0)
            self.acked.setdefault(shard, []).append(key)
            self.success_times.setdefault(shard, []).append(done)
        if conn is not None:
            await conn.close()

    def summary(self) -> str:
        return (f"acked {({s: len(k) for s, k in self.acked.items()})}, errors "
                f"{({s: (len(e), e[-1]) for s, e in self.errors.items()})}")

    def successes_after(self, shard: str, t: float) -> int:
        return sum(1 for s in self.success_times.get(shard, []) if s > t)


def rows_on(node, keys: list[int]) -> set[int]:
    if not keys:
        return set()
    out = node.psql("SELECT id FROM ledger WHERE id = ANY('{" + ",".join(map(str, keys))
                    + "}'::bigint[])")
    return {int(x) for x in out.split()}


async def api_for(runtime, session: aiohttp.ClientSession) -> Api:
    api = Api(runtime.api_url, session)
    api.tokens["admin"] = await api.login("admin", ADMIN_PASSWORD)
    return api


async def sync_recorded(runtime, names) -> None:
    # The manager records the synchronous standbys it reads from each primary.
    await until(lambda: all(runtime.proxy.catalog.shard(n).sync_quorum == 1
                            and runtime.proxy.catalog.shard(n).sync for n in names),
                20, "the synchronous standbys in the catalog")


async def test_sigkill_primary_under_write_load_loses_no_acknowledged_write():
    with temp_cluster(shards=2, replicas=1, sync_replication=True) as cluster:
        for s in cluster.shards:
            s.primary.psql(DDL)
        old, replica = cluster.shards[0].primary, cluster.shards[0].replicas[0]
        async with running_runtime(config(cluster)) as rt, aiohttp.ClientSession() as http:
            api = await api_for(rt, http)
            await until(lambda: rt.plane.membership.is_leader, 10, "leadership")
            await sync_recorded(rt, ["shard0", "shard1"])
            writers = Writers(rt, client_dsn(rt))
            writers.start()
            await until(lambda: all(len(writers.acked.get(s, [])) > 50
                                    for s in ("shard0", "shard1")), 60,
                        lambda: f"writes on both shards: {writers.summary()}")
            await asyncio.to_thread(old.kill)   # returns once every process is gone
            killed_at = time.monotonic()
            await until(lambda: writers.successes_after("shard0", killed_at) >= 30, 40,
                        lambda: f"writes on shard0 after the kill: {writers.summary()}")
            first = min(t for t in writers.success_times["shard0"] if t > killed_at)
            await asyncio.sleep(0.5)
            await writers.finish()
            print(f"\nfailover: kill -> first successful write on shard0: "
                  f"{first - killed_at:.2f}s; errors on shard0 (in flight at the kill): "
                  f"{len(writers.errors.get('shard0', []))}; acked writes: "
                  f"{ {s: len(k) for s, k in writers.acked.items()} }")

            shard0 = rt.proxy.catalog.shard("shard0")
            assert shard0.primary == replica.dsn and old.dsn in shard0.fenced
            assert shard0.last_failover is not None and shard0.last_failover.kind == "failover"
            assert not writers.errors.get("shard1"), writers.errors.get("shard1")[:5]
            # Statements in flight at the kill fail (never acknowledged): the proxy's 08006,
            # the dying server's 57P01, or asyncpg's 08003 when the server's FATAL ends it.
            for err in writers.errors.get("shard0", []):
                assert err.split()[0] in ("08006", "57P01", "08003", "None"), err
            missing = set(writers.acked["shard0"]) - rows_on(replica, writers.acked["shard0"])
            assert not missing, f"{len(missing)} acknowledged writes lost: {sorted(missing)[:10]}"
            shard1 = cluster.shards[1].primary
            assert set(writers.acked["shard1"]) <= rows_on(shard1, writers.acked["shard1"])

            status, health, _ = await api.request("GET", "/health")
            assert health["shards"]["shard0"]["last_failover"]["to"].endswith(
                f":{replica.port}")
            status, view, _ = await api.request("GET", "/api/v1/shards/shard0", role="admin")
            roles = {s["dsn"]: s["role"] for s in view["servers"]}
            assert roles == {f"127.0.0.1:{replica.port}": "primary",
                             f"127.0.0.1:{old.port}": "fenced"}, view
            assert view["last_failover"]["kind"] == "failover"
            status, text, _ = await api.request("GET", "/metrics")
            assert 'pgshard_failovers_total{kind="failover",shard="shard0"} 1.0' in text
            assert "pgshard_failover_seconds_bucket" in text
            assert "pgshard_replica_lag_bytes" in text

            # The old primary, restarted by hand, gets no statement from the proxy.
            await asyncio.to_thread(old.start)
            more = Writers(rt, client_dsn(rt))
            more._keys = itertools.count(10_000_000)
            more.start()
            await until(lambda: len(more.acked.get("shard0", [])) >= 20, 20,
                        lambda: f"more writes: {more.summary()}")
            await more.finish()
            assert not rows_on(old, more.acked["shard0"])
            assert set(more.acked["shard0"]) <= rows_on(replica, more.acked["shard0"])

            # rejoin makes it a streaming replica of the new primary again.
            status, body, _ = await api.request(
                "POST", "/api/v1/shards/shard0/rejoin", role="admin",
                json={"dsn": f"127.0.0.1:{old.port}"})
            assert status == 200, body
            assert body["how"] == "rewind", body   # pg_rewind, not a fresh clone
            assert old.psql("SELECT pg_is_in_recovery()") == "t"
            assert old.psql("SELECT status FROM pg_stat_wal_receiver") == "streaming"
            shard0 = rt.proxy.catalog.shard("shard0")
            assert shard0.replicas == (old.dsn,) and not shard0.fenced
            # Synchronous again: the new primary waits for the rejoined replica.
            assert replica.psql("SHOW synchronous_standby_names") == f'ANY 1 ("{old.name}")'


async def test_switchover_under_write_load_fails_no_statement():
    with temp_cluster(shards=1, replicas=1, sync_replication=True) as cluster:
        cluster.shards[0].primary.psql(DDL)
        replica = cluster.shards[0].replicas[0]
        async with running_runtime(config(cluster)) as rt, aiohttp.ClientSession() as http:
            api = await api_for(rt, http)
            await until(lambda: rt.plane.membership.is_leader, 10, "leadership")
            await sync_recorded(rt, ["shard0"])
            writers = Writers(rt, client_dsn(rt))
            writers.start()
            await until(lambda: len(writers.acked.get("shard0", [])) > 100, 30,
                        lambda: f"writes: {writers.summary()}")
            before = len(writers.acked["shard0"])
            status, body, _ = await api.request("POST", "/api/v1/shards/shard0/switchover",
                                                role="admin", json={})
            assert status == 200, body
            await until(lambda: len(writers.acked["shard0"]) > before + 100, 30,
                        lambda: f"writes after the switchover: {writers.summary()}")
            await writers.finish()
            print(f"\nswitchover: statements held for {body['pause_seconds']:.3f}s; slowest "
                  f"statement {max(writers.latencies):.3f}s; "
                  f"{len(writers.acked['shard0'])} acknowledged writes")
            assert not writers.errors, list(writers.errors.values())[0][:5]
            assert rt.proxy.catalog.shard("shard0").primary == replica.dsn
            assert replica.psql("SELECT pg_is_in_recovery()") == "f"
            acked = writers.acked["shard0"]
            assert set(acked) <= rows_on(replica, acked)
            status, audit, _ = await api.request("GET", "/api/v1/audit?action=shard.switchover",
                                                 role="admin")
            assert audit["records"][0]["result"] == "ok"


async def test_no_promotion_when_only_the_manager_lost_the_primary():
    """The primary keeps running and streaming to its replica, but refuses every
    non-replication connection from 127.0.0.1 (a pg_hba.conf `reject` line for the
    database, reloaded; the manager's monitor connections are ended so they must reconnect).
    Replication connections match only `replication` lines, so the replica's WAL receiver
    stays connected: to the manager the primary looks dead, to the replica it is alive.
    SIGSTOP would not do: it would stop replication too."""
    with temp_cluster(shards=1, replicas=1, sync_replication=True) as cluster:
        primary = cluster.shards[0].primary
        hba = primary.data_dir / "pg_hba.conf"
        async with running_runtime(config(cluster)) as rt, aiohttp.ClientSession() as http:
            api = await api_for(rt, http)
            await until(lambda: rt.plane.membership.is_leader, 10, "leadership")
            await sync_recorded(rt, ["shard0"])
            version = rt.proxy.catalog.version
            original = hba.read_text()
            lines = original.splitlines()
            at = next(i for i, line in enumerate(lines) if line.startswith("host"))
            lines.insert(at, "host    app          all        127.0.0.1/32 reject")
            hba.write_text("\n".join(lines) + "\n")
            primary.psql_local("SELECT pg_reload_conf();"
                               "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                               "WHERE backend_type = 'client backend' "
                               "AND pid <> pg_backend_pid()")
            threshold = rt.config.ha.failure_threshold
            facts = rt.proxy.replicas.node_facts
            await until(lambda: facts(primary.dsn).failures >= threshold + 3, 30,
                        "the manager's failed checks")
            decision = rt.plane.failover.last_decision["shard0"]
            assert decision.action == "none" and "still stream" in decision.reason, decision
            assert rt.proxy.catalog.version == version
            assert rt.proxy.catalog.shard("shard0").primary == primary.dsn
            assert cluster.shards[0].replicas[0].psql("SELECT pg_is_in_recovery()") == "t"
            status, health, _ = await api.request("GET", "/health")
            assert health["status"] == "degraded" and "shard0" in health["degraded"][0]
            assert health["shards"]["shard0"]["primary_up"] is False

            hba.write_text(original)
            primary.psql_local("SELECT pg_reload_conf()")
            await until(lambda: facts(primary.dsn).reachable, 20, "the primary again")
            status, health, _ = await api.request("GET", "/health")
            assert health["status"] == "ok", health
            status, text, _ = await api.request("GET", "/metrics")
            assert "pgshard_failovers_total{" not in text


async def test_hold_then_clear_error_then_cli_failover_and_rejoin():
    """With automatic failover off nothing promotes: a statement for the dead shard is held
    for failover_hold, then fails with 08006 naming the shard; `pgshard shards failover`
    promotes the replica, the statement works, `pgshard shards rejoin` brings the old
    primary back as a replica."""
    import json

    from click.testing import CliRunner

    from pgshard.cli import main

    with temp_cluster(shards=1, replicas=1, durable=True) as cluster:
        cluster.shards[0].primary.psql(DDL)
        old, replica = cluster.shards[0].primary, cluster.shards[0].replicas[0]
        cfg = config(cluster, auto_failover=False, failover_hold=2.0)
        async with running_runtime(cfg) as rt, aiohttp.ClientSession() as http:
            api = await api_for(rt, http)
            await until(lambda: rt.plane.membership.is_leader, 10, "leadership")
            conn = await asyncpg.connect(client_dsn(rt))
            await conn.execute("INSERT INTO ledger VALUES (1, 0)")
            await asyncio.to_thread(old.kill)
            t0 = time.monotonic()
            with pytest.raises(asyncpg.PostgresError) as ei:
                await conn.execute("INSERT INTO ledger VALUES (2, 0)")
            waited = time.monotonic() - t0
            print(f"\nheld {waited:.2f}s, then: {ei.value.sqlstate} {ei.value}")
            assert ei.value.sqlstate == "08006" and 'shard "shard0"' in str(ei.value)
            assert "failover_hold" in str(ei.value)
            assert rt.proxy.catalog.shard("shard0").primary == old.dsn

            def cli(*args):
                env = {"PGSHARD_API": rt.api_url, "PGSHARD_TOKEN": api.tokens["admin"]}
                return CliRunner(env=env).invoke(main, list(args))

            result = await asyncio.to_thread(cli, "shards", "failover", "shard0", "--to",
                                             f"127.0.0.1:{replica.port}")
            assert result.exit_code == 0, result.output
            assert f":{replica.port}" in result.output
            assert rt.proxy.catalog.shard("shard0").primary == replica.dsn
            await conn.execute("INSERT INTO ledger VALUES (3, 0)")
            assert rows_on(replica, [1, 3]) == {1, 3}
            await conn.close()

            result = await asyncio.to_thread(cli, "shards", "rejoin", "shard0",
                                             f"127.0.0.1:{old.port}", "--json")
            assert result.exit_code == 0, result.output
            assert json.loads(result.output)["how"] == "rewind", result.output
            assert old.psql("SELECT pg_is_in_recovery()") == "t"
            result = await asyncio.to_thread(cli, "shards", "rejoin", "shard0",
                                             f"127.0.0.1:{old.port}")
            assert result.exit_code != 0 and "not among" in result.output
            # A forced failover while the primary runs stops it first (no second writer).
            await until(lambda: rt.proxy.replicas.node_facts(old.dsn).reachable, 20,
                        "the rejoined replica's first check")
            result = await asyncio.to_thread(cli, "shards", "failover", "shard0")
            assert result.exit_code == 0, result.output
            assert rt.proxy.catalog.shard("shard0").primary == old.dsn
            assert not replica.is_running()
            conn = await asyncpg.connect(client_dsn(rt))
            await conn.execute("INSERT INTO ledger VALUES (4, 0)")
            await conn.close()
            assert rows_on(old, [1, 3, 4]) == {1, 3, 4}
            status, audit, _ = await api.request("GET", "/api/v1/audit?action=shard.failover",
                                                 role="admin")
            assert audit["records"][0]["result"] == "ok"


async def test_second_manager_takes_over_and_fails_over():
    """`pgshard serve` A leads; an in-process manager B shares its store. A is SIGKILLed
    (its lease is not revoked: B waits for it to lapse), B takes the lease, and a primary
    killed after the takeover is failed over by B."""
    with temp_cluster(shards=1, replicas=1, sync_replication=True) as cluster:
        cluster.shards[0].primary.psql(DDL)
        old, replica = cluster.shards[0].primary, cluster.shards[0].replicas[0]
        cfg = config(cluster)
        first = dict(cfg, proxy={**cfg["proxy"], "port": free_port()},
                     sidecar={**cfg["sidecar"], "port": free_port()}, node_id="manager-a")
        with ProxyProcess(first) as a:
            async with aiohttp.ClientSession() as http:
                async def a_leads():
                    try:
                        async with http.get(f"http://127.0.0.1:{a.api_port}/health") as resp:
                            return (await resp.json())["leader"]
                    except aiohttp.ClientConnectionError:
                        return False  # the sidecar starts after the proxy's listener
                deadline = time.monotonic() + 15
                while not await a_leads():
                    assert time.monotonic() < deadline, a.log()
                    await asyncio.sleep(0.1)
            async with running_runtime(dict(cfg, node_id="manager-b")) as b:
                async def leader():
                    return (await list_routers(b.store))[1]
                assert await leader() == "manager-a"
                await sync_recorded(b, ["shard0"])
                assert not b.plane.membership.is_leader
                a.proc.kill()
                a.proc.wait(10)
                killed = time.monotonic()
                await until(lambda: b.plane.membership.is_leader, 30, "B's leadership")
                took = time.monotonic() - killed
                print(f"\ntakeover: the second manager leads {took:.2f}s after the first was "
                      f"killed (lease_ttl {b.config.lease_ttl:g}s)")
                assert await leader() == "manager-b"
                await asyncio.to_thread(old.kill)
                await until(lambda: b.proxy.catalog.shard("shard0").primary == replica.dsn, 30,
                            "B's failover")
                conn = await asyncpg.connect(client_dsn(b))
                await conn.execute("INSERT INTO ledger VALUES (1, 0)")
                await conn.close()
                assert rows_on(replica, [1]) == {1}


def test_demo_sync_replication_and_cli_switchover():
    """`pgshard demo --sync-replication`: its primary waits for ANY 1 of its replicas, the
    catalog records the synchronous standby, and `pgshard shards switchover` works on the
    demo's own servers (the demo's manager may stop its old primary)."""
    import json
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import urllib.request
    from pathlib import Path

    from click.testing import CliRunner

    from pgshard.cli import main
    from tests.fixtures.clusters import cluster_dir

    data_dir = Path(cluster_dir()) / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGSHARD_")}
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("pgshard")), "demo", "--data-dir", str(data_dir),
         "--shards", "1", "--replicas", "1", "--port", "0", "--api-port", str(free_port()),
         "--sync-replication"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                state = json.loads((data_dir / "demo.json").read_text())
                break
            except (OSError, ValueError):
                assert time.monotonic() < deadline, "no demo.json"
                time.sleep(0.2)
        cluster = LocalCluster.open(data_dir / "cluster")
        primary, replica = cluster.shards[0].primary, cluster.shards[0].replicas[0]
        assert primary.psql("SHOW synchronous_standby_names") == f'ANY 1 ("{replica.name}")'
        assert primary.psql("SHOW synchronous_commit") == "on"
        request = urllib.request.Request(
            state["api"] + "/api/v1/auth/login", method="POST",
            data=json.dumps({"username": state["admin_user"],
                             "password": state["admin_password"]}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            token = json.loads(resp.read())["token"]
        cli = CliRunner(env={"PGSHARD_API": state["api"], "PGSHARD_TOKEN": token})
        deadline = time.monotonic() + 30
        while True:
            shown = json.loads(cli.invoke(main, ["shards", "show", "shard0", "--json"]).output)
            if any(s["sync"] for s in shown["servers"] if s["role"] == "replica"):
                break
            assert time.monotonic() < deadline, shown
            time.sleep(0.3)
        result = cli.invoke(main, ["shards", "switchover", "shard0"])
        assert result.exit_code == 0, result.output
        assert f":{replica.port}" in result.output and "held" in result.output
        assert replica.psql("SELECT pg_is_in_recovery()") == "f"
        assert not primary.is_running()  # stopped by the switchover, fenced in the catalog
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
        LocalCluster.open(data_dir / "cluster").destroy()
        shutil.rmtree(data_dir.parent, ignore_errors=True)
