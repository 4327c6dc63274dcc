"""REST errors: one exception type per HTTP status, rendered as application/problem+json."""

from __future__ import annotations

import json

from aiohttp import web

PROBLEM_JSON = "application/problem+json"


class ApiError(Exception):
    """An error a REST handler raises; the app renders it as an RFC 9457 problem body."""

    status = 500
    title = "Internal Server Error"
    slug = "internal-error"

    def __init__(self, detail: str, *, headers: dict | None = None, **extra):
        super().__init__(detail)
        self.detail = detail
        self.extra = extra
        self.headers = dict(headers or {})   # sent with the problem body (e.g. Retry-After)

    def to_json(self) -> dict:
        return problem(self.status, self.title, self.detail, self.slug, **self.extra)


class BadRequest(ApiError):
    status, title, slug = 400, "Bad Request", "bad-request"


class Unauthorized(ApiError):
    status, title, slug = 401, "Unauthorized", "unauthorized"


class Forbidden(ApiError):
    status, title, slug = 403, "Forbidden", "forbidden"


class NotFound(ApiError):
    status, title, slug = 404, "Not Found", "not-found"


class Conflict(ApiError):
    status, title, slug = 409, "Conflict", "conflict"


class PayloadTooLarge(ApiError):
    status, title, slug = 413, "Payload Too Large", "payload-too-large"


class UnsupportedMediaType(ApiError):
    status, title, slug = 415, "Unsupported Media Type", "unsupported-media-type"


class Unprocessable(ApiError):
    """The request is well-formed but the world disagrees (an endpoint that does not answer)."""

    status, title, slug = 422, "Unprocessable Content", "unprocessable"


class TooManyRequests(ApiError):
    """Throttled (login limits); the Retry-After header says when to try again."""

    status, title, slug = 429, "Too Many Requests", "too-many-requests"

    def __init__(self, detail: str, retry_after: str, **extra):
        super().__init__(detail, headers={"Retry-After": retry_after},
                         retry_after_seconds=int(retry_after), **extra)


class ServiceUnavailable(ApiError):
    status, title, slug = 503, "Service Unavailable", "unavailable"


class GatewayTimeout(ApiError):
    status, title, slug = 504, "Gateway Timeout", "timeout"


def problem(status: int, title: str, detail: str, slug: str | None = None, **extra) -> dict:
    body = {"type": f"urn:pgshard:problem:{slug or status}", "title": title, "status": status,
            "detail": detail}
    body.update(extra)
    return body


def problem_response(body: dict, headers: dict | None = None) -> web.Response:
    """A problem body as a response with the problem+json content type."""
    hdrs = dict(headers or {})
    if body["status"] == 401:
        hdrs.setdefault("WWW-Authenticate", 'Bearer realm="pgshard"')
    return web.Response(status=body["status"], text=json.dumps(body), headers=hdrs,
                        content_type=PROBLEM_JSON)
