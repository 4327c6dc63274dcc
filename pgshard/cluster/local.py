"""LocalCluster: N shards of a primary + R streaming replicas on loopback, for demo and tests."""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from pgshard.cluster.config import render_settings, write_node_config
from pgshard.cluster.node import LOG_FILE, Node
from pgshard.cluster.process import (
    ClusterError,
    find_pg_bindir,
    free_port,
    log_tail,
    run,
    running_as_root,
    service_account,
)
from pgshard.cluster.rejoin import Upstream, rewind_or_clone
from pgshard.cluster.schema import bootstrap_script, database_script

LAYOUT_FILE = "cluster.json"
# Outside the data directories: pg_rewind's libpq source cannot read a socket file in the
# source's data directory, and would copy the source's log over the target's.
SOCKET_DIR, LOG_DIR = "sockets", "logs"
# A transaction that has an xid and wrote WAL commits synchronously (an xid alone would
# commit asynchronously); a restore point is WAL no reader acts on. Its flush covers all
# WAL inserted before it, async commits included.
FLUSH_SCRIPT = """\
SET synchronous_commit = local;
BEGIN;
SELECT pg_current_xact_id(), pg_create_restore_point('pgshard-sync') \\g /dev/null
COMMIT;
SELECT pg_current_wal_flush_lsn();
"""
T = TypeVar("T")


@dataclass
class ShardNodes:
    """One shard's servers: its primary and its replicas (names shardN-primary/-replicaK)."""

    name: str
    primary: Node
    replicas: list[Node] = field(default_factory=list)

    @property
    def nodes(self) -> list[Node]:
        return [self.primary, *self.replicas]


