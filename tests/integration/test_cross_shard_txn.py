"""Transactions across shards: committed with two-phase commit, atomic, through real drivers.

Every check of where rows are is made on each primary directly, never through the proxy.
"""

from __future__ import annotations

import asyncio
import random
import time

import asyncpg
import psycopg
import pytest

from pgshard.ring import Ring, hashing
from tests.fixtures.proxy import ProxyProcess
from tests.integration.conftest import USERS, _shards

TABLE = "xs_accounts"
DDL = (f"DROP TABLE IF EXISTS {TABLE}; CREATE TABLE {TABLE} (id bigint PRIMARY KEY, "
       "owner text, balance int NOT NULL DEFAULT 0, "
       "tag text UNIQUE DEFERRABLE INITIALLY DEFERRED)")


def _config(cluster, **proxy) -> dict:
    return {"proxy": {"database": "app", "pool_size": 6, "query_wait_timeout": 10, **proxy},
            "users": USERS, "shards": _shards(cluster),
            "tables": [{"name": TABLE, "shard_key": "id"}]}


@pytest.fixture(scope="module")
def env(pg_cluster):
    for s in pg_cluster.shards:
        s.primary.psql(DDL)
    names = [s.name for s in pg_cluster.shards]
    ring = Ring.build(names)
    keys: dict[str, list[int]] = {n: [] for n in names}
    k = 5000
    while min(len(v) for v in keys.values()) < 40:
        keys[ring.owner(hashing.token(hashing.canonical_key(k)))].append(k)
        k += 1
    with ProxyProcess(_config(pg_cluster)) as p:
        yield p, pg_cluster, keys


def _clear(cluster) -> None:
    for s in cluster.shards:
        s.primary.psql(f"TRUNCATE {TABLE}")


def _rows(cluster) -> dict[str, set[int]]:
    out = {}
    for s in cluster.shards:
        got = s.primary.psql(f"SELECT id FROM {TABLE} ORDER BY id").split()
        out[s.name] = {int(x) for x in got}
    return out


def _no_prepared(cluster) -> None:
    for s in cluster.shards:
        assert s.primary.psql("SELECT count(*) FROM pg_prepared_xacts").strip() == "0"


async def test_explicit_transaction_commits_on_both_shards(env):
    proxy, cluster, keys = env
    _clear(cluster)
    a, b = keys["shard0"][0], keys["shard1"][0]
    c = await asyncpg.connect(proxy.dsn())
    try:
        async with c.transaction():
            await c.execute(f"INSERT INTO {TABLE} (id, owner) VALUES ($1, 'a')", a)
            await c.execute(f"INSERT INTO {TABLE} (id, owner) VALUES ($1, 'b')", b)
            # reads inside the transaction see its own writes on every shard
            assert await c.fetchval(f"SELECT count(*) FROM {TABLE}") == 2
    finally:
        await c.close()
    assert _rows(cluster) == {"shard0": {a}, "shard1": {b}}
    _no_prepared(cluster)


def test_simple_protocol_transaction_and_rollback(env):
    proxy, cluster, keys = env
    _clear(cluster)
    a, b = keys["shard0"][1], keys["shard1"][1]
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("BEGIN")
        conn.execute(f"INSERT INTO {TABLE} (id) VALUES ({a})")
        conn.execute(f"INSERT INTO {TABLE} (id) VALUES ({b})")
        conn.execute("ROLLBACK")
        assert _rows(cluster) == {"shard0": set(), "shard1": set()}
        conn.execute("BEGIN")
        conn.execute(f"INSERT INTO {TABLE} (id) VALUES ({a})")
        conn.execute(f"INSERT INTO {TABLE} (id) VALUES ({b})")
        conn.execute("COMMIT")
    assert _rows(cluster) == {"shard0": {a}, "shard1": {b}}
    _no_prepared(cluster)


