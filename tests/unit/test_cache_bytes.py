"""The statement cache and the analysis caches are bounded by bytes, not entries."""

from __future__ import annotations

import pytest

from pgshard.proxy.statements import StatementCache
from pgshard.sql import analysis, relations
from pgshard.sql.textmemo import ENTRY_OVERHEAD, text_memo


def _sql(i: int, size: int) -> str:
    return f"SELECT {i} AS n, '" + "x" * size + "' AS pad"


def test_statement_cache_stays_under_its_budget():
    cache = StatementCache(max_bytes=4 * 1024 * 1024)
    for i in range(40):   # 40 distinct statements of ~1 MB: 80 MB of text + Parse bytes
        cache.get(_sql(i, 1 << 20), (), named=bool(i % 2))
        assert cache.bytes <= cache.max_bytes
    assert 0 < len(cache) < 40
    # The newest survive; the oldest went first.
    assert cache.get(_sql(39, 1 << 20), (), named=True) is cache.get(_sql(39, 1 << 20), (),
                                                                     named=True)


def test_statement_weight_counts_text_and_parse_message():
    cache = StatementCache(max_bytes=1 << 30)
    st = cache.get(_sql(1, 100_000), (23, 25), named=True)
    assert st.weight >= len(st.sql) + len(st.parse_msg)
    assert cache.bytes == st.weight


def test_evicted_statement_keeps_working_for_its_holder():
    cache = StatementCache(max_bytes=300_000)
    held = cache.get(_sql(0, 100_000), (), named=True)
    for i in range(1, 10):
        cache.get(_sql(i, 100_000), (), named=True)
    again = cache.get(_sql(0, 100_000), (), named=True)
    assert again is not held                  # evicted, made anew…
    assert again.global_name == held.global_name   # …under the same global name
    assert held.parse_msg == again.parse_msg and held.plan == again.plan


def test_statement_heavier_than_budget_is_not_kept():
    cache = StatementCache(max_bytes=50_000)
    small = cache.get("SELECT 1", (), named=False)
    big = cache.get(_sql(0, 100_000), (), named=False)
    assert big.sql.endswith("' AS pad") and cache.bytes == small.weight
    assert cache.get("SELECT 1", (), named=False) is small


def test_invalidate_empties_and_renames():
    cache = StatementCache()
    a = cache.get("SELECT 1", (), named=True)
    cache.invalidate()
    assert cache.bytes == 0 and len(cache) == 0
    assert cache.get("SELECT 1", (), named=True).global_name != a.global_name


def test_text_memo_bounds_bytes_and_skips_large_texts():
    calls = []

    @text_memo(max_bytes=10_000, max_text=2_000, weigh=lambda out: len(out))
    def upper(sql, flag=False):
        calls.append(sql)
        return sql.upper()

    assert upper("abc") == "ABC" and upper("abc") == "ABC"
    assert calls == ["abc"]
    assert upper.cache.bytes == 3 + 3 + ENTRY_OVERHEAD
    big = "y" * 5_000
    upper(big)
    upper(big)
    assert calls.count(big) == 2 and len(upper.cache) == 1   # computed each time, not kept
    for i in range(100):
        upper(f"{i:04d}" * 400)                              # 1.6 KB each
        assert upper.cache.bytes <= 10_000
    upper.cache_clear()
    assert upper.cache.bytes == 0


@pytest.mark.parametrize("memo", [analysis._analyze, relations.user_relations])
def test_module_caches_are_byte_bounded(memo):
    memo.cache_clear()
    budget = memo.cache.max_bytes
    memo.cache.resize(1 << 20)
    try:
        _fill(memo)
    finally:
        memo.cache.resize(budget)


def _fill(memo):
    for i in range(200):
        text = f"SELECT * FROM t{i} WHERE a = '" + "z" * 60_000 + "'"
        if memo is analysis._analyze:
            analysis.analyze(text, {"t0": "id"})
        else:
            relations.user_relations(text)
        assert memo.cache.bytes <= 1 << 20
    assert 10 < len(memo.cache) < 200     # 200 texts of 60 KB do not fit in 1 MB
    huge = "SELECT 1 AS a, '" + "q" * 200_000 + "'"
    before = len(memo.cache)
    analysis.analyze(huge, {}) if memo is analysis._analyze else relations.user_relations(huge)
    assert len(memo.cache) == before    # large texts are not cached