class LocalCluster:
    """Shards of local PostgreSQL servers under base_dir, managed with initdb/pg_ctl/psql.

    The layout (node names and ports) is saved in base_dir/cluster.json, so a later
    LocalCluster on the same base_dir finds the same ports and can start() it again.

    By default the servers run with fsync, synchronous_commit and full_page_writes off:
    fast, and a killed server loses acknowledged commits. durable=True runs them with all
    three on (failover and resharding tests need that); sync_replication=True (or its older
    name synchronous=True) adds synchronous replication and implies durable: each primary
    runs with synchronous_commit = on and synchronous_standby_names = 'ANY 1 (...)' over its
    replicas, each replica streaming under its node name as application_name. extra_conf adds server settings to
    every node; shard_conf={"shard1": {...}} to one shard's nodes only.
    """

    def __init__(self, base_dir: str | os.PathLike, shards: int = 2, replicas: int = 1, *,
                 database: str = "app", user: str = "pgshard", password: str = "pgshard",
                 base_port: int | None = None, shard_prefix: str = "shard",
                 synchronous: bool = False, durable: bool = False,
                 extra_conf: dict | None = None, shard_conf: dict[str, dict] | None = None,
                 sync_replication: bool = False):
        if shards < 1 or replicas < 0:
            raise ValueError("need shards >= 1 and replicas >= 0")
        self.base_dir = Path(base_dir).absolute()
        self.database, self.user, self.password = database, user, password
        self.synchronous = synchronous or sync_replication
        self.durable = durable or self.synchronous
        self.extra_conf = dict(extra_conf or {})
        # Per shard name, settings over extra_conf for all of that shard's nodes (a replica
        # needs max_prepared_transactions etc. at least as high as its primary's).
        self.shard_conf = {name: dict(conf) for name, conf in (shard_conf or {}).items()}
        self.bindir = find_pg_bindir()
        layout = self._load_layout()
        if layout is None:
            layout = _plan_layout(shards, replicas, shard_prefix, base_port)
        elif (len(layout), len(layout[0]["replicas"])) != (shards, replicas):
            raise ClusterError(f"{self.base_dir} holds a cluster of {len(layout)} shards x "
                               f"{len(layout[0]['replicas'])} replicas, not {shards} x {replicas}")
        self._ports_chosen = base_port is None
        self._layout_lock = threading.Lock()
        self.shards: list[ShardNodes] = [
            ShardNodes(s["name"], self._node(s["primary"]),
                       [self._node(r) for r in s["replicas"]])
            for s in layout
        ]

    def __repr__(self) -> str:
        return f"LocalCluster({str(self.base_dir)!r}, shards={len(self.shards)})"

    @classmethod
    def open(cls, base_dir: str | os.PathLike, **options) -> LocalCluster:
        """The cluster whose layout base_dir holds, whatever its shape (a manager acting
        on the servers of `pgshard demo` or of a test)."""
        path = Path(base_dir) / LAYOUT_FILE
        try:
            doc = json.loads(path.read_text())
            layout = doc["shards"]
        except (OSError, ValueError, KeyError) as exc:
            raise ClusterError(f"no cluster layout at {path}: {exc}") from None
        # The options it was created with, so a node it rejoins or re-creates gets the same
        # settings (a manager's clone of a durable, synchronous node must not run fast).
        saved = doc.get("options", {})
        return cls(base_dir, shards=len(layout), replicas=len(layout[0]["replicas"]),
                   **{**saved, **options})

    def __enter__(self) -> LocalCluster:
        if self.exists():
            self.start()
        else:
            self.create()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- views -------------------------------------------------------------------------

    @property
    def nodes(self) -> list[Node]:
        return [node for shard in self.shards for node in shard.nodes]

    def describe(self) -> dict:
        """{"shards": [{"name", "primary": dsn, "replicas": [dsn, ...]}, ...]}"""
        return {"shards": [{"name": s.name, "primary": s.primary.dsn,
                            "replicas": [r.dsn for r in s.replicas]} for s in self.shards]}

    def node_at(self, host: str, port: int) -> Node | None:
        """The node listening on host:port, if it is one of this cluster's."""
        if host not in ("127.0.0.1", "localhost", "::1"):
            return None
        return next((n for n in self.nodes if n.port == port), None)

    def shard_of(self, node: Node) -> ShardNodes:
        return next(s for s in self.shards if node in s.nodes)

    def set_primary(self, node: Node) -> None:
        """Record that node is now its shard's primary (after a failover or switchover) and
        the old primary one of its replicas; saved in the layout."""
        shard = self.shard_of(node)
        if node is shard.primary:
            return
        shard.replicas = [shard.primary, *(r for r in shard.replicas if r is not node)]
        shard.primary = node
        self._save_layout(complete=self.exists())

    def rejoin(self, node: Node, primary: Node, timeout: float = 120) -> str:
        """Turn a former primary into a streaming replica of `primary`; returns how
        ("rewind", or "clone" when pg_rewind could not and it was copied afresh).

        The steps of pgshard.cluster.rejoin (stop, pg_rewind with crash recovery first if
        the node was killed, its own settings kept, standby mode), then this cluster's
        settings for the node, start, and wait until it streams and caught up."""
        self.set_primary(primary)
        self._ensure_dirs()
        upstream = Upstream(primary.host, primary.port, self.user, self.password,
                            application_name=node.name)
        how = rewind_or_clone(self.bindir, node.data_dir, upstream, clone_if_needed=True,
                              timeout=timeout, no_sync=not self.durable)
        self._configure(node, sync_standbys=False)
        node.start()
        wait_caught_up(primary, node, timeout=timeout)
        return how

    def exists(self) -> bool:
        """Whether base_dir holds a cluster whose create() completed."""
        try:
            return json.loads((self.base_dir / LAYOUT_FILE).read_text()).get("complete", False)
        except (OSError, ValueError):
            return False

    # -- lifecycle ---------------------------------------------------------------------

    def create(self) -> None:
        """initdb, configure and start every primary, bootstrap it, then add its replicas."""
        if self.exists():
            raise ClusterError(f"a cluster already exists in {self.base_dir}; use start()")
        self._prepare_base_dir()
        self._ensure_dirs()
        # Leftovers of an interrupted create() (a re-run `pgshard demo`) are ours to clear.
        self._kill_quietly()
        for node in self.nodes:
            shutil.rmtree(node.data_dir, ignore_errors=True)
        self._save_layout(complete=False)
        try:
            _parallel(self._create_shard, self.shards)
        except BaseException:
            self._kill_quietly()
            raise
        self._save_layout(complete=True)

    def start(self) -> None:
        """Start every node (in parallel) and wait until each accepts connections.

        A stopped node's settings are rewritten first, so this cluster's durability applies
        even to a base_dir created with other options (a re-run `pgshard demo --durable`)."""
        self._ensure_dirs()
        for shard in self.shards:
            for node in shard.nodes:
                if not node.is_running():
                    self._configure(node, sync_standbys=node is shard.primary)
        _parallel(lambda node: node.start(), self.nodes)

    def stop(self, mode: str = "fast") -> None:
        """Stop every running node (in parallel)."""
        _parallel(lambda node: node.stop(mode), self.nodes)

    def destroy(self) -> None:
        """Stop every node and delete base_dir."""
        try:
            self.stop("immediate")
        except ClusterError:
            self._kill_quietly()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def add_database(self, name: str) -> None:
        """Create database name (owned by the cluster's user, with the pgshard schema) on
        every running primary, as create() does for the cluster's own database; replicas get
        it by replication. A database already there is kept."""
        script = database_script(user=self.user, database=name)
        _parallel(lambda shard: shard.primary.psql_local(script), self.shards)

    def wait_replicas(self, timeout: float = 60) -> None:
        """Wait until every replica streams from its primary and replayed its current WAL."""
        pairs = [(s.primary, r) for s in self.shards for r in s.replicas]
        _parallel(lambda pair: wait_caught_up(*pair, timeout=timeout), pairs)

    # -- creation steps ----------------------------------------------------------------

    def _create_shard(self, shard: ShardNodes) -> None:
        primary = shard.primary
        run([self.bindir / "initdb", "-D", primary.data_dir, "-U", "postgres", "--auth=trust",
             "-E", "UTF8", "--locale=C", *self._no_sync, "--no-instructions"],
            as_service=True, cwd=self.base_dir, what=f"initdb {primary.name}")
        self._configure(primary, sync_standbys=False)
        self._start_new(primary)
        primary.psql_local(bootstrap_script(user=self.user, password=self.password,
                                            database=self.database))
        _parallel(lambda replica: self._create_replica(primary, replica), shard.replicas)
        if self.synchronous and shard.replicas:
            # Only now: commits made while no standby was attached would have waited forever.
            self._configure(primary, sync_standbys=True)
            primary.psql("SELECT pg_reload_conf()")

    def _create_replica(self, primary: Node, replica: Node) -> None:
        run([self.bindir / "pg_basebackup", "-D", replica.data_dir, "-R", "-X", "stream",
             "-c", "fast", *self._no_sync, "--no-manifest", "-h", primary.host,
             # The replica streams under its own name: synchronous_standby_names lists it.
             "-d", f"application_name={replica.name}",
             "-p", str(primary.port), "-U", self.user, "-w"],
            as_service=True, cwd=self.base_dir, env={"PGPASSWORD": self.password},
            timeout=300, what=f"pg_basebackup {replica.name}", log_path=primary.log_path)
        # A primary's log copied along (a data directory of an older layout holds one).
        (replica.data_dir / LOG_FILE).unlink(missing_ok=True)
        self._configure(replica, sync_standbys=False)
        self._start_new(replica)
        wait_caught_up(primary, replica)

    def _start_new(self, node: Node, attempts: int = 3) -> None:
        """Start a new node; a port we picked that someone took meanwhile is picked again."""
        for attempt in range(1, attempts + 1):
            try:
                node.start()
                return
            except ClusterError as exc:
                if (not self._ports_chosen or attempt == attempts
                        or "Address already in use" not in str(exc)):
                    raise
            node.port = free_port()
            self._configure(node, sync_standbys=False)
            self._save_layout()

    @property
    def _no_sync(self) -> tuple[str, ...]:
        # A durable cluster's initial files reach the disk too (initdb, pg_basebackup).
        return () if self.durable else ("--no-sync",)

    def _configure(self, node: Node, *, sync_standbys: bool) -> None:
        shard = self.shard_of(node)
        standbys = [r.name for r in shard.replicas] if node is shard.primary else []
        write_node_config(node.data_dir, render_settings(
            name=node.name, port=node.port, socket_dir=node.socket_dir,
            synchronous=self.synchronous, sync_standbys=sync_standbys and bool(standbys),
            durable=self.durable, extra={**self.extra_conf, **self._shard_conf_of(node)},
            standby_names=standbys))

    def _shard_conf_of(self, node: Node) -> dict:
        for shard in self.shards:
            if node in shard.nodes:
                return self.shard_conf.get(shard.name, {})
        return {}

    def _prepare_base_dir(self) -> None:
        missing = [p for p in (self.base_dir, *self.base_dir.parents) if not p.exists()]
        self.base_dir.mkdir(parents=True, exist_ok=True)
        for created in missing:
            created.chmod(0o755)
        if running_as_root():
            uid, gid = service_account()
            os.chown(self.base_dir, uid, gid)
            for parent in self.base_dir.parents:
                _require_traversable(parent, uid, gid)

    def _ensure_dirs(self) -> None:
        """The socket and log directories, owned by the servers' OS user."""
        for name in (SOCKET_DIR, LOG_DIR):
            path = self.base_dir / name
            path.mkdir(mode=0o755, exist_ok=True)
            if running_as_root():
                os.chown(path, *service_account())

    def _kill_quietly(self) -> None:
        for node in self.nodes:
            try:
                node.kill()
            except (ClusterError, OSError):
                pass

    # -- layout ------------------------------------------------------------------------

    def _node(self, spec: dict) -> Node:
        return Node(spec["name"], spec["port"], self.base_dir / spec["name"],
                    database=self.database, user=self.user, password=self.password,
                    bindir=self.bindir, socket_dir=self.base_dir / SOCKET_DIR,
                    log_path=self.base_dir / LOG_DIR / f"{spec['name']}.log")

    def _save_layout(self, complete: bool = False) -> None:
        layout = [{"name": s.name,
                   "primary": {"name": s.primary.name, "port": s.primary.port},
                   "replicas": [{"name": r.name, "port": r.port} for r in s.replicas]}
                  for s in self.shards]
        with self._layout_lock:
            (self.base_dir / LAYOUT_FILE).write_text(json.dumps(
                {"complete": complete, "shards": layout,
                 "options": {"durable": self.durable, "sync_replication": self.synchronous,
                             "extra_conf": self.extra_conf, "shard_conf": self.shard_conf}},
                indent=2))

    def _load_layout(self) -> list[dict] | None:
        path = self.base_dir / LAYOUT_FILE
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())["shards"]
        except (OSError, ValueError, KeyError) as exc:
            raise ClusterError(f"unreadable cluster layout {path}: {exc}") from None


