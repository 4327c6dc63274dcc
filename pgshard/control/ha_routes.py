"""REST for high availability: POST /api/v1/shards/{name}/failover, /switchover and /rejoin
(operator role, audited), thin over the manager's FailoverManager and switchover."""

from __future__ import annotations

import functools

import asyncpg
from aiohttp import web

from pgshard.config import dsn_address, parse_dsn
from pgshard.control.catalog_ops import shard_view
from pgshard.control.errors import BadRequest, NotFound, ServiceUnavailable, Unprocessable
from pgshard.control.json_body import parse_json_body
from pgshard.control.openapi import DSN, NAME
from pgshard.control.routes import Route, audit_note, ok, plane
from pgshard.control.validation import SchemaError, validate

TARGET = {"type": "string", "minLength": 1, "maxLength": 2048,
          "description": "the replica: its postgresql:// DSN or host:port"}
FAILOVER_BODY = {"type": "object", "additionalProperties": False,
                 "properties": {"to": TARGET}}
REJOIN_BODY = {"type": "object", "additionalProperties": False, "required": ["dsn"],
               "properties": {"dsn": {**TARGET, "description": DSN["description"]
                                      + " or host:port of the fenced old primary"},
                              "rejoined": {"type": "boolean", "description":
                                           "already rejoined on its host (`pgshard node "
                                           "rejoin`): only check it streams and list it"}}}


async def _body(request: web.Request, schema: dict) -> dict:
    """The optional JSON body (an empty body is {}), validated against schema."""
    raw = await request.read()
    if not raw.strip():
        data = {}
    else:
        ctype = request.content_type
        if ctype != "application/json" and not ctype.endswith("+json"):
            raise BadRequest(f"send the body as application/json, not {ctype}")
        data = parse_json_body(raw)
    try:
        validate(data, schema)
    except SchemaError as exc:
        raise BadRequest(f"invalid request body: {exc}", field=exc.path) from None
    return data


def _shard(request: web.Request):
    name = request.match_info["name"]
    catalog = plane(request).proxy.catalog
    if catalog is None or name not in catalog.shard_names():
        raise NotFound(f'shard "{name}" does not exist')
    return name, catalog.shard(name)


def _manager(request: web.Request):
    p = plane(request)
    if p.failover is None:
        raise ServiceUnavailable("this process runs no manager")
    if not p.membership.is_leader:
        raise ServiceUnavailable("this process is not the active manager (it does not hold the "
                                 "leader lease); send the request to the leader",
                                 leader_required=True)
    if p.proxy.replicas is None:
        raise Unprocessable("no shard has replicas: there is nothing to promote")
    return p.failover


def _resolve(shard, target: str | None, pool) -> str | None:
    """The DSN in `pool` (a shard's replicas or fenced servers) that target names."""
    if target is None:
        return None
    if "://" in target:
        try:
            want = parse_dsn(target)
        except ValueError:
            raise BadRequest(f"{target!r} is not a postgresql:// URL or host:port") from None
        address = f"{want.host}:{want.port}"
    else:
        address = target
    for dsn in pool:
        if dsn_address(dsn) == address or dsn == target:
            return dsn
    raise Unprocessable(f"{address} is not among {', '.join(map(dsn_address, pool)) or 'none'} "
                        f"of shard {shard.name}")


def _server_errors(handler):
    """A server that fails mid-operation is a 503 naming it, not an unexpected 500."""
    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.Response:
        from pgshard.cluster.process import ClusterError

        try:
            return await handler(request)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError,
                ClusterError) as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ServiceUnavailable(f"{request.match_info['name']}: {text[:500]}") from None
    return wrapped


@_server_errors
async def failover(request: web.Request) -> web.Response:
    name, shard = _shard(request)
    audit_note(request, name)
    data = await _body(request, FAILOVER_BODY)
    mgr = _manager(request)
    to = _resolve(shard, data.get("to"), shard.replicas)
    audit_note(request, to=dsn_address(to) if to else "auto", old=dsn_address(shard.primary))
    catalog = await mgr.failover(name, to, "requested failover", forced=True)
    new = catalog.shard(name)
    audit_note(request, new_primary=dsn_address(new.primary), catalog_version=catalog.version)
    return ok({**shard_view(catalog, new), "catalog_version": catalog.version,
               "old_primary": dsn_address(shard.primary),
               "last_failover": _record(new.last_failover)})


@_server_errors
async def switchover(request: web.Request) -> web.Response:
    from pgshard.control.switchover import switchover as run_switchover

    name, shard = _shard(request)
    audit_note(request, name)
    data = await _body(request, FAILOVER_BODY)
    mgr = _manager(request)
    to = _resolve(shard, data.get("to"), shard.replicas)
    audit_note(request, to=dsn_address(to) if to else "auto", old=dsn_address(shard.primary))
    catalog, pause = await run_switchover(mgr, name, to)
    new = catalog.shard(name)
    audit_note(request, new_primary=dsn_address(new.primary), pause_seconds=round(pause, 3),
               catalog_version=catalog.version)
    return ok({**shard_view(catalog, new), "catalog_version": catalog.version,
               "pause_seconds": round(pause, 3), "old_primary": dsn_address(shard.primary),
               "last_failover": _record(new.last_failover)})


@_server_errors
async def rejoin(request: web.Request) -> web.Response:
    name, shard = _shard(request)
    audit_note(request, name)
    data = await _body(request, REJOIN_BODY)
    mgr = _manager(request)
    dsn = _resolve(shard, data["dsn"], shard.fenced)
    rejoined = bool(data.get("rejoined"))
    audit_note(request, dsn=dsn_address(dsn), on_its_host=rejoined)
    catalog, how = await mgr.rejoin(name, dsn, rejoined=rejoined)
    audit_note(request, how=how)
    return ok({**shard_view(catalog, catalog.shard(name)), "catalog_version": catalog.version,
               "rejoined": dsn_address(dsn), "how": how})


def _record(failover) -> dict | None:
    """A failover record as the API shows it: addresses, not DSNs."""
    if failover is None:
        return None
    return failover.to_json() | {"from": dsn_address(failover.from_),
                                 "to": dsn_address(failover.to)}


_NAME_PARAM = {"name": NAME}

HA_ROUTES: tuple[Route, ...] = (
    Route("POST", "/api/v1/shards/{name}/failover", failover, "failoverShard", "Promote a "
          "replica now (body, optional: {\"to\": replica}); under synchronous replication "
          "only a synchronous standby", "shards", "catalog:write", "shard.failover",
          statuses=(400, 404, 409, 422, 503), path_params=_NAME_PARAM),
    Route("POST", "/api/v1/shards/{name}/switchover", switchover, "switchoverShard",
          "Planned primary change: statements held, old primary demoted, replica caught up, "
          "promoted, published (body, optional: {\"to\": replica})", "shards",
          "catalog:write", "shard.switchover", statuses=(400, 404, 409, 422, 503),
          path_params=_NAME_PARAM),
    Route("POST", "/api/v1/shards/{name}/rejoin", rejoin, "rejoinShard", "Turn a fenced old "
          "primary into a streaming replica of the shard's primary (body: {\"dsn\": …}; "
          "servers of the manager's local cluster), or list one `pgshard node rejoin` "
          "rejoined on its host ({\"dsn\": …, \"rejoined\": true})", "shards", "catalog:write",
          "shard.rejoin", statuses=(400, 404, 409, 422, 503), path_params=_NAME_PARAM),
)
