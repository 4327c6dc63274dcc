"""`make regress` driver: PostgreSQL's suite on one demo shard, directly and through the proxy.

scripts/regress.sh fetches the suite and builds its C modules, then runs this module. Each
mode (tests.regress.results.MODES) gets a fresh database state on the same one-shard
LocalCluster (the shard's database recreated, roles and tablespaces the suite left behind
dropped), then `pgshard demo --shards 1 --replicas 0 --pool-mode M` in front of it, and
Debian's pg_regress with --use-existing --dbname=app against the shard or the proxy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from pgshard.cluster import LocalCluster
from pgshard.cluster.process import ClusterError, free_port
from pgshard.cluster.schema import bootstrap_script
from tests.regress import results as R

HERE = Path(__file__).resolve().parent
DATABASE = "app"
DEMO_READY_TIMEOUT = 180.0
# What pg_regress sets on a database it creates itself (create_database in pg_regress.c);
# with --use-existing it is ours to do.
DATABASE_SETTINGS = ("lc_messages = 'C'", "lc_monetary = 'C'", "lc_numeric = 'C'",
                     "lc_time = 'C'", "bytea_output = 'hex'",
                     "timezone_abbreviations = 'Default'")
CLEANUP_SQL = """\
SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active;
SELECT format('DROP DATABASE %I WITH (FORCE);', datname) FROM pg_database
 WHERE datname NOT IN ('postgres', 'template0', 'template1') \\gexec
SELECT format('DROP TABLESPACE %I;', spcname) FROM pg_tablespace
 WHERE spcname NOT IN ('pg_default', 'pg_global') \\gexec
SELECT format('DROP ROLE %I;', rolname) FROM pg_roles
 WHERE rolname NOT IN ('postgres', {user}) AND rolname !~ '^pg_' \\gexec