async def test_error_on_the_second_shard_leaves_nothing_on_the_first(env):
    proxy, cluster, keys = env
    _clear(cluster)
    a, b = keys["shard0"][2], keys["shard1"][2]
    cluster.shards[1].primary.psql(f"INSERT INTO {TABLE} (id) VALUES ({b})")
    c = await asyncpg.connect(proxy.dsn())
    try:
        with pytest.raises(asyncpg.UniqueViolationError):
            async with c.transaction():
                await c.execute(f"INSERT INTO {TABLE} (id) VALUES ($1)", a)
                await c.execute(f"INSERT INTO {TABLE} (id) VALUES ($1)", b)
        assert await c.fetchval("SELECT 1") == 1   # the session is usable afterwards
    finally:
        await c.close()
    assert _rows(cluster) == {"shard0": set(), "shard1": {b}}
    _no_prepared(cluster)


async def test_failure_at_prepare_rolls_back_every_shard(env):
    """A deferred unique violation fires at PREPARE TRANSACTION on shard1: COMMIT fails and
    shard0, which prepared fine, has nothing either."""
    proxy, cluster, keys = env
    _clear(cluster)
    a, b = keys["shard0"][3], keys["shard1"][3]
    cluster.shards[1].primary.psql(f"INSERT INTO {TABLE} (id, tag) VALUES ({b + 1000000}, 'x')")
    c = await asyncpg.connect(proxy.dsn())
    try:
        with pytest.raises(asyncpg.UniqueViolationError, match="shard1"):
            async with c.transaction():
                await c.execute(f"INSERT INTO {TABLE} (id) VALUES ($1)", a)
                await c.execute(f"INSERT INTO {TABLE} (id, tag) VALUES ($1, 'x')", b)
    finally:
        await c.close()
    assert _rows(cluster) == {"shard0": set(), "shard1": {b + 1000000}}
    _no_prepared(cluster)


def test_update_and_delete_without_a_key_run_everywhere(env):
    proxy, cluster, keys = env
    _clear(cluster)
    ids = keys["shard0"][4:7] + keys["shard1"][4:8]
    for i in ids:
        cluster.shards[0 if i in keys["shard0"] else 1].primary.psql(
            f"INSERT INTO {TABLE} (id, balance) VALUES ({i}, 10)")
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        cur = conn.execute(f"UPDATE {TABLE} SET balance = balance + 1")
        assert cur.rowcount == len(ids)
        cur = conn.execute(f"UPDATE {TABLE} SET balance = 0 WHERE balance = 11 RETURNING id")
        assert sorted(r[0] for r in cur.fetchall()) == sorted(ids)
        with conn.transaction():
            cur = conn.execute(f"DELETE FROM {TABLE} WHERE balance = 0 AND id % 2 = 0")
            deleted = cur.rowcount
        assert deleted == sum(1 for i in ids if i % 2 == 0)
        # the extended protocol too, committed (not left open) when it ends
        cur = conn.execute(f"UPDATE {TABLE} SET balance = %s", (5,))
        assert cur.rowcount == len(ids) - deleted
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    left = _rows(cluster)
    assert left["shard0"] | left["shard1"] == {i for i in ids if i % 2}
    assert {s.primary.psql(f"SELECT DISTINCT balance FROM {TABLE}").strip()
            for s in cluster.shards} == {"5"}
    _no_prepared(cluster)


def test_multi_row_insert_inside_a_transaction(env):
    proxy, cluster, keys = env
    _clear(cluster)
    a, b = keys["shard0"][8], keys["shard1"][8]
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("BEGIN")
        conn.execute(f"INSERT INTO {TABLE} (id) VALUES ({a}), ({b})")
        assert conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0] == 2
        conn.execute("COMMIT")
        cur = conn.execute(f"INSERT INTO {TABLE} (id) VALUES ({a + 1000000}), ({b + 1000000}) "
                           "RETURNING id")
        assert cur.rowcount == 2
    got = _rows(cluster)
    assert a in got["shard0"] and b in got["shard1"]
    _no_prepared(cluster)


