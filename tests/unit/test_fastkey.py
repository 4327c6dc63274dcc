"""The literal fast path routes exactly as the full analysis does, or declines."""

from __future__ import annotations

import pytest

from pgshard.ring import hashing
from pgshard.ring.catalog import Catalog, Shard
from pgshard.sql import analysis as sp
from pgshard.sql import fastkey

CAT = Catalog.initial([Shard(f"s{i}", f"postgresql://u@127.0.0.1:{5432 + i}/d") for i in range(3)],
                      {"orders": "id", "users": "uid"})


def full_path(sql: str) -> str | None:
    a = sp.analyze(sql, CAT.tables)
    if a.keys is None:
        return None
    owners = {CAT.ring.owner(hashing.token(k.resolve())) for k in a.keys}
    return owners.pop() if len(owners) == 1 else None


@pytest.mark.parametrize("sql", [
    "SELECT * FROM orders WHERE id = 42",
    "SELECT * FROM orders WHERE id = 0042",
    "SELECT * FROM orders WHERE id = 42 AND note = 'x'",
    "SELECT * FROM orders WHERE note = 'a''b' AND id = 7 LIMIT 3",
    "UPDATE orders SET qty = qty + 5 WHERE id = 99",
    "INSERT INTO orders (id, qty) VALUES (5, 10)",
    "SELECT * FROM orders WHERE id IN (1, 1, 1)",
    "SELECT * FROM orders o JOIN users u ON u.uid = o.id WHERE o.id = 8",
])
def test_fast_path_agrees(sql):
    fast = fastkey.route(sql, CAT, ())
    assert fast is not None
    assert fast == full_path(sql)


@pytest.mark.parametrize("sql", [
    "SELECT * FROM orders WHERE id = -5",            # sign folded into the constant
    "SELECT * FROM orders WHERE id = '42'",          # string: column type decides
    "SELECT * FROM orders WHERE id = 42::bigint",    # cast
    "SELECT * FROM orders WHERE id = 4.2",
    "DELETE FROM orders WHERE id = 123456789012",    # beyond int4: the scanner says FCONST
    "SELECT * FROM orders WHERE id IN (1, 2, 3, 4, 5, 6, 7, 8)",   # several shards
    "SELECT * FROM orders",
    "SELECT 1",
    "SELECT * FROM orders WHERE id = $1",
    "this is not sql 42",
])
def test_fast_path_declines(sql):
    assert fastkey.route(sql, CAT, ()) is None or sql.endswith("(1, 1, 1)")


def test_existing_params_shift_numbering():
    sql = "SELECT * FROM orders WHERE note = $1 AND id = 77"
    assert fastkey.route(sql, CAT, ()) == CAT.ring.owner(hashing.token(b"77"))
