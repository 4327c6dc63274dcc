"""`pgshard reshard split|merge|rebalance` and `pgshard jobs list|show|cancel|wait`: thin
commands over the resharding REST API (/api/v1/jobs)."""

from __future__ import annotations

import json
import time

import click

from pgshard.control.rest_client import path

JOB_COLUMNS = ["id", "kind", "source", "target", "state", "phase", "rows", "lag_bytes",
               "write_pause_ms", "error"]
FINAL = ("done", "failed", "cancelled")
EXIT_JOB_FAILED = 1


def register(main: click.Group, pass_session, json_option) -> None:
    """Add the `reshard` and `jobs` groups to the CLI."""

    @main.group()
    def reshard() -> None:
        """Move hash ranges between shards while clients keep writing (resharding jobs)."""

    def start(session, body: dict, wait: bool, as_json: bool, interval: float) -> None:
        job = session.client().post("/api/v1/jobs", body)
        if not wait:
            _print(job, as_json)
            return
        if not as_json:
            click.echo(f"job {job['id']} started ({job['kind']})")
        _wait(session, job["id"], as_json, interval)

    wait_option = click.option("--wait", is_flag=True, help="Follow the job until it ends "
                               "(progress on stderr); exit 1 unless it is done.")
    interval_option = click.option("--interval", type=click.FloatRange(0.05, 60), default=0.5,
                                   show_default=True, help="Seconds between progress polls.")

    @reshard.command("split")
    @click.argument("source")
    @click.option("--into", "target", required=True, metavar="SHARD",
                  help="A registered shard that owns no vnodes yet.")
    @wait_option
    @interval_option
    @json_option
    @pass_session
    def split(session, source: str, target: str, wait: bool, interval: float,
              as_json: bool) -> None:
        """Cut each of SOURCE's vnode ranges at its midpoint; the lower halves move to the
        --into shard."""
        start(session, {"kind": "split", "source": source, "target": target}, wait, as_json,
              interval)

    @reshard.command("merge")
    @click.argument("source")
    @click.option("--into", "target", required=True, metavar="SHARD",
                  help="The shard that takes every range of SOURCE.")
    @wait_option
    @interval_option
    @json_option
    @pass_session
    def merge(session, source: str, target: str, wait: bool, interval: float,
              as_json: bool) -> None:
        """Move all of SOURCE's ranges to the --into shard; SOURCE is then removed."""
        start(session, {"kind": "merge", "source": source, "target": target}, wait, as_json,
              interval)

    @reshard.command("rebalance")
    @click.argument("target")
    @wait_option
    @interval_option
    @json_option
    @pass_session
    def rebalance(session, target: str, wait: bool, interval: float, as_json: bool) -> None:
        """Give TARGET (a shard that owns nothing) its vnodes: each takes its range from
        its successor, about 1/N of every shard's rows."""
        start(session, {"kind": "rebalance", "target": target}, wait, as_json, interval)

    @main.group()
    def jobs() -> None:
        """Resharding jobs: list, show, cancel, wait."""

    @jobs.command("list")
    @json_option
    @pass_session
    def jobs_list(session, as_json: bool) -> None:
        """List the jobs, oldest first."""
        reply = session.client().get("/api/v1/jobs")
        if as_json:
            click.echo(json.dumps(reply, indent=2))
            return
        rows = [_row(j) for j in reply.get("jobs", [])]
        _table(rows)

    @jobs.command("show")
    @click.argument("job_id")
    @json_option
    @pass_session
    def jobs_show(session, job_id: str, as_json: bool) -> None:
        """Show one job."""
        _print(session.client().get(path("/api/v1/jobs", job_id)), as_json)

    @jobs.command("cancel")
    @click.argument("job_id")
    @json_option
    @pass_session
    def jobs_cancel(session, job_id: str, as_json: bool) -> None:
        """Cancel a job before its ownership flip; it is rolled back (refused after: exit 7)."""
        _print(session.client().post(path("/api/v1/jobs", job_id, "cancel"), {}), as_json)

    @jobs.command("wait")
    @click.argument("job_id")
    @interval_option
    @json_option
    @pass_session
    def jobs_wait(session, job_id: str, interval: float, as_json: bool) -> None:
        """Follow a job until it ends; exit 1 unless it is done."""
        _wait(session, job_id, as_json, interval)


def _wait(session, job_id: str, as_json: bool, interval: float) -> None:
    last = None
    while True:
        job = session.client().get(path("/api/v1/jobs", job_id))
        line = _progress(job)
        if line != last and not as_json:
            click.echo(line, err=True)
            last = line
        if job["state"] in FINAL:
            break
        time.sleep(interval)
    _print(job, as_json)
    if job["state"] != "done":
        raise click.exceptions.Exit(EXIT_JOB_FAILED)


def _progress(job: dict) -> str:
    p = job.get("progress") or {}
    copied, total = p.get("rows_copied", 0), p.get("rows_total", 0)
    width = 30
    frac = min(copied / total, 1.0) if total else (1.0 if job["state"] == "done" else 0.0)
    bar = "#" * int(frac * width) + "." * (width - int(frac * width))
    return (f"[{bar}] {job['state']:<9} {job.get('phase') or '-':<8} rows {copied}/{total} "
            f"lag {p.get('lag_bytes', 0)} B")


def _row(job: dict) -> dict:
    p = job.get("progress") or {}
    return {**job, "rows": f"{p.get('rows_copied', 0)}/{p.get('rows_total', 0)}",
            "lag_bytes": p.get("lag_bytes", 0)}


def _print(job: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(job, indent=2))
        return
    row = _row(job)
    width = max(len(k) for k in JOB_COLUMNS + ["created_at", "updated_at"])
    for key in [*JOB_COLUMNS, "created_at", "updated_at"]:
        value = row.get(key)
        click.echo(f"{key.ljust(width)}  {'' if value is None else value}")


def _table(rows: list[dict]) -> None:
    if not rows:
        click.echo("(no jobs)")
        return
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in JOB_COLUMNS] for r in rows]
    headers = [c.upper().replace("_", " ") for c in JOB_COLUMNS]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]
    for line in [headers, *cells]:
        click.echo("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())