def test_two_phase_commit_off_refuses_clearly(pg_cluster):
    with ProxyProcess(_config(pg_cluster, two_phase_commit=False)) as proxy:
        names = [s.name for s in pg_cluster.shards]
        ring = Ring.build(names)
        k0 = next(k for k in range(1, 10000)
                  if ring.owner(hashing.token(hashing.canonical_key(k))) == "shard0")
        k1 = next(k for k in range(1, 10000)
                  if ring.owner(hashing.token(hashing.canonical_key(k))) == "shard1")
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            conn.execute("BEGIN")
            conn.execute(f"SELECT * FROM {TABLE} WHERE id = {k0}")
            with pytest.raises(psycopg.errors.FeatureNotSupported, match="two_phase_commit"):
                conn.execute(f"SELECT * FROM {TABLE} WHERE id = {k1}")
            conn.execute("ROLLBACK")
            with pytest.raises(psycopg.errors.FeatureNotSupported, match="two_phase_commit"):
                conn.execute(f"UPDATE {TABLE} SET balance = 1")


async def test_bank_transfers_keep_the_total(env):
    """Concurrent transfers between random accounts on both shards for 20 s: the total
    never changes, and no prepared transaction is left behind."""
    proxy, cluster, keys = env
    _clear(cluster)
    accounts = keys["shard0"][10:25] + keys["shard1"][10:25]
    for i in accounts:
        cluster.shards[0 if i in keys["shard0"] else 1].primary.psql(
            f"INSERT INTO {TABLE} (id, balance) VALUES ({i}, 1000)")
    total = 1000 * len(accounts)
    # `many` has a pool of 10 per shard: each client holds at most one server per shard, so
    # the 7 clients never wait on each other for a server (with fewer servers than clients,
    # two transactions holding one shard each and waiting for the other's can only end by
    # query_wait_timeout).
    dsn = proxy.dsn(user="many", password="many-secret")
    stop = time.monotonic() + 20
    done = {"ok": 0, "retry": 0}

    async def worker(seed: int) -> None:
        rnd = random.Random(seed)
        c = await asyncpg.connect(dsn)
        try:
            while time.monotonic() < stop:
                x, y = rnd.sample(accounts, 2)
                amount = rnd.randint(1, 50)
                # Rows locked in id order, as an application avoids deadlocks: a deadlock
                # between two shards is invisible to each shard's own detector.
                steps = sorted([(x, -amount), (y, amount)])
                try:
                    async with c.transaction():
                        for key, delta in steps:
                            await c.execute(f"UPDATE {TABLE} SET balance = balance + $2 "
                                            "WHERE id = $1", key, delta)
                    done["ok"] += 1
                except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
                    done["retry"] += 1
        finally:
            await c.close()

    async def auditor() -> list[int]:
        seen = []
        c = await asyncpg.connect(dsn)
        try:
            while time.monotonic() < stop:
                seen.append(await c.fetchval(f"SELECT sum(balance) FROM {TABLE}"))
                await asyncio.sleep(0.5)
        finally:
            await c.close()
        return seen

    results = await asyncio.gather(*(worker(i) for i in range(6)), auditor())
    assert done["ok"] > 50, done
    on_shards = sum(int(s.primary.psql(f"SELECT coalesce(sum(balance), 0) FROM {TABLE}"))
                    for s in cluster.shards)
    assert on_shards == total
    print(f"bank: {done['ok']} transfers, {done['retry']} deadlocks retried; fan-out sums "
          f"seen {len(results[-1])} (not snapshot-consistent across shards)")
    _no_prepared(cluster)


# -- pipelines across shards: one implicit transaction, committed at the Sync -------------

