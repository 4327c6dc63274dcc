"""`make bench`: pgbench select-only through pgshard vs PgBouncer vs straight to Postgres.

Sets up a 1-shard and a 2-shard harness cluster with pgbench data, PgBouncer and two pgshard
subprocesses, runs every (protocol mode, clients) cell against each target back to back,
prints the comparison table and writes the figures as JSON. Everything it started is torn
down at the end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import click

from bench import report
from bench.proccpu import cpu_seconds
from bench.runner import (
    MODES,
    Measurement,
    run_pgbench,
    write_hinted_scripts,
    write_sql_routed_script,
)
from bench.targets import (
    PGBOUNCER_NEW_ENV,
    SOURCE_ENV,
    BenchSetupError,
    ClusterError,
    Endpoint,
    ServerProcess,
    committed_transactions,
    load_pgbench_data,
    node_endpoint,
    pgbench_binary,
    pgbouncer_version,
    server_version,
    start_pgbouncer,
    start_pgshard,
)
from pgshard import __version__ as pgshard_version
from pgshard.cluster import LocalCluster

DEFAULT_OUT = Path(__file__).with_name("results.json")
POOL_SIZE = 20
WARMUP_SECONDS = 1


@dataclass(frozen=True)
class Target:
    """One column of the comparison: where pgbench connects and which script per mode."""

    name: str
    endpoint: Endpoint
    scripts: dict[str, Path] | None = None     # mode -> script file; None = built-in -S
    server: ServerProcess | None = None         # the proxy in the path, watched for crashes

    def script(self, mode: str) -> Path | None:
        return None if self.scripts is None else self.scripts[mode]


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise click.BadParameter("client counts must be >= 1")
    return values


def _mode_list(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if not modes or unknown:
        raise click.BadParameter(f"modes are a comma-separated subset of {','.join(MODES)}")
    return modes


@click.command()
@click.option("--scale", type=click.IntRange(1), default=None,
              help="pgbench -i scale factor  [default: 10, 2 with --quick]")
@click.option("--duration", type=click.IntRange(1), default=None,
              help="seconds per run (pgbench -T)  [default: 10, 3 with --quick]")
@click.option("--clients", "clients_text", default=None,
              help="comma-separated client counts  [default: 1,8,32, 8 with --quick]")
@click.option("--modes", "modes_text", default=",".join(MODES), show_default=True,
              help="comma-separated pgbench -M modes")
@click.option("--quick", is_flag=True, help="a fast sanity run (make bench-quick): 3 s per run, 8 clients, scale 2")
@click.option("--script", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="an extra custom pgbench script, run against pgshard-2 only")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_OUT,
              show_default=True, help="where to write the JSON results")
@click.option("--pgbouncer-new", "pgbouncer_new", envvar=PGBOUNCER_NEW_ENV, default=None,
              type=click.Path(dir_okay=False, path_type=Path),
              help=f"a second, newer pgbouncer binary (e.g. 1.25) as its own column "
                   f"[env {PGBOUNCER_NEW_ENV}; skipped when unset or missing]")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="also run pgshard-1's cluster under `serve --workers N` as its own column "
                   f"({report.PGSHARD_1_WORKERS}; N > 1), pool_size split over the workers")
def main(scale: int | None, duration: int | None, clients_text: str | None, modes_text: str,
         quick: bool, script: Path | None, out: Path, pgbouncer_new: Path | None,
         workers: int) -> None:
    """Compare pgbench -S throughput, latency and the proxies' CPU per query: direct,
    PgBouncer (and a newer PgBouncer when given), pgshard (1 and 2 shards)."""
    duration = duration or (3 if quick else 10)
    scale = scale or (2 if quick else 10)
    clients = _int_list(clients_text or ("8" if quick else "1,8,32"))
    modes = _mode_list(modes_text)
    pgbench_binary()  # fail before creating anything when pgbench is missing
    signal.signal(signal.SIGTERM, _raise_interrupt)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    work = Path(tempfile.mkdtemp(prefix="pgshard-bench-"))
    work.chmod(0o755)  # Postgres runs as the postgres OS user under root: it must traverse
    clusters: list[LocalCluster] = []
    servers: list[ServerProcess] = []
    results: list[Measurement] = []
    meta = {"started_at": started, "scale": scale, "duration_s": duration, "clients": clients,
            "modes": modes, "pool_size": POOL_SIZE, "script": str(script) if script else None,
            "workers": workers,
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "pgshard": pgshard_version, "pgbouncer": pgbouncer_version(),
            "pgshard_source": os.environ.get(SOURCE_ENV) or None,
            "pure": os.environ.get("PGSHARD_PURE") or None,
            "notes": [
                "pgbench -n (no pre-run vacuum), -j = min(clients, 2), select-only",
                "direct, pgbouncer and pgshard-1 share one 1-shard cluster's primary",
                "pgshard-2: a 2-shard cluster where EVERY shard holds the full pgbench "
                "dataset (select-only); a comment hint routes each query to one shard "
                "by its aid",
                f"pool size {POOL_SIZE} for both PgBouncer and pgshard, transaction pooling; "
                "client auth scram-sha-256 on all paths",
                "us/q: the proxy process's (and its children's) user+system CPU time from "
                "/proc/<pid>/stat over the run, divided by the queries it served "
                "(1 per select-only transaction)",
            ]}
    bouncer_new = _pgbouncer_new(pgbouncer_new, meta)
    exit_code = 0
    try:
        targets = _set_up(work, scale, script, clusters, servers, meta, bouncer_new, workers)
        _warm_up(targets)
        baseline = _commits_per_shard(clusters[1])
        _run_matrix(targets, modes, clients, duration, scale, results)
        meta["pgshard_2_routing"] = _routing_split(clusters[1], baseline)
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        meta["interrupted"] = True
        exit_code = 130
    except (BenchSetupError, ClusterError) as exc:
        print(f"bench setup failed: {exc}", file=sys.stderr)
        exit_code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
        _report_server_logs(servers, results)
        _tear_down(work, clusters, servers)
    if results:
        names = list(dict.fromkeys(m.target for m in results))
        print()
        print(report.render_table(results, names))
        failures = report.render_failures(results)
        if failures:
            print()
            print(failures)
        print()
        if "pgshard_2_routing" in meta:
            split = ", ".join(f"{name} {share:.1%}" for name, share
                              in meta["pgshard_2_routing"]["share"].items())
            print(f"pgshard-2 routing (commits per shard during the runs): {split}")
        for note in meta["notes"]:
            print(f"note: {note}")
        meta["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        report.write_json(out, report.results_document(meta, results))
        print(f"results written to {out}")
    sys.exit(exit_code)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _pgbouncer_new(path: Path | None, meta: dict) -> str | None:
    """The newer PgBouncer's binary when given and present; a note either way."""
    if path is None:
        meta["notes"].append(f"{report.PGBOUNCER_NEW}: skipped (no --pgbouncer-new / "
                             f"{PGBOUNCER_NEW_ENV})")
        return None
    if not path.is_file():
        meta["notes"].append(f"{report.PGBOUNCER_NEW}: skipped ({path} does not exist)")
        return None
    version = pgbouncer_version(str(path))
    meta["pgbouncer_new"] = version
    meta["notes"].append(f"{report.PGBOUNCER_NEW}: {version} ({path}); "
                         f"{report.PGBOUNCER}: {meta['pgbouncer']}")
    return str(path)


