"""The sidecar's aiohttp application: routes from the route table, and the middlewares that
every request passes (CORS, problem+json errors, audit, size and Content-Type limits, auth)."""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from pgshard.control.auth import Principal, allowed, bearer_token
from pgshard.control.console import CONSOLE_ROUTES, add_console
from pgshard.control.errors import (
    ApiError,
    Forbidden,
    PayloadTooLarge,
    ServiceUnavailable,
    Unauthorized,
    UnsupportedMediaType,
    problem,
    problem_response,
)
from pgshard.control.ha_routes import HA_ROUTES
from pgshard.control.openapi import build_document
from pgshard.control.plane import ControlPlane
from pgshard.control.routes import AUDIT, OPENAPI_DOC, PLANE, PRINCIPAL, ROUTE, ROUTES, Route
from pgshard.store import StoreError, StoreUnavailable
from pgshard.tls import server_context

log = logging.getLogger("pgshard.control")

ROUTE_MAP = web.AppKey("route_map", dict)
ALLOWED_HEADERS = "Authorization, Content-Type"


def make_app(plane: ControlPlane) -> web.Application:
    """The sidecar app for `plane`; a router-role plane serves health and metrics only."""
    routes = [r for r in (*ROUTES, *CONSOLE_ROUTES, *HA_ROUTES)
              if plane.role == "all" or r.router_role]
    app = web.Application(
        middlewares=[cors_middleware, error_middleware, audit_middleware, limits_middleware,
                     auth_middleware],
        client_max_size=plane.config.sidecar.max_body_size)
    app[PLANE] = plane
    app[OPENAPI_DOC] = build_document(routes)
    route_map = {}
    for r in routes:
        route_map[app.router.add_route(r.method, r.path, r.handler)] = r
    app[ROUTE_MAP] = route_map
    if plane.role == "all":
        add_console(app)   # the web console at /ui
    return app


def _route(request: web.Request) -> Route | None:
    return request.app[ROUTE_MAP].get(request.match_info.route)


# ---------------------------------------------------------------------- middlewares

@web.middleware
async def cors_middleware(request: web.Request, handler):
    origins = request.app[PLANE].config.sidecar.cors_origins
    origin = request.headers.get("Origin")
    allowed_origin = origin is not None and (origin in origins or "*" in origins)
    if request.method == "OPTIONS" and origin and "Access-Control-Request-Method" in request.headers:
        if not allowed_origin:
            return problem_response(problem(403, "Forbidden", f"origin {origin} is not in "
                                            "the CORS allow-list", "cors"))
        resp = web.Response(status=204)
        resp.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, PATCH, DELETE"
        resp.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
        resp.headers["Access-Control-Max-Age"] = "600"
    else:
        resp = await handler(request)
    if allowed_origin:
        resp.headers["Access-Control-Allow-Origin"] = origin
        resp.headers["Vary"] = "Origin"
    return resp


