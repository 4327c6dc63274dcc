"""Memoising a pure function of one SQL text (the analyses' caches), bounded by bytes.

Large texts are not kept: a cache of analyses must not be the reason a proxy holds
gigabytes of SQL (ByteLRU, pgshard.cache)."""

from __future__ import annotations

import functools
from collections.abc import Callable

from pgshard.cache import ByteLRU

# What an entry costs beyond its text: key tuple, result object, the LRU's bookkeeping.
ENTRY_OVERHEAD = 512


def text_memo(max_bytes: int, max_text: int, weigh: Callable[[object], int] | None = None):
    """Cache fn(sql, *rest) by all its (hashable) arguments; an entry weighs len(sql) plus
    weigh(result) plus a fixed overhead. Texts longer than max_text are computed every
    time (they are rare, and one would crowd out thousands of ordinary statements)."""

    def wrap(fn):
        cache = ByteLRU(max_bytes)
        missing = object()

        @functools.wraps(fn)
        def memo(sql: str, *rest):
            if len(sql) > max_text:
                return fn(sql, *rest)
            key = (sql, *rest) if rest else sql
            hit = cache.get(key, missing)
            if hit is not missing:
                return hit
            out = fn(sql, *rest)
            extra = weigh(out) if weigh is not None else 0
            cache.put(key, out, len(sql) + extra + ENTRY_OVERHEAD)
            return out

        memo.cache = cache
        memo.cache_clear = cache.clear
        return memo

    return wrap
