"""Durability of the harness: LocalCluster(durable=True) and `pgshard demo --durable` run
PostgreSQL with fsync, synchronous_commit and full_page_writes on, on primaries and replicas,
and a killed durable primary keeps every acknowledged row; the default stays fast (off)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from pgshard.cluster import LocalCluster, Node
from pgshard.cluster.process import free_port
from tests.fixtures.clusters import cluster_dir, temp_cluster

pytestmark = pytest.mark.integration

SETTINGS = ("fsync", "synchronous_commit", "full_page_writes")
PGSHARD = str(Path(sys.executable).with_name("pgshard"))


def durability(node: Node) -> dict[str, str]:
    return {name: node.psql(f"SHOW {name}") for name in SETTINGS}


def assert_all(cluster: LocalCluster, value: str) -> None:
    assert cluster.nodes and any(n.is_in_recovery() for n in cluster.nodes)
    for node in cluster.nodes:
        assert durability(node) == dict.fromkeys(SETTINGS, value), node.name


def test_default_cluster_is_fast(pg_cluster):
    assert_all(pg_cluster, "off")


def test_durable_cluster_and_restart_with_other_options():
    with temp_cluster(shards=1, replicas=1, durable=True) as cluster:
        assert_all(cluster, "on")
        cluster.stop()
        # The options of the LocalCluster that starts a base_dir apply, whoever created it.
        fast = LocalCluster(cluster.base_dir, shards=1, replicas=1)
        fast.start()
        assert_all(fast, "off")
        fast.stop()
        again = LocalCluster(cluster.base_dir, shards=1, replicas=1, durable=True)
        again.start()
        assert_all(again, "on")


def test_killed_durable_primary_keeps_every_acknowledged_row():
    with temp_cluster(shards=1, replicas=0, durable=True) as cluster:
        primary = cluster.shards[0].primary
        primary.psql("CREATE TABLE acked (id bigint PRIMARY KEY, writer int)")
        acked: list[int] = []
        lock = threading.Lock()
        stop = threading.Event()

        def writer(w: int) -> None:
            try:
                with psycopg.connect(primary.dsn, autocommit=True, connect_timeout=5) as conn:
                    for i in range(1_000_000):
                        if stop.is_set():
                            return
                        key = w * 10_000_000 + i
                        conn.execute("INSERT INTO acked VALUES (%s, %s)", (key, w))
                        with lock:
                            acked.append(key)
            except psycopg.Error:
                return  # the server went away mid-statement: that row was never acknowledged

        threads = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(acked) < 2000 and time.monotonic() < deadline:
            time.sleep(0.05)
        primary.kill()
        stop.set()
        for t in threads:
            t.join(timeout=30)
            assert not t.is_alive()
        assert len(acked) >= 2000
        primary.start()
        present = {int(x) for x in primary.psql("SELECT id FROM acked").split()}
        lost = set(acked) - present
        assert not lost, f"{len(lost)} of {len(acked)} acknowledged rows lost"


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"demo exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            time.sleep(0.1)
    raise AssertionError(f"no {path} within {timeout}s")


def _run_demo(data_dir: Path, *flags: str) -> tuple[dict[str, str], str]:
    """Start `pgshard demo` (1 shard, no replica, ephemeral ports), read the shard's
    durability settings once it is ready, stop it with Ctrl-C; (settings, its output)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGSHARD_")}
    proc = subprocess.Popen(
        [PGSHARD, "demo", "--data-dir", str(data_dir), "--shards", "1", "--replicas", "0",
         "--port", "0", "--api-port", str(free_port()), *flags],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        state = _wait_for(data_dir / "demo.json", proc, timeout=120)
        with psycopg.connect(state["shards"][0]["primary"], connect_timeout=5) as conn:
            settings = {name: conn.execute(f"SHOW {name}").fetchone()[0] for name in SETTINGS}
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode == 0, output
    return settings, output


def test_demo_durable_flag():
    data_dir = Path(cluster_dir()) / "demo"
    try:
        settings, output = _run_demo(data_dir, "--durable")
        assert settings == dict.fromkeys(SETTINGS, "on")
        assert "fsync off" not in output
        # A re-run on the same data dir without the flag is fast again, and says so.
        settings, output = _run_demo(data_dir)
        assert settings == dict.fromkeys(SETTINGS, "off")
        assert "fsync off for speed; a crash can lose committed data" in output
    finally:
        LocalCluster(data_dir / "cluster", shards=1, replicas=0).destroy()
        shutil.rmtree(data_dir.parent, ignore_errors=True)