ALTER ROLE {ident} RESET ALL;
ALTER ROLE postgres RESET ALL;
"""


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    work = Path(args.work_dir).absolute()
    suite = Path(args.suite).absolute()
    tests = R.parse_schedule((suite / "parallel_schedule").read_text())
    modes = [m for m in R.MODES if m.name in args.modes]
    baseline_path = Path(args.baseline)
    baseline = json.loads(baseline_path.read_text()) if baseline_path.is_file() else {}
    demo_dir = work / "demo"
    demo_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(demo_dir, 0o755)
    cluster = LocalCluster(demo_dir / "cluster", shards=1, replicas=0, database=DATABASE)
    runs: dict[str, dict] = {}
    started = time.monotonic()
    proxy_code = _proxy_code(work if args.from_runs else None)
    if args.from_runs:
        _reread(work, modes, tests, runs)
        modes = []
    try:
        for mode in modes:
            print(f"regress: {mode.name}: {mode.label}", flush=True)
            t0 = time.monotonic()
            cluster = _fresh_state(cluster)
            reset_s = time.monotonic() - t0
            with _demo(demo_dir, mode, work / "runs" / f"{mode.name}.proxy.log") as state:
                run = _run_suite(args, mode, state, suite, work / "runs" / mode.name, tests)
            run["reset_seconds"] = round(reset_s, 1)
            runs[mode.name] = run
            print(f"regress: {mode.name}: {run['passed']} of {len(tests)} passed in "
                  f"{run['seconds']:.0f} s", flush=True)
    finally:
        with contextlib.suppress(ClusterError):
            cluster.stop()
    direct = runs.get("direct")
    for name, run in runs.items():
        if name != "direct" and direct is not None:
            run["proxy_caused"] = R.proxy_caused(direct["tests"], run["tests"], tests)
    failures, notes = R.evaluate_gate(runs, baseline)
    summary = {"server": args.server_version or _server_version(args.bindir),
               "schedule": str(suite / "parallel_schedule"), "total": len(tests),
               "seconds": round(time.monotonic() - started, 1), "proxy_code": proxy_code,
               "runs": runs,
               "gate": {"ok": not failures, "failures": failures, "notes": notes,
                        "baseline": str(baseline_path)}}
    print(_report(summary))
    summary_path = work / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"regress: summary in {summary_path}; pg_regress output in {work / 'runs'}/MODE/")
    if args.write_baseline:
        margins = {"transaction-4": args.parallel_margin, "transaction-1": args.serial_margin}
        new = R.baseline_from(runs, baseline, margins)
        baseline_path.write_text(json.dumps(new, indent=2) + "\n")
        print(f"regress: wrote {baseline_path}")
    if failures and not args.no_gate:
        return 1
    return 0


def _reread(work: Path, modes: list[R.Mode], tests: list[str], runs: dict[str, dict]) -> None:
    """--from-runs: the runs as the last `make regress` left them in work/runs/MODE/."""
    try:
        previous = json.loads((work / "summary.json").read_text()).get("runs", {})
    except (OSError, ValueError):
        previous = {}
    for mode in modes:
        out = work / "runs" / mode.name
        if not (out / "pg_regress.out").is_file():
            raise SystemExit(f"regress: --from-runs: no run of {mode.name} in {out}")
        old = previous.get(mode.name, {})
        runs[mode.name] = _collect(mode, out, tests,
                                   old.get("max_connections", mode.max_connections),
                                   old.get("seconds", 0.0))


# -- database state --------------------------------------------------------------------

def _fresh_state(cluster: LocalCluster) -> LocalCluster:
    """Start the cluster and give it a fresh database `app` as the demo bootstraps it.

    Anything global the suite leaves behind (roles, tablespaces, role settings) is dropped
    too; a cluster that cannot be cleaned is made anew."""
    try:
        if not cluster.exists():
            cluster.create()
        else:
            cluster.start()
        _reset(cluster)
    except ClusterError as exc:
        print(f"regress: cleaning the cluster failed, making it anew: {exc}", file=sys.stderr)
        cluster.destroy()
        cluster = LocalCluster(cluster.base_dir, shards=1, replicas=0, database=DATABASE)
        cluster.create()
        _reset(cluster)
    return cluster


def _reset(cluster: LocalCluster) -> None:
    primary = cluster.shards[0].primary
    user = cluster.user
    # A prepared transaction (the prepared_xacts test's, when it fails) holds its database;
    # ROLLBACK PREPARED runs in the transaction's own database.
    dbs = primary.psql_local("SELECT DISTINCT database FROM pg_prepared_xacts").split()
    for db in dbs:
        primary.psql_local("SELECT format('ROLLBACK PREPARED %L;', gid) FROM pg_prepared_xacts"
                           " WHERE database = current_database() \\gexec\n", database=db)
    primary.psql_local(CLEANUP_SQL.format(user="'" + user.replace("'", "''") + "'",
                                          ident='"' + user.replace('"', '""') + '"'))
    primary.psql_local(bootstrap_script(user=user, password=cluster.password,
                                        database=DATABASE))
    primary.psql_local("".join(f"ALTER DATABASE {DATABASE} SET {s};\n"
                               for s in DATABASE_SETTINGS))


# -- the proxy -------------------------------------------------------------------------

@contextlib.contextmanager
def _demo(demo_dir: Path, mode: R.Mode, log_path: Path) -> Iterator[dict]:
    """`pgshard demo --shards 1 --replicas 0 --pool-mode M` until the block ends."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    state_file = demo_dir / "demo.json"
    state_file.unlink(missing_ok=True)
    # A fresh metadata store: the catalog seeds from the cluster as it is now (a cluster
    # made anew has other ports), no users or state left by the previous mode.
    for stale in demo_dir.glob("meta.db*"):
        stale.unlink()
    pgshard = Path(sys.executable).with_name("pgshard")
    argv = [str(pgshard), "demo", "--data-dir", str(demo_dir), "--shards", "1",
            "--replicas", "0", "--port", str(free_port()), "--api-port", str(free_port()),
            "--pool-mode", mode.pool_mode, "--session-reset", "close"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + DEMO_READY_TIMEOUT
        while not state_file.is_file():
            if proc.poll() is not None:
                raise SystemExit(f"regress: pgshard demo exited with {proc.returncode}; "
                                 f"see {log_path}")
            if time.monotonic() > deadline:
                raise SystemExit(f"regress: pgshard demo not ready in {DEMO_READY_TIMEOUT:g} s;"
                                 f" see {log_path}")
            time.sleep(0.2)
        time.sleep(0.2)  # written in one call, but let it land whole
        yield json.loads(state_file.read_text())
    finally:
        _stop(proc, signal.SIGINT, 90)


def _stop(proc: subprocess.Popen, sig: int, timeout: float) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# -- the suite -------------------------------------------------------------------------

def _run_suite(args, mode: R.Mode, state: dict, suite: Path, out: Path,
               tests: list[str]) -> dict:
    from urllib.parse import unquote, urlsplit

    dsn = urlsplit(state["shards"][0]["primary"] if not mode.through_proxy
                   else state["client_dsn"])
    shutil.rmtree(out, ignore_errors=True)
    (out / "results").mkdir(parents=True)
    # The server (the postgres OS user) writes COPY TO files into results/.
    for path in (out, out / "results"):
        os.chmod(path, 0o777)
    argv = [args.pg_regress, f"--inputdir={suite}", f"--outputdir={out}",
            f"--bindir={args.bindir}", f"--dlpath={args.dlpath}",
            f"--schedule={suite / 'parallel_schedule'}", "--use-existing",
            f"--dbname={DATABASE}", f"--host={dsn.hostname}", f"--port={dsn.port}",
            f"--user={unquote(dsn.username or '')}",
            f"--max-connections={args.max_connections or mode.max_connections}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = unquote(dsn.password or "")
    env["PGCONNECT_TIMEOUT"] = "30"
    t0 = time.monotonic()
    with open(out / "pg_regress.out", "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=out,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        complete, reason = True, ""
        try:
            proc.wait(args.timeout)
        except subprocess.TimeoutExpired:
            complete, reason = False, f"stopped after {args.timeout:g} s"
            _stop(proc, signal.SIGTERM, 10)
    run = _collect(mode, out, tests, args.max_connections or mode.max_connections,
                   time.monotonic() - t0)
    if complete and not run["complete"]:
        reason = f"pg_regress exited {proc.returncode} after {len(run['tests'])} tests"
    if reason:
        run.update(complete=False, incomplete_reason=reason)
    return run


def _collect(mode: R.Mode, out: Path, tests: list[str], max_connections: int,
             seconds: float) -> dict:
    """One mode's run as summary.json records it, read from pg_regress's output dir."""
    output = (out / "pg_regress.out").read_text(errors="replace")
    status = R.parse_output(output)
    complete = len(status) >= len(tests)
    reason = "" if complete else f"{len(status)} of {len(tests)} tests reported"
    diffs_path = out / "regression.diffs"
    diffs = R.split_diffs(diffs_path.read_text(errors="replace")) if diffs_path.is_file() else {}
    failed = [t for t in tests if status.get(t) != "ok"]
    return {"mode": mode.name, "label": mode.label, "pool_mode": mode.pool_mode,
            "through_proxy": mode.through_proxy, "max_connections": max_connections,
            "passed": R.passed(status, tests), "failed": failed, "tests": status,
            "excerpts": {t: R.excerpt(diffs.get(t, []), R.JSON_EXCERPT_LINES) for t in failed},
            "seconds": round(seconds, 1), "complete": complete, "incomplete_reason": reason,
            "output_dir": str(out)}


def _server_version(bindir: str) -> str:
    out = subprocess.run([str(Path(bindir) / "postgres"), "--version"], capture_output=True,
                         text=True, check=False).stdout
    m = re.search(r"\(PostgreSQL\) (\S+)", out)
    return m.group(1) if m else "?"


def _proxy_code(reread: Path | None) -> dict:
    """Which pgshard the demo ran: this checkout (its HEAD when the run started, whether
    pgshard/ had uncommitted edits) or, when $PYTHONPATH is set, the tree it puts first
    (e.g. a `git archive` snapshot of one commit, for a baseline)."""
    if reread is not None:
        with contextlib.suppress(OSError, ValueError, KeyError):
            return json.loads((reread / "summary.json").read_text())["proxy_code"]
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], capture_output=True, text=True, check=False,
                              cwd=HERE).stdout.strip()
    return {"pythonpath": os.environ.get("PYTHONPATH", ""), "head": git("rev-parse", "HEAD"),
            "uncommitted_in_pgshard": bool(git("status", "--porcelain", "--", "../../pgshard"))}


def _report(summary: dict) -> str:
    runs, total = summary["runs"], summary["total"]
    lines = ["", f"PostgreSQL {summary['server']} regression suite, parallel_schedule, "
             f"{total} tests", "", R.render_table(runs, total)]
    direct = runs.get("direct")
    if direct and direct["failed"]:
        lines += ["", f"failing directly too (not counted against the proxy): "
                  f"{', '.join(direct['failed'])}"]
    for name, run in runs.items():
        caused = run.get("proxy_caused")
        if not caused:
            continue
        lines += ["", f"== {name}: {len(caused)} test(s) pass directly, fail through the proxy"]
        for test in caused:
            lines.append(f"-- {test} ({run['tests'].get(test, 'not run')})")
            lines += [f"   {line}" for line in run["excerpts"].get(test, [])[:R.EXCERPT_LINES]]
    gate = summary["gate"]
    lines += ["", "gate: " + ("ok" if gate["ok"] else "FAILED")]
    lines += [f"  FAIL {f}" for f in gate["failures"]]
    lines += [f"  note {n}" for n in gate["notes"]]
    return "\n".join(lines)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/regress.sh", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", required=True, help="src/test/regress of the server's version")
    p.add_argument("--dlpath", required=True, help="where regress.so/autoinc.so/refint.so are")
    p.add_argument("--pg-regress", required=True, help="Debian's pgxs pg_regress")
    p.add_argument("--bindir", required=True, help="the server's bin directory (psql)")
    p.add_argument("--work-dir", default=".regress")
    p.add_argument("--server-version", default=None)
    p.add_argument("--modes", type=lambda s: s.split(","), default=list(R.MODE_NAMES),
                   help=f"comma-separated subset of {','.join(R.MODE_NAMES)} (default all)")
    p.add_argument("--max-connections", type=int, default=None,
                   help="override every mode's pg_regress --max-connections")
    p.add_argument("--timeout", type=float, default=1200,
                   help="seconds one mode's pg_regress may take before it is stopped")
    p.add_argument("--baseline", default=str(HERE / "baseline.json"))
    p.add_argument("--no-gate", action="store_true", help="report, exit 0 whatever the gate")
    p.add_argument("--from-runs", action="store_true",
                   help="run nothing: report and gate the last runs left in WORK_DIR/runs/")
    p.add_argument("--write-baseline", action="store_true",
                   help="record this run's proxy-caused failures and floors as the baseline")
    p.add_argument("--parallel-margin", type=int, default=5,
                   help="--write-baseline: transaction-4 floor = passed minus this "
                   "(its count varies from run to run)")
    p.add_argument("--serial-margin", type=int, default=2,
                   help="--write-baseline: transaction-1 floor = passed minus this")
    args = p.parse_args(argv)
    unknown = set(args.modes) - set(R.MODE_NAMES)
    if unknown:
        p.error(f"unknown mode(s) {', '.join(sorted(unknown))}; pick from {R.MODE_NAMES}")
    if "direct" not in args.modes:
        args.modes.insert(0, "direct")   # the proxy runs are judged against it
    return args


if __name__ == "__main__":
    sys.exit(main())
