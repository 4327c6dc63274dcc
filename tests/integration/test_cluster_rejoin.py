"""LocalCluster.rejoin really rewinds an old primary (no pg_basebackup clone), after it was
killed and diverged, and after a clean switchover; it then streams rows written since."""

from __future__ import annotations

import pytest

from tests.fixtures.clusters import temp_cluster

pytestmark = pytest.mark.integration


def rows(node) -> list[str]:
    return node.psql("SELECT phase FROM t ORDER BY id").split()


def streaming(node) -> bool:
    return node.psql("SELECT pg_is_in_recovery() AND "
                     "(SELECT status = 'streaming' FROM pg_stat_wal_receiver)") == "t"


def test_rejoin_rewinds_after_a_kill_and_after_a_switchover():
    with temp_cluster(shards=1, replicas=1, durable=True) as cluster:
        a, b = cluster.shards[0].primary, cluster.shards[0].replicas[0]
        a.psql("CREATE TABLE t (id int PRIMARY KEY, phase text); INSERT INTO t VALUES (1, 'one')")
        cluster.wait_replicas()
        marker = a.data_dir / "base"
        inode = marker.stat().st_ino

        # Failover: the primary is killed, the replica promoted and written to; the old
        # primary, restarted by hand, takes a write the new one never sees (it diverged).
        a.kill()
        b.promote()
        b.psql("INSERT INTO t VALUES (2, 'two')")
        a.start()
        a.psql("INSERT INTO t VALUES (99, 'lost')")
        # As a manager's rejoin of another server would have set on it as a primary.
        a.psql("ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 (gone)'")
        a.kill()
        assert cluster.rejoin(a, b) == "rewind"
        assert marker.stat().st_ino == inode  # the same data directory, not a fresh copy
        assert streaming(a) and rows(a) == ["one", "two"]
        auto = (a.data_dir / "postgresql.auto.conf").read_text()
        assert "synchronous_standby_names" not in auto and "primary_conninfo" in auto
        b.psql("INSERT INTO t VALUES (3, 'three')")
        cluster.wait_replicas()
        assert rows(a) == ["one", "two", "three"]
        assert cluster.shards[0].primary is b

        # Switchover: the primary stopped cleanly, the replica promoted and written to (its
        # commits wait for no standby left over from its time as a primary).
        b.stop("fast")
        a.promote()
        a.psql("INSERT INTO t VALUES (4, 'four')")
        assert cluster.rejoin(b, a) == "rewind"
        assert streaming(b)
        a.psql("INSERT INTO t VALUES (5, 'five')")
        cluster.wait_replicas()
        assert rows(b) == ["one", "two", "three", "four", "five"]
        # Its own settings again (pg_rewind copied the source's), its own log.
        assert b.psql("SHOW port") == str(b.port)
        assert b.psql("SHOW cluster_name") == b.name
        assert not (b.data_dir / "server.log").exists() and b.log_path.is_file()


def test_rejoin_clones_only_when_pg_rewind_fails_and_cloning_is_allowed():
    from pgshard.cluster.rejoin import RejoinError, Upstream, rewind_or_clone

    with temp_cluster(shards=1, replicas=1, durable=True) as cluster:
        a, b = cluster.shards[0].primary, cluster.shards[0].replicas[0]
        a.psql("CREATE TABLE t (id int PRIMARY KEY, phase text); INSERT INTO t VALUES (1, 'one')")
        cluster.wait_replicas()
        a.kill()
        b.promote()
        b.psql("INSERT INTO t VALUES (2, 'two')")
        (a.data_dir / "global" / "pg_control").unlink()   # beyond pg_rewind's repair
        up = Upstream(b.host, b.port, cluster.user, cluster.password,
                      application_name=a.name)
        with pytest.raises(RejoinError, match="pass --clone-if-needed"):
            rewind_or_clone(cluster.bindir, a.data_dir, up, clone_if_needed=False, timeout=60)
        assert not a.is_running() and (a.data_dir / "PG_VERSION").is_file()
        assert cluster.rejoin(a, b) == "clone"
        assert streaming(a) and rows(a) == ["one", "two"]
        assert a.psql("SHOW port") == str(a.port)   # its own settings, not the source's
