"""psql and pgbench through the proxy: real clients, real shards."""

from __future__ import annotations

import re
import subprocess

import pytest

from pgshard.ring import Ring, hashing
from tests.fixtures.proxy import env_without_pg


def psql(dsn: str, *args: str, input: str | None = None, check: bool = True,
         timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["psql", "-X", "-v", "ON_ERROR_STOP=1", "-A", "-t", dsn, *args],
                          input=input, capture_output=True, text=True, check=check,
                          env=env_without_pg(), timeout=timeout)


def pgbench(dsn: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["pgbench", "-n", *args, dsn], capture_output=True, text=True,
                          env=env_without_pg(), timeout=timeout)


@pytest.fixture(scope="module")
def kv_table(pg_cluster):
    for s in pg_cluster.shards:
        s.primary.psql("DROP TABLE IF EXISTS kv; CREATE TABLE kv (id bigint PRIMARY KEY, v text)")
    return "kv"


def test_psql_single_and_multi_statement(proxy2, kv_table):
    out = psql(proxy2.dsn(), "-c", "SELECT 40 + 2 /* shard: shard0 */").stdout
    assert out.strip() == "42"
    # A multi-statement string runs on one shard as one implicit transaction.
    out = psql(proxy2.dsn(), "-c",
               "INSERT INTO kv VALUES (7, 'seven'); SELECT v FROM kv WHERE id = 7 /* shard_key: 7 */").stdout
    assert out.split()[-1] == "seven" and "INSERT 0 1" in out


def test_rows_land_on_the_shard_the_ring_names(proxy2, pg_cluster, kv_table):
    ring = Ring.build([s.name for s in pg_cluster.shards])
    script = "".join(f"INSERT INTO kv VALUES ({i}, 'v{i}') /* shard_key: {i} */;\n"
                     for i in range(100, 300))
    psql(proxy2.dsn(), input=script)
    for s in pg_cluster.shards:
        ids = {int(x) for x in s.primary.psql("SELECT id FROM kv WHERE id >= 100").split()}
        expected = {i for i in range(100, 300)
                    if ring.owner(hashing.token(hashing.canonical_key(i))) == s.name}
        assert ids == expected, s.name
    # ... and reads by key find them again through the proxy.
    out = psql(proxy2.dsn(), "-c", "SELECT v FROM kv WHERE id = 250 /* shard_key: 250 */").stdout
    assert out.strip() == "v250"


def test_set_shard_key_routes_and_is_not_forwarded(proxy2, kv_table):
    script = """
SET pgshard.shard_key = '1001';
INSERT INTO kv VALUES (1001, 'a');
SELECT count(*) FROM kv WHERE id = 1001;
BEGIN;
SET LOCAL pgshard.shard_key = '1002';
INSERT INTO kv VALUES (1002, 'b');
COMMIT;
SET pgshard.shard_key = '1002';
SELECT v FROM kv WHERE id = 1002;
SHOW pgshard.shard_key;
"""
    r = psql(proxy2.dsn(), input=script)
    assert r.stdout.split() == ["SET", "INSERT", "0", "1", "1", "BEGIN", "SET", "INSERT", "0", "1",
                                "COMMIT", "SET", "b", "1002"], r.stdout


def test_no_key_on_multi_shard_is_a_clear_error(proxy2, kv_table):
    r = psql(proxy2.dsn(), "-c", "INSERT INTO kv VALUES (5, 'x')", check=False)
    assert r.returncode != 0
    assert "no shard key" in r.stderr and "HINT" in r.stderr


def test_cross_shard_transaction_with_psql(proxy2, pg_cluster, kv_table):
    ring = Ring.build([s.name for s in pg_cluster.shards])
    keys = {}
    for i in range(2000, 2100):
        keys.setdefault(ring.owner(hashing.token(str(i).encode())), i)
    a, b = list(keys.values())[:2]
    script = f"""
BEGIN;
INSERT INTO kv VALUES ({a}, 'a') /* shard_key: {a} */;
INSERT INTO kv VALUES ({b}, 'b') /* shard_key: {b} */;
COMMIT;
"""
    r = psql(proxy2.dsn(), input=script)
    assert r.stdout.split() == ["BEGIN", "INSERT", "0", "1", "INSERT", "0", "1", "COMMIT"]
    # Committed with two-phase commit: each row on its own shard, nothing left prepared.
    for key in (a, b):
        owner = next(s for s in pg_cluster.shards
                     if s.name == ring.owner(hashing.token(str(key).encode())))
        assert owner.primary.psql(f"SELECT v FROM kv WHERE id = {key}").strip() in ("a", "b")
    for s in pg_cluster.shards:
        assert s.primary.psql("SELECT count(*) FROM pg_prepared_xacts").strip() == "0"
    # The same script with ROLLBACK leaves neither row.
    for s in pg_cluster.shards:
        s.primary.psql("DELETE FROM kv")
    psql(proxy2.dsn(), input=script.replace("COMMIT", "ROLLBACK"))
    assert [s.primary.psql("SELECT count(*) FROM kv").strip() for s in pg_cluster.shards] \
        == ["0", "0"]


def test_psql_copy_both_ways(proxy2, kv_table, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("".join(f"{i},row{i}\n" for i in range(5000, 6000)))
    dst = tmp_path / "out.csv"
    psql(proxy2.dsn(), "-c", f"\\copy kv FROM '{src}' WITH (FORMAT csv) /* shard: shard1 */")
    psql(proxy2.dsn(), "-c",
         f"\\copy (SELECT * FROM kv WHERE id >= 5000 ORDER BY id /* shard: shard1 */) TO '{dst}' WITH (FORMAT csv)")
    assert dst.read_text() == src.read_text()


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
@pytest.mark.parametrize("builtin", ["-S", "-N"])
def test_pgbench_one_shard_builtin(proxy1, pgbench_tables, mode, builtin):
    """pgbench's own scripts, unmodified, 16 clients over a pool of 4 (user app)."""
    r = pgbench(proxy1.dsn(), builtin, "-M", mode, "-c", "16", "-j", "2", "-T", "3")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "number of failed transactions: 0" in r.stdout
    tps = float(re.search(r"tps = ([\d.]+)", r.stdout).group(1))
    assert tps > 0


HINTED = {
    "simple": "\\set aid random(1, 100000)\n"
              "SELECT abalance FROM pgbench_accounts WHERE aid = :aid /* shard_key: :aid */;\n",
    "param": "\\set aid random(1, 100000)\n\\set delta random(-5000, 5000)\nBEGIN;\n"
             "UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid /* shard_key_param: 2 */;\n"
             "SELECT abalance FROM pgbench_accounts WHERE aid = :aid /* shard_key_param: 1 */;\n"
             "END;\n",
}


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_two_shards_hinted(proxy2, pgbench_tables, mode, tmp_path):
    script = tmp_path / "s.sql"
    script.write_text(HINTED["simple"] if mode == "simple" else HINTED["param"])
    r = pgbench(proxy2.dsn(), "-f", str(script), "-M", mode, "-c", "16", "-j", "2", "-T", "3")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "number of failed transactions: 0" in r.stdout