@web.middleware
async def error_middleware(request: web.Request, handler):
    """Every error leaves as application/problem+json; nothing else escapes."""
    plane: ControlPlane = request.app[PLANE]
    route = _route(request)
    try:
        resp = await handler(request)
    except ApiError as exc:
        resp = problem_response(exc.to_json(), exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow",)}
        detail = {404: f"no such endpoint: {request.method} {request.path}",
                  405: f"{request.method} is not allowed on {request.path}",
                  413: f"the body exceeds {plane.config.sidecar.max_body_size} bytes"}.get(
                      exc.status, exc.text or exc.reason)
        resp = problem_response(problem(exc.status, exc.reason, detail), headers)
    except StoreUnavailable as exc:
        resp = problem_response(ServiceUnavailable(f"the metadata store is unavailable: {exc}")
                                .to_json())
    except StoreError as exc:
        log.error("store error on %s %s: %s", request.method, request.path, exc)
        resp = problem_response(ServiceUnavailable(f"metadata store error: {exc}").to_json())
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        resp = problem_response(problem(500, "Internal Server Error", "an unexpected error; "
                                        "see the pgshard log"))
    plane.metrics.http_request(request.method, route.path if route else "unmatched",
                               resp.status)
    return resp


@web.middleware
async def audit_middleware(request: web.Request, handler):
    """One audit record per mutating call, whatever its outcome."""
    route = _route(request)
    if route is None or route.action is None:
        return await handler(request)
    status, detail = 500, None
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except ApiError as exc:
        status, detail = exc.status, exc.detail
        raise
    except web.HTTPException as exc:
        status, detail = exc.status, exc.reason
        raise
    except StoreError as exc:
        status, detail = 503, f"metadata store: {exc}"
        raise
    finally:
        plane: ControlPlane = request.app[PLANE]
        note = request.get(AUDIT, {})
        principal: Principal | None = request.get(PRINCIPAL)
        result = "ok" if status < 400 else "denied" if status in (401, 403, 429) else "error"
        if detail is not None:
            note.setdefault("detail", {})["error"] = detail
        await plane.audit.record(
            actor=principal.name if principal else note.get("actor", "anonymous"),
            role=principal.role if principal else None, action=route.action,
            target=note.get("target") or request.match_info.get("name"), result=result,
            status=status, detail=_detail_text(note.get("detail")), remote=request.remote)


def _detail_text(detail: dict | None) -> str | None:
    if not detail:
        return None
    return "; ".join(f"{k}={v}" for k, v in detail.items())[:1000]


@web.middleware
async def limits_middleware(request: web.Request, handler):
    limit = request.app[PLANE].config.sidecar.max_body_size
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the body is {request.content_length} bytes; the limit is "
                              f"{limit}")
    return await handler(request)


@web.middleware
async def auth_middleware(request: web.Request, handler):
    """Bearer token → principal (role read from the store) → permission check; then the
    Content-Type check for routes that take a JSON body."""
    route = _route(request)
    if route is None:
        return await handler(request)
    request[ROUTE] = route
    if route.permission is not None:
        plane: ControlPlane = request.app[PLANE]
        claimed = plane.tokens.verify(bearer_token(request.headers.get("Authorization")))
        try:
            user = await plane.users.get(claimed.name)
            if user is None:
                raise Unauthorized(f'user "{claimed.name}" no longer exists')
            principal = Principal(user.name, user.role)
        except StoreUnavailable:
            principal = claimed  # the store is down: trust the signed claims until it is back
        request[PRINCIPAL] = principal
        if not allowed(principal.role, route.permission):
            raise Forbidden(f'role "{principal.role}" lacks the {route.permission} permission '
                            f"needed for {route.method} {route.path}")
    if route.schema is not None:
        ctype = request.content_type
        if ctype != "application/json" and not (ctype.startswith("application/")
                                                and ctype.endswith("+json")):
            raise UnsupportedMediaType(f"send the body as application/json, not {ctype}")
    return await handler(request)


# ---------------------------------------------------------------------- serving

class Sidecar:
    """The app served by an AppRunner + TCPSite in the proxy's event loop."""

    def __init__(self, plane: ControlPlane):
        self.plane = plane
        self.app = make_app(plane)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.started = time.time()

    async def start(self) -> None:
        sc = self.plane.config.sidecar
        ctx = None
        if sc.tls_cert:
            ctx = server_context(sc.tls_cert, sc.tls_key)
        # Request lines up to 16 KB: a query parameter of 1,024 characters (the longest any
        # route accepts) can take 12 KB percent-encoded; beyond that aiohttp answers itself.
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                                     max_line_size=16384)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, sc.host, sc.port, ssl_context=ctx,
                                 reuse_address=True)
        await self._site.start()
        log.info("sidecar listening on %s", self.url)

    @property
    def port(self) -> int:
        if self._runner is not None and self._runner.addresses:
            return self._runner.addresses[0][1]
        return self.plane.config.sidecar.port

    @property
    def url(self) -> str:
        sc = self.plane.config.sidecar
        scheme = "https" if sc.tls_cert else "http"
        host = "127.0.0.1" if sc.host in ("0.0.0.0", "") else sc.host
        return f"{scheme}://{host}:{self.port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
