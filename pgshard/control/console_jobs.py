"""The console's read-only views of resharding: the ranges active jobs are moving (for the
ring view) and a dry run of a job request (what it would move, for the confirmation)."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from aiohttp import web

from pgshard.config import dsn_address
from pgshard.control.errors import BadRequest, Conflict, NotFound, ServiceUnavailable, Unprocessable
from pgshard.control.routes import Route, ok, plane
from pgshard.reshard.job import KINDS, JobError, plan
from pgshard.reshard.records import JobStore
from pgshard.ring.ring import MAX_TOKEN
from pgshard.store import StoreError

log = logging.getLogger("pgshard.control")

TOKEN_SPACE = MAX_TOKEN + 1
ESTIMATE_TIMEOUT = 2.0    # seconds to ask a source shard for its tables' live row counts


def moves_view(moves) -> list[dict]:
    return [{"lo": m.lo, "hi": m.hi, "src": m.src, "dst": m.dst} for m in moves]


def share(moves) -> float:
    """The fraction of the token space the moves cover ((lo, hi] spans, no wrap-around)."""
    return round(sum(m.hi - m.lo for m in moves) / TOKEN_SPACE, 6)


def source_shares(moves) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in moves:
        out[m.src] = out.get(m.src, 0) + (m.hi - m.lo) / TOKEN_SPACE
    return {k: round(v, 6) for k, v in sorted(out.items())}


# ---------------------------------------------------------------------- handlers

async def ring_moves(request: web.Request) -> web.Response:
    """Every job that is not finished, with the token ranges it moves."""
    try:
        active = await JobStore(plane(request).store).active()
    except StoreError as exc:
        raise ServiceUnavailable(f"the metadata store does not answer: {exc}") from None
    return ok({"jobs": [{"id": j.id, "kind": j.kind, "state": j.state, "phase": j.phase,
                         "source": j.source, "target": j.target, "share": share(j.moves),
                         "moves": moves_view(j.moves)} for j in active]})


async def plan_preview(request: web.Request) -> web.Response:
    """What POST /api/v1/jobs with these fields would move, planned by the same function as
    the job itself; nothing is written. Rows are estimated from the sources' statistics."""
    q = request.query
    kind, source, target = q.get("kind"), q.get("source") or None, q.get("target")
    if kind not in KINDS:
        raise BadRequest(f"kind must be one of {', '.join(KINDS)}")
    if not target:
        raise BadRequest("give the target shard: ?target=…")
    p = plane(request)
    if p.catalog_ops is None:
        raise ServiceUnavailable("resharding is planned only in a manager-capable process")
    catalog, _ = await p.catalog_ops.current()
    try:
        job = plan(catalog, kind, source, target, job_id="preview")
    except JobError as exc:
        raise {404: NotFound, 422: Unprocessable}.get(exc.status, Conflict)(str(exc)) from None
    busy = None
    try:
        for other in await JobStore(p.store).active():
            if other.shards & job.shards:
                busy = {"job": other.id, "kind": other.kind, "state": other.state,
                        "shards": sorted(other.shards & job.shards)}
                break
    except StoreError:
        pass
    ownership = catalog.ring.ownership()
    by_source = source_shares(job.moves)
    estimates = await asyncio.gather(*(
        _estimate_rows(catalog.shard(src).primary, [t for t, _ in catalog.tables],
                       by_source[src] / ownership[src] if ownership.get(src) else 0.0)
        for src in by_source))
    rows = {src: est for src, est in zip(by_source, estimates, strict=True)}
    known = [r["rows"] for r in rows.values() if r["rows"] is not None]
    return ok({
        "kind": kind, "source": source, "target": target, "sources": sorted(by_source),
        "ranges": len(job.moves), "share": share(job.moves), "by_source": by_source,
        "source_ownership": {s: round(ownership.get(s, 0.0), 6) for s in by_source},
        "tables": sorted(t for t, _ in catalog.tables),
        "rows_estimate": sum(known) if len(known) == len(rows) else None,
        "rows_by_source": rows, "busy": busy, "catalog_version": catalog.version,
        "moves": moves_view(job.moves),
    })


async def _estimate_rows(dsn: str, tables: list[str], fraction: float) -> dict:
    """Live rows of the sharded tables on one source (pg_stat_user_tables.n_live_tup) times
    the fraction of its token space that moves."""
    if not tables:
        return {"rows": 0, "live_rows": 0, "error": None}
    try:
        conn = await asyncio.wait_for(asyncpg.connect(dsn, timeout=ESTIMATE_TIMEOUT),
                                      ESTIMATE_TIMEOUT + 0.5)
        try:
            live = await asyncio.wait_for(conn.fetchval(
                "SELECT coalesce(sum(s.n_live_tup), 0)::bigint FROM pg_stat_user_tables s "
                "WHERE s.relid = ANY (SELECT to_regclass(t) FROM unnest($1::text[]) t)",
                tables), ESTIMATE_TIMEOUT)
        finally:
            await asyncio.wait_for(conn.close(), ESTIMATE_TIMEOUT)
    except Exception as exc:   # an estimate only: say why it is missing
        log.info("row estimate from %s failed: %s", dsn_address(dsn), exc)
        return {"rows": None, "live_rows": None, "error": str(exc) or type(exc).__name__}
    return {"rows": round(live * fraction), "live_rows": live, "error": None}


CONSOLE_JOB_ROUTES: tuple[Route, ...] = (
    Route("GET", "/api/v1/ring/moves", ring_moves, "ringMoves", "The token ranges that "
          "unfinished resharding jobs move (source and destination of each), for the ring "
          "view", "console", "catalog:read", statuses=(503,)),
    Route("GET", "/api/v1/ring/plan", plan_preview, "ringPlan", "A dry run of a job request: "
          "the ranges it would move, their share of the token space and an estimate of the "
          "rows (from the sources' statistics); nothing is written", "console",
          "catalog:read", statuses=(400, 404, 409, 422, 503),
          query_params={"kind": {"type": "string", "enum": list(KINDS)},
                        "source": {"type": "string"}, "target": {"type": "string"}}),
)
