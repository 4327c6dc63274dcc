"""The REST routes: one table (method, path, permission, audit action, request schema) that
the app, the auth middleware and the OpenAPI document all read, and thin handlers over the
control-plane services."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from pgshard.control.catalog_ops import catalog_view, shard_view
from pgshard.control.errors import BadRequest, NotFound, TooManyRequests, Unauthorized
from pgshard.control.json_body import parse_json_body
from pgshard.control.login_limits import LoginThrottled
from pgshard.control.membership import list_routers
from pgshard.control.openapi import NAME, SCHEMAS, TABLE
from pgshard.control.plane import ControlPlane
from pgshard.control.validation import SchemaError, matches, validate

PLANE = web.AppKey("plane", ControlPlane)


def _request_key(name: str, kind: type):
    # Typed request keys exist from aiohttp 3.14 on (older ones take plain strings).
    key_type = getattr(web, "RequestKey", None)
    return key_type(name, kind) if key_type is not None else name


ROUTE = _request_key("pgshard_route", object)          # the matched Route
PRINCIPAL = _request_key("pgshard_principal", object)  # the authenticated Principal
AUDIT = _request_key("pgshard_audit", dict)            # {"target", "detail", "actor"} to audit

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    operation: str
    summary: str
    tag: str
    permission: str | None = None     # None: public
    action: str | None = None         # audit action of a mutating route
    schema: str | None = None         # request body schema (JSON required)
    success: int = 200
    statuses: tuple[int, ...] = ()   # other documented statuses
    path_params: dict = field(default_factory=dict)
    query_params: dict = field(default_factory=dict)
    router_role: bool = False         # also served by `--role router`
    content_type: str = "application/json"
    hidden: bool = False


def plane(request: web.Request) -> ControlPlane:
    return request.app[PLANE]


def ok(data, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=_dumps)


def _dumps(data) -> str:
    return json.dumps(data, separators=(",", ":"))


async def read_body(request: web.Request) -> dict:
    """The request's JSON body, validated against its route's schema (400 otherwise).

    The only place the sidecar reads client JSON: parse_json_body bounds its nesting."""
    data = parse_json_body(await request.read())
    try:
        validate(data, SCHEMAS[request[ROUTE].schema])
    except SchemaError as exc:
        raise BadRequest(f"invalid request body: {exc}", field=exc.path) from None
    return data


def audit_note(request: web.Request, target: str | None = None, **detail) -> None:
    note = request.setdefault(AUDIT, {})
    if target is not None:
        note["target"] = target
    if detail:
        note.setdefault("detail", {}).update(detail)


def _name_param(request: web.Request, pattern_ok) -> str:
    name = request.match_info["name"]
    if not pattern_ok(name):
        raise NotFound(f'"{name}" is not a valid name, so nothing by that name exists')
    return name


def _valid_name(s: str) -> bool:
    return matches(NAME, s)


def _valid_table(s: str) -> bool:
    return matches(TABLE, s)


# ---------------------------------------------------------------------- health & metadata

async def health(request: web.Request) -> web.Response:
    return ok(plane(request).health())


async def ready(request: web.Request) -> web.Response:
    p = plane(request)
    body = p.health()
    ready_ = p.proxy.catalog is not None and not p.proxy.closing
    body["ready"] = ready_
    return ok(body, 200 if ready_ else 503)


async def metrics(request: web.Request) -> web.Response:
    p = plane(request)
    text, content_type = p.metrics.render()
    if p.workers is not None:   # serve --workers N: every worker's metrics, merged
        from pgshard.control.metrics_merge import merge
        text = merge(dict(await p.workers.scrape()))
    resp = web.Response(body=text)
    resp.headers["Content-Type"] = content_type
    return resp


async def openapi(request: web.Request) -> web.Response:
    return ok(request.app[OPENAPI_DOC])


OPENAPI_DOC = web.AppKey("openapi_doc", dict)


# ---------------------------------------------------------------------- auth

async def login(request: web.Request) -> web.Response:
    p = plane(request)
    data = await read_body(request)
    name = data["username"]
    request.setdefault(AUDIT, {})["actor"] = name
    audit_note(request, name)
    user = await _throttled_authenticate(request, p, name, data["password"])
    if user is None:
        raise Unauthorized("unknown user or wrong password")
    token, exp = p.tokens.issue(user.name, user.role)
    return ok({"token": token, "token_type": "Bearer", "role": user.role,
               "expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(exp))})


async def _throttled_authenticate(request: web.Request, p: ControlPlane, name: str,
                                  password: str):
    """The user if the password is right, None if not; 429 while the user or the client's
    address is over its login limit (the password is then not even checked)."""
    limiter = p.login_limiter
    try:
        attempt = limiter.begin(name, request.remote)
    except LoginThrottled as exc:
        audit_note(request, throttled=exc.reason)
        raise TooManyRequests(f"{exc.reason}; retry after {exc.retry_after_header} s",
                              exc.retry_after_header) from None
    try:
        user = await p.users.authenticate(name, password)
    except BaseException:
        limiter.abandoned(attempt)
        raise
    if user is not None:
        limiter.succeeded(attempt)
        return user
    lockout = limiter.failed(attempt)
    if lockout is not None:
        await p.audit.record(actor=name, role=None, action="auth.lockout", target=name,
                             result="locked", status=429, remote=request.remote,
                             detail=f"failures={lockout.failures}; seconds={lockout.seconds:g}")
    return None


# ---------------------------------------------------------------------- catalog

async def get_catalog(request: web.Request) -> web.Response:
    catalog, revision = await plane(request).catalog_ops.current()
    return ok({**catalog_view(catalog), "revision": revision})


async def list_shards(request: web.Request) -> web.Response:
    catalog, _ = await plane(request).catalog_ops.current()
    return ok({"catalog_version": catalog.version,
               "shards": [shard_view(catalog, s) for s in catalog.shards]})


async def get_shard(request: web.Request) -> web.Response:
    name = _name_param(request, _valid_name)
    catalog, _ = await plane(request).catalog_ops.current()
    if name not in catalog.shard_names():
        raise NotFound(f'shard "{name}" does not exist')
    view = shard_view(catalog, catalog.shard(name))
    view["ranges"] = len(catalog.ring.ranges(name))
    from pgshard.control.ha_status import server_views
    view.update(server_views(plane(request).proxy, catalog.shard(name)))
    return ok({**view, "catalog_version": catalog.version})


async def add_shard(request: web.Request) -> web.Response:
    data = await read_body(request)
    audit_note(request, data["name"])
    change = await plane(request).catalog_ops.add_shard(data["name"], data["primary"],
                                                        data.get("replicas", []))
    cat = change.catalog
    audit_note(request, catalog_version=cat.version, **change.notes)
    return ok({**shard_view(cat, cat.shard(data["name"])), "catalog_version": cat.version,
               **change.notes}, 201)


async def patch_shard(request: web.Request) -> web.Response:
    name = _name_param(request, _valid_name)
    audit_note(request, name)
    data = await read_body(request)
    audit_note(request, fields=sorted(data))
    change = await plane(request).catalog_ops.patch_shard(name, data)
    cat = change.catalog
    audit_note(request, catalog_version=cat.version)
    return ok({**shard_view(cat, cat.shard(name)), "catalog_version": cat.version})


async def delete_shard(request: web.Request) -> web.Response:
    name = _name_param(request, _valid_name)
    audit_note(request, name)
    change = await plane(request).catalog_ops.delete_shard(name)
    audit_note(request, catalog_version=change.catalog.version)
    return ok({"deleted": name, "catalog_version": change.catalog.version})


# ---------------------------------------------------------------------- tables

async def list_tables(request: web.Request) -> web.Response:
    catalog, _ = await plane(request).catalog_ops.current()
    return ok({"catalog_version": catalog.version,
               "tables": [{"name": t, "shard_key": c} for t, c in catalog.tables]})


async def get_table(request: web.Request) -> web.Response:
    name = _name_param(request, _valid_table)
    catalog, _ = await plane(request).catalog_ops.current()
    column = catalog.key_column(name)
    if column is None:
        raise NotFound(f'table "{name}" is not sharded')
    return ok({"name": name, "shard_key": column, "catalog_version": catalog.version})


async def put_table(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    audit_note(request, name)
    if not _valid_table(name):
        raise BadRequest(f'"{name}" is not a table name ([schema.]table)')
    data = await read_body(request)
    change = await plane(request).catalog_ops.put_table(name, data["shard_key"])
    audit_note(request, shard_key=data["shard_key"], catalog_version=change.catalog.version)
    return ok({"name": name, "shard_key": data["shard_key"],
               "catalog_version": change.catalog.version}, 201 if change.created else 200)


async def delete_table(request: web.Request) -> web.Response:
    name = _name_param(request, _valid_table)
    audit_note(request, name)
    change = await plane(request).catalog_ops.delete_table(name)
    audit_note(request, catalog_version=change.catalog.version)
    return ok({"deleted": name, "catalog_version": change.catalog.version})


# ---------------------------------------------------------------------- query

async def execute(request: web.Request) -> web.Response:
    data = await read_body(request)
    result = await plane(request).executor.execute(
        data["query"], data.get("params", []), data.get("shard_key"),
        data.get("consistency", "strong"))
    return ok(result)


# ---------------------------------------------------------------------- users, audit, routers

async def list_users(request: web.Request) -> web.Response:
    users = await plane(request).users.list()
    return ok({"users": [u.public() for u in users]})


async def add_user(request: web.Request) -> web.Response:
    data = await read_body(request)
    audit_note(request, data["name"], role=data["role"])
    user = await plane(request).users.create(data["name"], data["password"], data["role"])
    return ok(user.public(), 201)


async def delete_user(request: web.Request) -> web.Response:
    name = _name_param(request, _valid_name)
    audit_note(request, name)
    await plane(request).users.delete(name)
    return ok({"deleted": name})


async def list_audit(request: web.Request) -> web.Response:
    q = request.query
    try:
        limit = int(q.get("limit", "100"))
    except ValueError:
        raise BadRequest("limit must be an integer") from None
    if not 1 <= limit <= 1000:
        raise BadRequest("limit must be between 1 and 1000")
    records = await plane(request).audit.list(limit, actor=q.get("actor"),
                                              action=q.get("action"))
    return ok({"records": records})


async def get_routers(request: web.Request) -> web.Response:
    p = plane(request)
    routers, leader = await list_routers(p.store)
    catalog, _ = await p.catalog_ops.current()
    for r in routers:
        r["up_to_date"] = r.get("catalog_version") == catalog.version
        r["leader"] = r.get("id") == leader
    return ok({"catalog_version": catalog.version, "leader": leader, "routers": routers})


_NAME_PARAM = {"name": NAME}
_TABLE_PARAM = {"name": TABLE}

ROUTES: tuple[Route, ...] = (
    Route("GET", "/health", health, "health", "Liveness, served catalog version, store "
          "reachability", "health", router_role=True),
    Route("GET", "/v1/health", health, "healthV1", "Same as /health", "health",
          router_role=True),
    Route("GET", "/ready", ready, "ready", "Ready to serve clients", "health", statuses=(503,),
          router_role=True),
    Route("GET", "/metrics", metrics, "metrics", "Prometheus metrics", "health",
          router_role=True, content_type="text/plain"),
    Route("GET", "/api/v1/openapi.json", openapi, "openapi", "This document", "health",
          router_role=True),
    Route("POST", "/api/v1/auth/login", login, "login", "Exchange a username and password "
          "for a bearer token", "auth", action="auth.login", schema="Login", statuses=(401, 429)),
    Route("GET", "/api/v1/catalog", get_catalog, "getCatalog", "The current catalog",
          "catalog", "catalog:read", statuses=(503,)),
    Route("GET", "/api/v1/shards", list_shards, "listShards", "All shards", "shards",
          "catalog:read", statuses=(503,)),
    Route("POST", "/api/v1/shards", add_shard, "addShard", "Add a shard (endpoints are "
          "checked by connecting)", "shards", "catalog:write", "shard.add", "ShardCreate",
          success=201, statuses=(409, 422, 503)),
    Route("GET", "/api/v1/shards/{name}", get_shard, "getShard", "One shard", "shards",
          "catalog:read", statuses=(404, 503), path_params=_NAME_PARAM),
    Route("PATCH", "/api/v1/shards/{name}", patch_shard, "patchShard", "Change a shard's "
          "endpoints, status or weight", "shards", "catalog:write", "shard.update",
          "ShardPatch", statuses=(404, 409, 422, 503), path_params=_NAME_PARAM),
    Route("DELETE", "/api/v1/shards/{name}", delete_shard, "deleteShard", "Remove a shard "
          "that owns no ranges", "shards", "catalog:write", "shard.remove",
          statuses=(404, 409, 503), path_params=_NAME_PARAM),
    Route("GET", "/api/v1/tables", list_tables, "listTables", "Sharded tables", "tables",
          "catalog:read", statuses=(503,)),
    Route("GET", "/api/v1/tables/{name}", get_table, "getTable", "One sharded table",
          "tables", "catalog:read", statuses=(404, 503), path_params=_TABLE_PARAM),
    Route("PUT", "/api/v1/tables/{name}", put_table, "putTable", "Declare a sharded table "
          "and its shard key column", "tables", "catalog:write", "table.put", "TablePut",
          statuses=(201, 409, 422, 503), path_params=_TABLE_PARAM),
    Route("DELETE", "/api/v1/tables/{name}", delete_table, "deleteTable", "Forget a sharded "
          "table", "tables", "catalog:write", "table.remove", statuses=(404, 409, 503),
          path_params=_TABLE_PARAM),
    Route("POST", "/v1/execute", execute, "execute", "Run one statement through the proxy's "
          "routing and pools", "query", "execute", schema="Execute",
          statuses=(409, 503, 504)),
    Route("GET", "/api/v1/users", list_users, "listUsers", "API users", "users",
          "users:admin", statuses=(503,)),
    Route("POST", "/api/v1/users", add_user, "addUser", "Create an API user", "users",
          "users:admin", "user.add", "UserCreate", success=201, statuses=(409, 503)),
    Route("DELETE", "/api/v1/users/{name}", delete_user, "deleteUser", "Delete an API user",
          "users", "users:admin", "user.remove", statuses=(404, 409, 503),
          path_params=_NAME_PARAM),
    Route("GET", "/api/v1/audit", list_audit, "listAudit", "The audit trail, newest first",
          "audit", "audit:read", statuses=(400, 503),
          query_params={"limit": {"type": "integer", "minimum": 1, "maximum": 1000},
                        "actor": {"type": "string"}, "action": {"type": "string"}}),
    Route("GET", "/api/v1/routers", get_routers, "listRouters", "Live routers and the "
          "catalog version each serves", "routers", "catalog:read", statuses=(503,)),
)

# Resharding jobs live in their own module (its handlers build on the helpers above).
from pgshard.control.jobs_api import JOB_ROUTES  # noqa: E402

ROUTES += JOB_ROUTES

