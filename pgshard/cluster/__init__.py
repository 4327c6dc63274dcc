"""Local PostgreSQL shard clusters (initdb, pg_basebackup, start/stop/promote) + the SQL hash."""

from pgshard.cluster.local import LocalCluster, ShardNodes, wait_caught_up
from pgshard.cluster.node import Node
from pgshard.cluster.process import ClusterError, find_pg_bindir, free_port
from pgshard.cluster.schema import hash_sql

__all__ = [
    "ClusterError",
    "LocalCluster",
    "Node",
    "ShardNodes",
    "find_pg_bindir",
    "free_port",
    "hash_sql",
    "wait_caught_up",
]