def _set_up(work: Path, scale: int, script: Path | None, clusters: list[LocalCluster],
            servers: list[ServerProcess], meta: dict,
            bouncer_new: str | None = None, workers: int = 1) -> list[Target]:
    """Clusters, data, PgBouncer and pgshard; appends to clusters/servers as it goes so the
    caller can tear down whatever got started."""
    t0 = time.monotonic()
    print(f"creating a 1-shard and a 2-shard cluster in {work} ...", flush=True)
    for name, shards in (("one-shard", 1), ("two-shards", 2)):
        # Registered before create(): a half-created cluster is torn down too.
        clusters.append(LocalCluster(work / name, shards=shards, replicas=0))
    for cluster in clusters:
        cluster.create()
    one, two = clusters
    primaries = [one.shards[0].primary] + [s.primary for s in two.shards]
    meta["postgres"] = server_version(primaries[0])
    print(f"loading pgbench data (scale {scale}) on {len(primaries)} primaries ...", flush=True)
    with ThreadPoolExecutor(max_workers=len(primaries)) as pool:
        for future in [pool.submit(load_pgbench_data, p, scale) for p in primaries]:
            future.result()
    print("starting PgBouncer and pgshard ...", flush=True)
    bouncer, bouncer_ep = start_pgbouncer(one.shards[0].primary, work, POOL_SIZE)
    servers.append(bouncer)
    newer = None
    if bouncer_new is not None:
        newer = start_pgbouncer(one.shards[0].primary, work, POOL_SIZE, binary=bouncer_new,
                                name=report.PGBOUNCER_NEW)
        servers.append(newer[0])
    shard1, shard1_ep = start_pgshard("pgshard-1", one, work, POOL_SIZE)
    servers.append(shard1)
    shard2, shard2_ep = start_pgshard("pgshard-2", two, work, POOL_SIZE)
    servers.append(shard2)
    multi = None
    if workers > 1:
        # The same server connections in all: each worker has pools of its own.
        per_worker = -(-POOL_SIZE // workers)
        multi = start_pgshard(report.PGSHARD_1_WORKERS, one, work, per_worker,
                              proxy_settings={"workers": str(workers)})
        servers.append(multi[0])
        meta["notes"].append(f"{report.PGSHARD_1_WORKERS}: pgshard-1's cluster under "
                             f"`serve --workers {workers}`, pool_size {per_worker} per worker; "
                             "us/q counts the parent and every worker")
    hinted = write_hinted_scripts(work)
    targets = [
        Target(report.DIRECT, node_endpoint(one.shards[0].primary)),
        Target(report.PGBOUNCER, bouncer_ep, server=bouncer),
        *([Target(report.PGBOUNCER_NEW, newer[1], server=newer[0])] if newer else []),
        Target(report.PGSHARD_1, shard1_ep, server=shard1),
        *([Target(report.PGSHARD_1_WORKERS, multi[1], server=multi[0])] if multi else []),
        Target(report.PGSHARD_2, shard2_ep, scripts=hinted, server=shard2),
        Target(report.PGSHARD_2_SQL, shard2_ep, scripts=write_sql_routed_script(work),
               server=shard2),
    ]
    if script is not None:
        copy = work / script.name
        shutil.copyfile(script, copy)
        targets.append(Target(report.PGSHARD_2_SCRIPT, shard2_ep,
                              scripts=dict.fromkeys(MODES, copy), server=shard2))
    print(f"setup done in {time.monotonic() - t0:.0f}s", flush=True)
    return targets


def _warm_up(targets: list[Target]) -> None:
    """A short unrecorded run per target: fills caches and the proxies' server pools."""
    for target in targets:
        m = run_pgbench(target.name, target.endpoint, mode="simple", clients=2,
                        duration=WARMUP_SECONDS, script=target.script("simple"))
        if not m.ok:
            print(f"warm-up against {target.name} failed: {m.error}", flush=True)


def _run_matrix(targets: list[Target], modes: list[str], clients: list[int], duration: int,
                scale: int, results: list[Measurement]) -> None:
    """Every (mode, clients) cell, its targets back to back so drift hits them alike."""
    total = len(modes) * len(clients) * len(targets)
    n = 0
    for mode in modes:
        for count in clients:
            for target in targets:
                n += 1
                pid = target.server.proc.pid if target.server and target.server.proc else None
                cpu0 = cpu_seconds(pid) if pid else None
                m = run_pgbench(target.name, target.endpoint, mode=mode, clients=count,
                                duration=duration, script=target.script(mode), scale=scale)
                cpu1 = cpu_seconds(pid) if pid else None
                if cpu0 is not None and cpu1 is not None and m.ok and m.transactions:
                    m.cpu_us_per_query = (cpu1 - cpu0) * 1e6 / m.transactions
                if target.server is not None and not target.server.alive():
                    m.ok = False
                    m.error = (f"{target.server.name} exited (status "
                               f"{target.server.proc.returncode}); {m.error or ''}").strip()
                results.append(m)
                cpu = (f"  {m.cpu_us_per_query:6.1f} us/q" if m.cpu_us_per_query is not None
                       else "")
                shown = (f"{m.tps:9.0f} tps  {m.latency_ms:7.3f} ms{cpu}" if m.ok
                         else f"FAILED: {m.error}")
                print(f"[{n:>2}/{total}] -M {mode:<8} -c {count:<3} {target.name:<16} {shown}",
                      flush=True)


def _commits_per_shard(cluster: LocalCluster) -> dict[str, int]:
    return {s.name: committed_transactions(s.primary) for s in cluster.shards}


def _routing_split(cluster: LocalCluster, baseline: dict[str, int]) -> dict:
    """How pgshard-2's traffic spread over its shards: each shard's share of the commits."""
    time.sleep(11)  # idle backends flush pending statistics within 10 s (PGSTAT_IDLE_INTERVAL)
    counts = {name: n - baseline[name] for name, n in _commits_per_shard(cluster).items()}
    total = sum(counts.values()) or 1
    return {"commits": counts, "share": {name: n / total for name, n in counts.items()}}


def _report_server_logs(servers: list[ServerProcess], results: list[Measurement]) -> None:
    """Before the logs are deleted: the tail of each proxy that died or had failed runs."""
    failed_targets = {m.target for m in results if not m.ok}
    for server in servers:
        exited = server.proc is not None and server.proc.poll() is not None
        failed = any(t.startswith(server.name) for t in failed_targets)
        if not (exited or failed):
            continue
        state = f"exited with status {server.proc.returncode}" if exited else "had failed runs"
        print(f"{server.name} {state}; last lines of its log {server.log_path}:\n"
              f"{server.log_tail() or '(empty)'}", file=sys.stderr)


def _tear_down(work: Path, clusters: list[LocalCluster], servers: list[ServerProcess]) -> None:
    for server in reversed(servers):
        try:
            server.stop()
        except OSError as exc:
            print(f"stopping {server.name}: {exc}", file=sys.stderr)
    for cluster in clusters:
        try:
            cluster.destroy()
        except (ClusterError, OSError) as exc:
            print(f"destroying {cluster}: {exc}", file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