async def test_asyncpg_executemany_over_every_shard(env):
    proxy, cluster, keys = env
    _clear(cluster)
    ids = keys["shard0"][26:32] + keys["shard1"][26:32]
    random.Random(7).shuffle(ids)
    c = await asyncpg.connect(proxy.dsn())
    try:
        await c.executemany(f"INSERT INTO {TABLE} (id, owner) VALUES ($1, $2)",
                            [(i, f"o{i}") for i in ids])
        assert await c.fetchval(f"SELECT count(*) FROM {TABLE}") == len(ids)
        # one of them already exists: the whole batch is rolled back, on both shards
        again = [keys["shard0"][33], keys["shard1"][33], ids[0]]
        with pytest.raises(asyncpg.UniqueViolationError):
            await c.executemany(f"INSERT INTO {TABLE} (id) VALUES ($1)", [(i,) for i in again])
        async with c.transaction():
            await c.executemany(f"UPDATE {TABLE} SET balance = $2 WHERE id = $1",
                                [(i, 7) for i in ids])
    finally:
        await c.close()
    got = _rows(cluster)
    assert got == {"shard0": {i for i in ids if i in keys["shard0"]},
                   "shard1": {i for i in ids if i in keys["shard1"]}}
    assert sum(int(s.primary.psql(f"SELECT sum(balance) FROM {TABLE}")) for s in cluster.shards) \
        == 7 * len(ids)
    _no_prepared(cluster)


@pytest.mark.parametrize("autocommit", [True, False])
def test_psycopg_pipeline_mode(env, autocommit):
    proxy, cluster, keys = env
    _clear(cluster)
    ids = keys["shard0"][34:38] + keys["shard1"][34:38]
    with psycopg.connect(proxy.dsn(), autocommit=autocommit) as conn:
        with conn.pipeline():
            cur = conn.cursor()
            for i in ids:
                cur.execute(f"INSERT INTO {TABLE} (id, owner) VALUES (%s, %s) RETURNING id",
                            (i, "p"))
            cur.execute(f"SELECT count(*) FROM {TABLE} WHERE id = %s", (ids[-1],))
            assert cur.fetchone() == (1,)
        if not autocommit:
            conn.commit()
        with pytest.raises(psycopg.errors.UniqueViolation):
            with conn.pipeline():
                conn.execute(f"INSERT INTO {TABLE} (id) VALUES (%s)", (keys["shard0"][39],))
                conn.execute(f"INSERT INTO {TABLE} (id) VALUES (%s)", (ids[-1],))
        if not autocommit:
            conn.rollback()
    got = _rows(cluster)
    assert got["shard0"] | got["shard1"] == set(ids)
    _no_prepared(cluster)


# -- COPY FROM STDIN split by key ----------------------------------------------------------

@pytest.mark.parametrize("fmt", ["text", "csv", "binary"])
def test_copy_from_stdin_every_row_on_its_owner(env, fmt):
    proxy, cluster, keys = env
    _clear(cluster)
    ids = list(range(20000, 20400))
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        cur = conn.cursor()
        opts = "" if fmt == "text" else f" WITH (FORMAT {fmt})"
        with cur.copy(f"COPY {TABLE} (owner, id, balance) FROM STDIN{opts}") as cp:
            if fmt == "binary":
                cp.set_types(["text", "int8", "int4"])
            for i in ids:
                if fmt == "csv":   # psycopg's write_row speaks text and binary only
                    cp.write(f'"o,{i}",{i},{i % 100}\n' if i % 7 else f",{i},{i % 100}\n")
                else:
                    cp.write_row((f"o{i}" if i % 7 else None, i, i % 100))
        assert cur.statusmessage == f"COPY {len(ids)}"
    ring = Ring.build([s.name for s in cluster.shards])
    want: dict[str, set[int]] = {s.name: set() for s in cluster.shards}
    for i in ids:
        want[ring.owner(hashing.token(hashing.canonical_key(i)))].add(i)
    assert _rows(cluster) == want
    _no_prepared(cluster)


