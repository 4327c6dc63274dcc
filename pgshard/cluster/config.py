"""The server settings and pg_hba.conf a local cluster node runs with."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from pgshard.cluster.process import running_as_root, service_account

# Included from postgresql.conf; rewritten per node (a replica's copy comes from its primary).
CONF_FILE = "pgshard.conf"
INCLUDE_LINE = f"include '{CONF_FILE}'"

BASE_SETTINGS: dict[str, object] = {
    "listen_addresses": "127.0.0.1",
    "max_connections": 200,
    # Two-phase commit (pgshard.proxy.twophase): a prepared transaction per connection.
    "max_prepared_transactions": 200,
    "shared_buffers": "32MB",
    "password_encryption": "scram-sha-256",
    "wal_level": "logical",
    "max_wal_senders": 16,
    "max_replication_slots": 16,
    "wal_keep_size": "128MB",
    "hot_standby": "on",
    "hot_standby_feedback": "on",
    "wal_receiver_status_interval": "1s",
    # Reconnect to a restarted primary quickly (default 5s).
    "wal_retrieve_retry_interval": "200ms",
    # pg_rewind (rejoining a failed-over old primary as a replica) needs hint bits in WAL.
    "wal_log_hints": "on",
    "logging_collector": "off",
    "log_line_prefix": "%m [%p] %q%u@%d ",
    "log_min_messages": "warning",
    "dynamic_shared_memory_type": "posix",
}

# Fast, crash-unsafe defaults for tests and demos: a killed server loses acknowledged
# commits (synchronous_commit), a crashed host can corrupt the cluster (fsync, full pages).
FAST_SETTINGS: dict[str, object] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}

# What a durable cluster (failover and resharding tests, `pgshard demo --durable`) runs
# with: PostgreSQL's own defaults, written out so a node never inherits the fast ones.
DURABLE_SETTINGS: dict[str, object] = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
}

SYNC_STANDBYS = "ANY 1 (*)"


def sync_standby_names(names) -> str:
    """`ANY 1 ("a", "b")` over the standbys' application names (ANY 1 (*) without names)."""
    names = list(names)
    if not names:
        return SYNC_STANDBYS
    return "ANY 1 (" + ", ".join('"' + n.replace('"', '""') + '"' for n in names) + ")"

HBA = """\
# pgshard local cluster: local sockets trusted, TCP on loopback with SCRAM.
local   all          all                     trust
local   replication  all                     trust
host    all          all        127.0.0.1/32 scram-sha-256
host    replication  all        127.0.0.1/32 scram-sha-256
"""


def render_settings(*, name: str, port: int, socket_dir: Path, synchronous: bool,
                    sync_standbys: bool, extra: Mapping[str, object] | None,
                    durable: bool = False, standby_names: Sequence[str] = ()) -> str:
    """The node's pgshard.conf: common settings, durability, then node identity, then
    extra_conf. Synchronous replication implies durable settings; a primary with
    sync_standbys waits for ANY 1 of standby_names (its replicas' application names)."""
    settings = dict(BASE_SETTINGS)
    settings.update(DURABLE_SETTINGS if durable or synchronous else FAST_SETTINGS)
    if synchronous:
        settings["synchronous_standby_names"] = (sync_standby_names(standby_names)
                                                 if sync_standbys else "")
    settings.update(port=port, unix_socket_directories=str(socket_dir), cluster_name=name)
    settings.update(extra or {})
    lines = [f"# written by pgshard.cluster for {name}; changes are overwritten"]
    lines += [f"{key} = {_quote(value)}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def _quote(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int | float):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def write_node_config(data_dir: Path, settings_text: str) -> None:
    """Write pgshard.conf and pg_hba.conf, and include pgshard.conf from postgresql.conf."""
    (data_dir / CONF_FILE).write_text(settings_text)
    (data_dir / "pg_hba.conf").write_text(HBA)
    main_conf = data_dir / "postgresql.conf"
    text = main_conf.read_text()
    if INCLUDE_LINE not in text:
        main_conf.write_text(text.rstrip("\n") + f"\n\n{INCLUDE_LINE}\n")
    if running_as_root():
        uid, gid = service_account()
        for name in (CONF_FILE, "pg_hba.conf", "postgresql.conf"):
            os.chown(data_dir / name, uid, gid)