def _plan_layout(shards: int, replicas: int, prefix: str, base_port: int | None) -> list[dict]:
    used: set[int] = set()

    def port(index: int) -> int:
        if base_port is not None:
            return base_port + index
        while (candidate := free_port()) in used:
            pass
        used.add(candidate)
        return candidate

    layout = []
    for i in range(shards):
        name = f"{prefix}{i}"
        first = i * (1 + replicas)
        layout.append({
            "name": name,
            "primary": {"name": f"{name}-primary", "port": port(first)},
            "replicas": [{"name": f"{name}-replica{j}", "port": port(first + j)}
                         for j in range(1, replicas + 1)],
        })
    return layout


def wait_caught_up(primary: Node, replica: Node, timeout: float = 60) -> None:
    """Wait until replica streams from primary and has replayed every commit made so far.

    Strategy: with synchronous_commit=off, recent commits may still sit in the primary's WAL
    buffers, and a trailing non-commit record may stay there indefinitely, so neither the
    write nor the insert LSN is a good target. A commit forced to disk (FLUSH_SCRIPT)
    flushes all WAL before it; the flush LSN after it is the target.
    """
    target = primary.psql_local(FLUSH_SCRIPT).strip()
    probe = ("SELECT coalesce((SELECT status = 'streaming' FROM pg_stat_wal_receiver), false)"
             f" AND pg_last_wal_replay_lsn() >= '{target}'::pg_lsn")
    deadline = time.monotonic() + timeout
    while True:
        try:
            if replica.psql(probe, timeout=10) == "t":
                return
        except ClusterError:
            pass  # not accepting connections yet
        if time.monotonic() > deadline:
            raise ClusterError(f"{replica.name} did not catch up with {primary.name} "
                               f"(LSN {target}) within {timeout:g}s\n--- last lines of "
                               f"{replica.log_path} ---\n{log_tail(replica.log_path)}")
        time.sleep(0.05)


def _require_traversable(path: Path, uid: int, gid: int) -> None:
    st = path.stat()
    if st.st_mode & stat.S_IXOTH:
        return
    if (st.st_uid == uid and st.st_mode & stat.S_IXUSR) or (
            st.st_gid == gid and st.st_mode & stat.S_IXGRP):
        return
    raise ClusterError(f"{path} is not traversable by the postgres OS user (mode "
                       f"{stat.filemode(st.st_mode)}); put the cluster elsewhere (e.g. "
                       "tempfile.mkdtemp(prefix='pgshard-') chmod 0755) or chmod o+x it")


def _parallel(fn: Callable[[T], object], items: Iterable[T]) -> None:
    """Run fn over items in threads; re-raise the first failure after all have finished."""
    items = list(items)
    if len(items) <= 1:
        for item in items:
            fn(item)
        return
    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        futures = [pool.submit(fn, item) for item in items]
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise errors[0]
