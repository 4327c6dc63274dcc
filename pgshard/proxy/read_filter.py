"""Exact fan-out reads during resharding: while the catalog lists shards that hold rows of
ranges they do not own (`Catalog.filter_reads`: a job's source and destination between its
copy and its cleanup), a fan-out read asks every serving shard and each listed shard
answers only for the ranges it owns in the catalog, so a row on two shards counts once.

The fan-out paths (pgshard.proxy.fanout) pass their messages through `per_shard` just
before they run them.
"""

from __future__ import annotations

from pgshard.protocol import messages as m
from pgshard.protocol.replies import X_PARSE, X_QUERY
from pgshard.sql.copy_out import restricted
from pgshard.sql.restrict import restrict_cached


def per_shard(session, fan, parts):
    """parts unchanged, or {shard: parts} with the Query/Parse SQL of each listed shard
    restricted to its own ranges (fan.shards widened to every serving shard)."""
    cat = session.proxy.catalog
    if fan.kind not in ("read", "copy_out") or not cat.filter_reads or isinstance(parts, dict):
        return parts
    shards = sorted(set(fan.shards) | set(cat.serving_shards()))
    fan.shards = shards
    out = {}
    for sh in shards:
        if sh not in cat.filter_reads:
            out[sh] = parts
            continue
        mine = []
        for msg, kind, swallow in parts:
            if kind == X_QUERY and fan.kind == "copy_out":   # as COPY (SELECT … restricted)
                sql = m.decode_query(msg[5:])
                msg = m.query(restricted(sql, lambda q, sh=sh: restrict_cached(q, cat, sh)))
            elif kind == X_QUERY:
                sql = m.decode_query(msg[5:])
                msg = m.query(restrict_cached(sql, cat, sh))
            elif kind == X_PARSE:
                p = m.decode_parse(msg[5:])
                msg = m.parse(p.name, restrict_cached(p.sql, cat, sh), p.oids)
            mine.append((msg, kind, swallow))
        out[sh] = mine
    return out