def test_psql_copy_without_a_column_list(env, tmp_path):
    from tests.integration.test_proxy_psql_pgbench import psql
    proxy, cluster, keys = env
    _clear(cluster)
    src = tmp_path / "rows.csv"
    src.write_text("".join(f"{i},o{i},{i % 9},\n" for i in range(30000, 30300)))
    out = psql(proxy.dsn(), "-c", f"\\copy {TABLE} FROM '{src}' WITH (FORMAT csv)")
    assert out.stdout.strip() == "COPY 300"
    got = _rows(cluster)
    assert got["shard0"] and got["shard1"]
    assert got["shard0"] | got["shard1"] == set(range(30000, 30300))


def test_copy_is_atomic(env):
    proxy, cluster, keys = env
    _clear(cluster)
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        cur = conn.cursor()
        # a bad row on one shard: nothing stays on either
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            with cur.copy(f"COPY {TABLE} (id, balance) FROM STDIN") as cp:
                for i in range(40000, 40100):
                    cp.write(f"{i}\t{i}\n")
                cp.write("40100\tnot-a-number\n")
        # the client gives up (psycopg sends CopyFail, then raises the client's error)
        with pytest.raises(RuntimeError):
            with cur.copy(f"COPY {TABLE} (id) FROM STDIN") as cp:
                for i in range(41000, 41100):
                    cp.write_row((i,))
                raise RuntimeError("client gives up")
        assert conn.execute("SELECT 1").fetchone() == (1,)
        # inside a transaction, rolled back
        conn.execute("BEGIN")
        with cur.copy(f"COPY {TABLE} (id) FROM STDIN") as cp:
            for i in range(42000, 42100):
                cp.write_row((i,))
        assert conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone() == (100,)
        conn.execute("ROLLBACK")
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert _rows(cluster) == {"shard0": set(), "shard1": set()}
    _no_prepared(cluster)


def test_psycopg_extended_multi_row_insert_with_returning(env):
    proxy, cluster, keys = env
    _clear(cluster)
    a, b, c = keys["shard0"][0], keys["shard1"][0], keys["shard0"][1]
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        cur = conn.execute(f"INSERT INTO {TABLE} (id, owner) VALUES (%s, %s), (%s, %s), "
                           "(%s, %s) RETURNING id, owner", (a, "a", b, "b", c, "c"))
        assert cur.rowcount == 3
        assert sorted(cur.fetchall()) == sorted([(a, "a"), (b, "b"), (c, "c")])
        cur = conn.execute(f"INSERT INTO {TABLE} (id, owner) VALUES (%s, %s), (%s, %s)",
                           (a + 1000000, "x", b + 1000000, "y"), binary=True)
        assert cur.rowcount == 2
        with conn.transaction():
            conn.execute(f"INSERT INTO {TABLE} (id) VALUES (%s), (%s)", (a + 2000000, b + 2000000))
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(f"INSERT INTO {TABLE} (id) VALUES (%s), (%s)", (a + 3000000, b))
    ring = Ring.build([s.name for s in cluster.shards])
    want: dict[str, set[int]] = {s.name: set() for s in cluster.shards}
    for i in (a, b, c, a + 1000000, b + 1000000, a + 2000000, b + 2000000):
        want[ring.owner(hashing.token(hashing.canonical_key(i)))].add(i)
    assert _rows(cluster) == want
    _no_prepared(cluster)


