"""What the proxy's caches hold now (entries, bytes, byte budget), for /metrics and tests."""

from __future__ import annotations

from pgshard.sql import analysis, classify, relations


def cache_usage(proxy) -> dict[str, tuple[int, int, int]]:
    """{cache name: (entries, bytes, max bytes)} for every byte-bounded cache."""
    out = {}
    st = getattr(proxy, "statements", None)
    if st is not None:
        out["statements"] = (len(st), st.bytes, st.max_bytes)
    plans = getattr(classify, "_cache", None)   # the classifier's plan cache (a ByteLRU)
    if plans is not None and hasattr(plans, "max_bytes"):
        out["plans"] = (len(plans), plans.bytes, plans.max_bytes)
    for name, memo in (("analyses", analysis._analyze), ("relations", relations.user_relations)):
        c = memo.cache
        out[name] = (len(c), c.bytes, c.max_bytes)
    return out
