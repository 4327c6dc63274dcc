"""REST for resharding jobs: `POST/GET /api/v1/jobs`, `GET /api/v1/jobs/{id}`, `POST
/api/v1/jobs/{id}/cancel` — thin handlers over pgshard.reshard.runner.ReshardService."""

from __future__ import annotations

from aiohttp import web

from pgshard.control.errors import Conflict, NotFound, ServiceUnavailable, Unprocessable
from pgshard.control.json_body import parse_json_body
from pgshard.control.openapi import NAME, SCHEMAS
from pgshard.control.routes import Route, audit_note, ok, plane
from pgshard.control.validation import SchemaError, matches, validate
from pgshard.reshard.job import KINDS, JobError

JOB_ID = r"^[a-z0-9]{1,64}$"
SCHEMAS["JobCreate"] = {
    "type": "object", "additionalProperties": False, "required": ["kind", "target"],
    "properties": {"kind": {"type": "string", "enum": list(KINDS)},
                   "source": {"type": "string", "pattern": NAME},
                   "target": {"type": "string", "pattern": NAME}},
}


def _service(request: web.Request):
    svc = plane(request).reshard
    if svc is None:
        raise ServiceUnavailable("resharding runs only in a manager-capable process")
    return svc


def _api_error(exc: JobError):
    extra = {k: v for k, v in exc.extra.items() if v is not None}
    if exc.status == 404:
        return NotFound(str(exc), **extra)
    if exc.status == 422:
        return Unprocessable(str(exc), **extra)
    return Conflict(str(exc), **extra)


def _job_id(request: web.Request) -> str:
    job_id = request.match_info["id"]
    if not matches(JOB_ID, job_id):
        raise NotFound(f'job "{job_id}" does not exist')
    return job_id


async def create_job(request: web.Request) -> web.Response:
    data = parse_json_body(await request.read())
    try:
        validate(data, SCHEMAS["JobCreate"])
    except SchemaError as exc:
        raise Unprocessable(f"invalid job request: {exc}", field=exc.path) from None
    audit_note(request, data.get("source") or data["target"], kind=data["kind"],
               source=data.get("source"), into=data["target"])
    try:
        job = await _service(request).create(data["kind"], data.get("source"), data["target"])
    except JobError as exc:
        raise _api_error(exc) from None
    audit_note(request, job=job.id)
    return ok(job.view(), 202)


async def list_jobs(request: web.Request) -> web.Response:
    jobs = await _service(request).jobs.list()
    return ok({"jobs": [j.view() for j in jobs]})


async def get_job(request: web.Request) -> web.Response:
    got = await _service(request).jobs.get(_job_id(request))
    if got is None:
        raise NotFound(f'job "{request.match_info["id"]}" does not exist')
    return ok(got[0].view())


async def cancel_job(request: web.Request) -> web.Response:
    job_id = _job_id(request)
    audit_note(request, job_id)
    try:
        job = await _service(request).cancel(job_id)
    except JobError as exc:
        raise _api_error(exc) from None
    return ok(job.view(), 202)


_ID_PARAM = {"id": JOB_ID}

JOB_ROUTES: tuple[Route, ...] = (
    Route("POST", "/api/v1/jobs", create_job, "createJob", "Start a resharding job (split, "
          "merge or rebalance)", "jobs", "catalog:write", "job.create", "JobCreate",
          success=202, statuses=(404, 409, 422, 503)),
    Route("GET", "/api/v1/jobs", list_jobs, "listJobs", "Resharding jobs, oldest first",
          "jobs", "catalog:read", statuses=(503,)),
    Route("GET", "/api/v1/jobs/{id}", get_job, "getJob", "One resharding job: state, phase, "
          "progress", "jobs", "catalog:read", statuses=(404, 503), path_params=_ID_PARAM),
    Route("POST", "/api/v1/jobs/{id}/cancel", cancel_job, "cancelJob", "Cancel a job before "
          "its ownership flip (rolled back)", "jobs", "catalog:write", "job.cancel",
          success=202, statuses=(404, 409, 503), path_params=_ID_PARAM),
)
