"""`pgshard demo --spares 1`: an empty cluster outside the catalog, listed in demo.json, that
the README's walk-through adds as a shard and splits a populated shard into."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import mmh3
import psycopg
import pytest

from pgshard.cluster import LocalCluster
from pgshard.cluster.process import free_port
from tests.fixtures.clusters import cluster_dir
from tests.fixtures.proxy import PGSHARD

pytestmark = pytest.mark.integration


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


def test_demo_spares_walkthrough():
    data_dir = Path(cluster_dir()) / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGSHARD_")}
    proc = subprocess.Popen(
        [PGSHARD, "demo", "--data-dir", str(data_dir), "--shards", "2", "--replicas", "0",
         "--spares", "1", "--port", "0", "--api-port", str(free_port())],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        state = _wait_for(data_dir / "demo.json", proc, timeout=180)
        assert [s["name"] for s in state["spares"]] == ["spare0"]
        spare = state["spares"][0]
        assert spare["replicas"] == []
        with psycopg.connect(spare["primary"], connect_timeout=5) as conn:
            assert conn.execute("SELECT pgshard.hash('42')").fetchone()[0] == \
                mmh3.hash(b"42", seed=0, signed=False)
            assert conn.execute("SELECT to_regclass('accounts')").fetchone()[0] is None
        with psycopg.connect(state["client_dsn"], autocommit=True) as conn:
            for i in range(200):
                conn.execute("INSERT INTO accounts VALUES (%s, %s, %s)", (i, f"o{i}", i))
        cli_env = {**env, "PGSHARD_API": state["api"],
                   "PGSHARD_CONFIG_DIR": str(data_dir / "cli")}

        def cli(*args, stdin=None):
            r = subprocess.run([PGSHARD, *args], env=cli_env, capture_output=True, text=True,
                               input=stdin, timeout=120)
            assert r.returncode == 0, (args, r.stdout, r.stderr)
            return r

        cli("login", "--user", state["admin_user"], "--password-stdin",
            stdin=state["admin_password"] + "\n")
        cli("shards", "add", "spare0", "--primary", spare["primary"])
        cli("reshard", "split", "shard0", "--into", "spare0", "--wait")
        with psycopg.connect(spare["primary"], connect_timeout=5) as conn:
            moved = conn.execute("SELECT count(*) FROM accounts").fetchone()[0]
        with psycopg.connect(state["client_dsn"], autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM accounts").fetchone()[0] == 200
            assert conn.execute("SELECT owner FROM accounts WHERE id = 7").fetchone()[0] == "o7"
        assert moved > 0
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
        LocalCluster(data_dir / "cluster", shards=2, replicas=0).destroy()
        LocalCluster(data_dir / "spares", shards=1, replicas=0, shard_prefix="spare").destroy()
        shutil.rmtree(data_dir.parent, ignore_errors=True)
