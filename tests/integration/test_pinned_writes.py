"""An explicit shard choice never puts a row where its key cannot find it."""

from __future__ import annotations

import asyncpg
import psycopg
import pytest

from tests.integration.test_txn_integrity import _on_primaries, env  # noqa: F401


@pytest.mark.parametrize("how", [
    "/* shard: {wrong} */ INSERT INTO accounts VALUES ({k}, 'pin', 0)",
    "/* shard: {wrong} */ INSERT INTO accounts (owner, id, balance) VALUES ('pin', {k}, 0)",
    "INSERT INTO accounts VALUES ({k}, 'hint', 0) /* shard_key: {other} */",
    "/* shard: {wrong} */ UPDATE accounts SET balance = 1 WHERE id = {k}",
    "/* shard: {wrong} */ DELETE FROM accounts WHERE id = {k}",
])
def test_pinned_write_to_the_wrong_shard_is_refused(env, how):  # noqa: F811
    proxy, cluster, keys = env
    k, other = keys["shard1"][2], keys["shard0"][2]
    sql = how.format(wrong="shard0", k=k, other=other)
    with psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=10) as conn:
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="out of reach"):
            conn.execute(sql)
        assert sum(_on_primaries(cluster, k).values()) == 0
        # The same statement pinned to the right shard, or left to the key, works.
        conn.execute(how.format(wrong="shard1", k=k, other=k))
        conn.execute(f"DELETE FROM accounts WHERE id = {k}")


async def test_pinned_write_with_a_bound_key_and_session_pins(env):  # noqa: F811
    proxy, cluster, keys = env
    k = keys["shard1"][3]
    conn = await asyncpg.connect(proxy.dsn())
    try:
        with pytest.raises(asyncpg.FeatureNotSupportedError, match="out of reach"):
            await conn.execute("/* shard: shard0 */ INSERT INTO accounts VALUES ($1, 'p', 0)", k)
        await conn.execute("SET pgshard.shard = 'shard0'")
        with pytest.raises(asyncpg.FeatureNotSupportedError, match="SET pgshard.shard"):
            await conn.execute("INSERT INTO accounts VALUES ($1, 'p', 0)", k)
        # Reads under a pin are not checked (shard0 simply has no such row).
        assert await conn.fetchval("SELECT count(*) FROM accounts WHERE id = $1", k) == 0
        await conn.execute("RESET pgshard.shard")
        await conn.execute("INSERT INTO accounts VALUES ($1, 'p', 0)", k)
        assert _on_primaries(cluster, k) == {"shard0": 0, "shard1": 1}
        await conn.execute("DELETE FROM accounts WHERE id = $1", k)
    finally:
        await conn.close()
