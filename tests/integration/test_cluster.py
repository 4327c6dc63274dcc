"""The local cluster harness: nodes come up, replicas stream, stop/start/kill/promote work."""

from __future__ import annotations

import socket
import time
import uuid

import psycopg
import pytest

from pgshard.cluster import (
    ClusterError,
    LocalCluster,
    Node,
    find_pg_bindir,
    free_port,
    hash_sql,
)
from tests.fixtures.clusters import cluster_dir, temp_cluster

pytestmark = pytest.mark.integration


def wait_for(predicate, timeout: float = 15, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_binaries_and_ports():
    bindir = find_pg_bindir()
    assert (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file()
    port = free_port()
    assert 1024 < port < 65536
    assert "CREATE SCHEMA IF NOT EXISTS pgshard" in hash_sql()


def test_layout(pg_cluster: LocalCluster):
    desc = pg_cluster.describe()
    assert [s["name"] for s in desc["shards"]] == ["shard0", "shard1"]
    names = [n.name for n in pg_cluster.nodes]
    assert names == ["shard0-primary", "shard0-replica1", "shard1-primary", "shard1-replica1"]
    assert len({n.port for n in pg_cluster.nodes}) == 4
    for shard, described in zip(pg_cluster.shards, desc["shards"], strict=True):
        assert described["primary"] == shard.primary.dsn
        assert described["replicas"] == [r.dsn for r in shard.replicas]
        node = shard.primary
        assert node.dsn == f"postgresql://pgshard:pgshard@127.0.0.1:{node.port}/app"
        assert node.admin_dsn.endswith(f":{node.port}/postgres")
        # Socket and log outside the data directory (pg_rewind lists and copies all of it).
        assert node.log_path.parent == pg_cluster.base_dir / "logs"
        assert node.socket_dir == pg_cluster.base_dir / "sockets"


def test_roles(pg_cluster: LocalCluster):
    for shard in pg_cluster.shards:
        assert shard.primary.is_running() and not shard.primary.is_in_recovery()
        for replica in shard.replicas:
            assert replica.is_running() and replica.is_in_recovery()


def test_settings(pg_cluster: LocalCluster):
    node = pg_cluster.shards[0].primary
    show = node.psql("SELECT string_agg(name || '=' || setting, ',' ORDER BY name) FROM pg_settings"
                     " WHERE name IN ('listen_addresses', 'unix_socket_directories', 'wal_level',"
                     " 'fsync', 'hot_standby_feedback', 'max_connections', 'port')")
    settings = dict(item.split("=", 1) for item in show.split(","))
    assert settings == {
        "fsync": "off", "hot_standby_feedback": "on", "listen_addresses": "127.0.0.1",
        "max_connections": "200", "port": str(node.port),
        "unix_socket_directories": str(node.socket_dir), "wal_level": "logical",
    }


def test_scram_login_with_a_real_driver(pg_cluster: LocalCluster):
    node = pg_cluster.shards[1].primary
    with psycopg.connect(node.dsn, connect_timeout=5) as conn:
        row = conn.execute("SELECT rolpassword LIKE 'SCRAM-SHA-256$%', rolsuper, rolreplication"
                           " FROM pg_authid WHERE rolname = current_user").fetchone()
        assert row == (True, True, True)
        assert conn.execute("SELECT current_database()").fetchone() == ("app",)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(node.dsn.replace(":pgshard@", ":wrong@"), connect_timeout=5)


def test_replicas_stream_writes(pg_cluster: LocalCluster):
    table = f"t_{uuid.uuid4().hex[:8]}"
    for shard in pg_cluster.shards:
        primary, replica = shard.primary, shard.replicas[0]
        streaming = primary.psql("SELECT application_name, state FROM pg_stat_replication")
        assert streaming == f"{replica.name}|streaming"
        primary.psql(f"CREATE TABLE {table} (k text PRIMARY KEY, v int);"
                     f" INSERT INTO {table} VALUES ('{shard.name}', 1)")
        assert wait_for(lambda: replica.psql(  # noqa: B023
            f"SELECT to_regclass('{table}') IS NOT NULL") == "t", what="table on replica")
        assert replica.psql(f"SELECT k, v FROM {table}") == f"{shard.name}|1"
        assert replica.psql("SELECT pgshard.hash('x')") == primary.psql("SELECT pgshard.hash('x')")
        primary.psql(f"DROP TABLE {table}")


def test_stop_start_and_reopen():
    with temp_cluster(shards=1, replicas=1) as cluster:
        primary, replica = cluster.shards[0].primary, cluster.shards[0].replicas[0]
        primary.psql("CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)")
        cluster.stop()
        assert not primary.is_running() and not replica.is_running()
        cluster.start()
        assert primary.is_running() and replica.is_running()
        assert primary.psql("SELECT x FROM kept") == "7"
        cluster.wait_replicas()
        assert replica.psql("SELECT x FROM kept") == "7"
        cluster.stop()
        # A second handle on the same directory finds the same ports and starts it again.
        with LocalCluster(cluster.base_dir, shards=1, replicas=1) as again:
            assert again.describe() == cluster.describe()
            assert again.shards[0].primary.psql("SELECT x FROM kept") == "7"
        assert not primary.is_running()


def test_kill_and_restart():
    with temp_cluster(shards=1, replicas=1) as cluster:
        primary, replica = cluster.shards[0].primary, cluster.shards[0].replicas[0]
        primary.kill()
        assert not primary.is_running()
        assert replica.is_in_recovery()  # the replica keeps serving reads
        primary.start()  # crash recovery
        assert not primary.is_in_recovery()
        primary.psql("CREATE TABLE after_crash (x int)")
        cluster.wait_replicas()
        assert replica.psql("SELECT to_regclass('after_crash') IS NOT NULL") == "t"


def test_promote_replica():
    with temp_cluster(shards=1, replicas=1) as cluster:
        primary, replica = cluster.shards[0].primary, cluster.shards[0].replicas[0]
        assert replica.is_in_recovery()
        primary.stop(mode="immediate")
        replica.promote()
        assert not replica.is_in_recovery()
        replica.psql("CREATE TABLE promoted (x int); INSERT INTO promoted VALUES (1)")
        assert replica.psql("SELECT count(*) FROM promoted") == "1"


def test_synchronous_replication():
    with temp_cluster(shards=1, replicas=1, sync_replication=True) as cluster:
        primary = cluster.shards[0].primary
        # ANY 1 of the replicas, named by the application_name each one streams under.
        assert primary.psql("SHOW synchronous_standby_names") == 'ANY 1 ("shard0-replica1")'
        assert primary.psql("SHOW synchronous_commit") == "on"
        assert primary.psql("SELECT application_name, sync_state FROM pg_stat_replication") \
            == "shard0-replica1|quorum"
        primary.psql("CREATE TABLE acked (x int); INSERT INTO acked VALUES (1)")
        cluster.wait_replicas()
        assert cluster.shards[0].replicas[0].psql("SELECT count(*) FROM acked") == "1"


def test_node_on_its_own(pg_cluster: LocalCluster):
    node = pg_cluster.shards[0].primary
    twin = Node(node.name, node.port, node.data_dir)
    assert twin.is_running() and twin.dsn == node.dsn


def test_interrupted_create_is_redone():
    base_port = free_port()
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", base_port + 1))  # the replica's fixed port
    blocker.listen()
    cluster = LocalCluster(cluster_dir(), shards=1, replicas=1, base_port=base_port)
    try:
        with pytest.raises(ClusterError, match="Address already in use"):
            cluster.create()
        assert not cluster.exists()
        assert not any(node.is_running() for node in cluster.nodes)
        blocker.close()
        with LocalCluster(cluster.base_dir, shards=1, replicas=1, base_port=base_port) as again:
            assert again.exists() and again.shards[0].replicas[0].is_in_recovery()
    finally:
        blocker.close()
        cluster.destroy()
