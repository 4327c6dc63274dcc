"""LocalCluster.open() finds the options a cluster was made with in its layout file, so a
manager that re-creates or rejoins one of its nodes configures it the same way."""

from __future__ import annotations

from pgshard.cluster import LocalCluster
from pgshard.cluster.config import render_settings, sync_standby_names


def test_open_restores_creation_options(tmp_path):
    made = LocalCluster(tmp_path, shards=2, replicas=1, sync_replication=True,
                        extra_conf={"work_mem": "8MB"}, shard_conf={"shard1": {"port": 1}})
    made._save_layout(complete=True)
    again = LocalCluster.open(tmp_path)
    assert (again.synchronous, again.durable) == (True, True)
    assert again.extra_conf == {"work_mem": "8MB"} and again.shard_conf == {"shard1": {"port": 1}}
    assert [s.name for s in again.shards] == ["shard0", "shard1"]
    assert LocalCluster.open(tmp_path, sync_replication=False, durable=False).durable is False


def test_sync_standby_names_lists_replicas_by_application_name():
    assert sync_standby_names(["shard0-replica1", 'we"ird']) == \
        'ANY 1 ("shard0-replica1", "we""ird")'
    text = render_settings(name="shard0-primary", port=5, socket_dir=".", synchronous=True,
                           sync_standbys=True, extra=None, standby_names=["shard0-replica1"])
    assert "synchronous_standby_names = 'ANY 1 (\"shard0-replica1\")'" in text
    assert "synchronous_commit = 'on'" in text and "wal_log_hints = 'on'" in text