def test_savepoints_apply_on_every_participant(env):
    proxy, cluster, keys = env
    _clear(cluster)
    a, b, c = keys["shard0"][0], keys["shard1"][0], keys["shard1"][1]
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("BEGIN")
        conn.execute(f"INSERT INTO {TABLE} (id) VALUES ({a})")
        conn.execute(f"INSERT INTO {TABLE} (id) VALUES ({b})")   # now on both shards
        conn.execute("SAVEPOINT s1")
        conn.execute(f"INSERT INTO {TABLE} (id) VALUES ({a + 1000000}), ({c})")
        conn.execute("ROLLBACK TO SAVEPOINT s1")
        conn.execute(f"UPDATE {TABLE} SET balance = 5")
        conn.execute("COMMIT")
        # a shard reached only after the SAVEPOINT gets it too
        conn.execute("BEGIN")
        conn.execute(f"UPDATE {TABLE} SET balance = 6 WHERE id = {a}")
        conn.execute("SAVEPOINT s2")
        conn.execute(f"UPDATE {TABLE} SET balance = 7 WHERE id = {b}")
        conn.execute("ROLLBACK TO s2")
        conn.execute("COMMIT")
    assert _rows(cluster) == {"shard0": {a}, "shard1": {b}}
    bal = {s.name: s.primary.psql(f"SELECT balance FROM {TABLE}").strip() for s in cluster.shards}
    assert bal == {"shard0": "6", "shard1": "5"}
    _no_prepared(cluster)


async def test_deadlock_across_shards_is_broken(env):
    """Two transactions lock a row on each shard in opposite orders: each shard sees one
    wait, the router sees the cycle and cancels the newer one; the other then commits."""
    proxy, cluster, keys = env
    _clear(cluster)
    a, a2 = keys["shard0"][:2]
    b, b2 = keys["shard1"][:2]
    for i, s in ((a, 0), (a2, 0), (b, 1), (b2, 1)):
        cluster.shards[s].primary.psql(f"INSERT INTO {TABLE} (id, balance) VALUES ({i}, 0)")
    c1 = await asyncpg.connect(proxy.dsn())
    c2 = await asyncpg.connect(proxy.dsn())
    try:
        t1, t2 = c1.transaction(), c2.transaction()
        await t1.start()
        await t2.start()
        update = f"UPDATE {TABLE} SET balance = $2 WHERE id = $1"
        await c1.execute(update, a, 1)
        await c1.execute(update, b2, 1)     # c1 is on both shards now
        await c2.execute(update, b, 2)
        await c2.execute(update, a2, 2)     # and so is c2
        w1 = asyncio.ensure_future(c1.execute(update, b, 1))    # waits for c2
        await asyncio.sleep(0.3)
        w2 = asyncio.ensure_future(c2.execute(update, a, 2))    # waits for c1: a cycle
        done, _ = await asyncio.wait([w1, w2], timeout=30, return_when=asyncio.FIRST_COMPLETED)
        assert done == {w2}, "the newer transaction is the one cancelled"
        with pytest.raises(asyncpg.QueryCanceledError):
            w2.result()
        await t2.rollback()
        await asyncio.wait_for(w1, 30)
        await t1.commit()
    finally:
        await c1.close()
        await c2.close()
    bal = {int(x.split("|")[0]): int(x.split("|")[1]) for s in cluster.shards
           for x in s.primary.psql(f"SELECT id, balance FROM {TABLE}").split()}
    assert bal == {a: 1, a2: 0, b: 1, b2: 1}
    _no_prepared(cluster)


def test_a_refusal_inside_a_cross_shard_transaction_fails_it(env):
    """An error the proxy raises inside a multi-shard transaction puts it in the failed state,
    as PostgreSQL would: the status says E, COMMIT rolls back, nothing stays."""
    proxy, cluster, keys = env
    _clear(cluster)
    a, b = keys["shard0"][0], keys["shard1"][0]
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("BEGIN")
        conn.execute(f"INSERT INTO {TABLE} (id) VALUES ({a})")
        conn.execute(f"INSERT INTO {TABLE} (id) VALUES ({b})")
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="shard key column"):
            conn.execute(f"UPDATE {TABLE} SET id = id + 1 WHERE id = {a}")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute(f"SELECT count(*) FROM {TABLE}")
        cur = conn.execute("COMMIT")
        assert cur.statusmessage == "ROLLBACK"
    assert _rows(cluster) == {"shard0": set(), "shard1": set()}
    _no_prepared(cluster)
