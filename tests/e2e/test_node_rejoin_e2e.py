"""`pgshard node rejoin` for a server the manager does not manage: a manager without
[ha] local_cluster fails a killed primary over, refuses to rejoin it itself (it names the
command to run on its host), and the command, given the old primary's data directory and the
new primary's DSN, rewinds it, starts it streaming and has it listed as a (synchronous)
replica. A bad DSN or a missing directory fails at once with a clear message."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import asyncpg
import pytest
from click.testing import CliRunner

from pgshard.cli import main
from pgshard.cluster import free_port
from tests.e2e.test_failover_e2e import DDL, api_for, rows_on, until
from tests.fixtures.clusters import temp_cluster
from tests.fixtures.runtime import running_runtime, runtime_config

pytestmark = pytest.mark.integration


async def test_node_rejoin_cli_on_a_server_the_manager_does_not_manage():
    with temp_cluster(shards=1, replicas=1, sync_replication=True) as cluster:
        old, new = cluster.shards[0].primary, cluster.shards[0].replicas[0]
        old.psql(DDL)
        # No [ha] local_cluster: to this manager the servers are anyone's.
        cfg = runtime_config(cluster, users=[{"name": "app", "password": "app-secret"}],
                             tables=[{"name": "ledger", "shard_key": "id"}])
        async with running_runtime(cfg) as rt, aiohttp.ClientSession() as http:
            api = await api_for(rt, http)
            await until(lambda: rt.plane.membership.is_leader, 10, "leadership")
            await until(lambda: rt.proxy.catalog.shard("shard0").sync, 20, "sync standbys")
            dsn = f"postgresql://app:app-secret@127.0.0.1:{rt.proxy.port}/app"
            conn = await asyncpg.connect(dsn)
            await conn.execute("INSERT INTO ledger VALUES (1, 0)")
            await asyncio.to_thread(old.kill)
            await until(lambda: rt.proxy.catalog.shard("shard0").primary == new.dsn, 30,
                        "the failover")
            await conn.close()
            conn = await asyncpg.connect(dsn)
            await conn.execute("INSERT INTO ledger VALUES (2, 0)")  # after the promotion

            status, body, _ = await api.request("POST", "/api/v1/shards/shard0/rejoin",
                                                role="admin", json={"dsn": old.dsn})
            assert status == 422 and "pgshard node rejoin" in body["detail"], body
            # Listing it before it streams is refused: it is still a (dead) old primary.
            status, body, _ = await api.request(
                "POST", "/api/v1/shards/shard0/rejoin", role="admin",
                json={"dsn": f"127.0.0.1:{old.port}", "rejoined": True})
            assert status in (422, 503), body

            env = {"PGSHARD_API": rt.api_url, "PGSHARD_TOKEN": api.tokens["admin"]}

            def cli(*args):
                t0 = time.monotonic()
                result = CliRunner(env=env).invoke(main, ["node", "rejoin", *args])
                return result, time.monotonic() - t0

            primary_dsn = f"postgresql://pgshard:pgshard@127.0.0.1:{new.port}/postgres"
            result, took = await asyncio.to_thread(
                cli, "--data-dir", str(old.data_dir),
                "--primary", f"postgresql://pgshard:pgshard@127.0.0.1:{free_port()}/postgres")
            assert result.exit_code != 0 and "does not answer" in result.output, result.output
            assert took < 20 and not old.is_running()
            result, took = await asyncio.to_thread(
                cli, "--data-dir", str(old.data_dir.parent / "nowhere"), "--primary",
                primary_dsn)
            assert result.exit_code != 0 and "not a PostgreSQL data directory" in \
                result.output, result.output
            result, _ = await asyncio.to_thread(
                cli, "--data-dir", str(old.data_dir), "--primary", old.dsn)
            assert result.exit_code != 0, result.output   # the old primary is down

            result, took = await asyncio.to_thread(
                cli, "--data-dir", str(old.data_dir), "--primary", primary_dsn, "--json")
            assert result.exit_code == 0, result.output
            reply = json.loads(result.output)
            print(f"\nnode rejoin: {reply['how']} in {took:.2f}s")
            assert reply["how"] == "rewind" and reply["rejoined"] == f"127.0.0.1:{old.port}"
            assert old.psql("SELECT status FROM pg_stat_wal_receiver") == "streaming"
            assert old.psql("SHOW port") == str(old.port)  # its own settings kept
            shard = rt.proxy.catalog.shard("shard0")
            assert shard.replicas == (old.dsn,) and not shard.fenced
            assert shard.sync == (old.dsn,)
            assert new.psql("SHOW synchronous_standby_names") == f'ANY 1 ("{old.name}")'
            await conn.execute("INSERT INTO ledger VALUES (3, 0)")
            await conn.close()
            await until(lambda: rows_on(old, [1, 2, 3]) == {1, 2, 3}, 10, "rows on the replica")
            status, view, _ = await api.request("GET", "/api/v1/shards/shard0", role="admin")
            roles = {s["dsn"]: s["role"] for s in view["servers"]}
            assert roles[f"127.0.0.1:{old.port}"] == "replica", view

            # Run again: it is no longer fenced, so nothing is done to it.
            result, took = await asyncio.to_thread(
                cli, "--data-dir", str(old.data_dir), "--primary", primary_dsn)
            assert result.exit_code != 0 and "no fenced server" in result.output, \
                result.output
            assert old.is_running()
