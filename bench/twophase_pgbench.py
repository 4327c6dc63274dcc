"""`make bench-2pc`: what two-phase commit costs through pgshard, measured with pgbench.

On a 2-shard harness cluster loaded with pgbench data, through pgshard:
- cross-shard: one transaction, an UPDATE on a key of each shard (two-phase commit), vs the
  same two UPDATEs as two single-shard transactions, vs one transaction of two UPDATEs on one
  shard (the same statements, committed in one phase);
- single-shard pgbench -N-style transactions through a pgshard with `two_phase_commit = true`
  and through one with `false`, in alternating rounds: single-shard traffic must not pay for
  2PC (the difference should be within the spread between rounds).
Prints the tables with ratios and writes bench/results-2pc.json. Everything it started is
torn down at the end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import click

from bench import report
from bench import twophase_scripts as scripts
from bench.runner import MODES, Measurement, run_pgbench
from bench.targets import (
    BenchSetupError,
    ClusterError,
    Endpoint,
    ServerProcess,
    load_pgbench_data,
    pgbench_binary,
    server_version,
    start_pgshard,
)
from pgshard import __version__ as pgshard_version
from pgshard.cluster import LocalCluster
from pgshard.config import load_config
from pgshard.ring.hashing import canonical_key

DEFAULT_OUT = Path(__file__).with_name("results-2pc.json")
POOL_SIZE = 20
WARMUP_SECONDS = 1
TABLES = {"pgbench_accounts": "aid", "pgbench_history": "aid"}

CROSS, SAME, TWO = "cross-2pc", "same-shard-1pc", "two-txns-1pc"
ON, OFF = "N-2pc-on", "N-2pc-off"
PAIR_RATIOS = (("cross/two", CROSS, TWO), ("cross/same", CROSS, SAME))


def _csv(text: str, kind=int) -> list:
    try:
        return [kind(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected a comma-separated list, got {text!r}") from None


@click.command()
@click.option("--scale", type=click.IntRange(1), default=None,
              help="pgbench -i scale factor  [default: 10, 2 with --quick]")
@click.option("--duration", type=click.IntRange(1), default=None,
              help="seconds per run  [default: 10, 3 with --quick]")
@click.option("--clients", "clients_text", default="8,32", show_default=True,
              help="comma-separated client counts")
@click.option("--modes", "modes_text", default="simple,prepared", show_default=True,
              help="comma-separated pgbench -M modes")
@click.option("--rounds", type=click.IntRange(1), default=None,
              help="alternating 2PC on/off rounds per cell  [default: 4, 2 with --quick]")
@click.option("--keys", "per_shard", type=click.IntRange(2), default=2048, show_default=True,
              help="pgbench_accounts keys per shard the cross-shard scripts pick from")
@click.option("--quick", is_flag=True, help="a fast sanity run: scale 2, 3 s per run")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_OUT,
              show_default=True, help="where to write the JSON results")
def main(scale: int | None, duration: int | None, clients_text: str, modes_text: str,
         rounds: int | None, per_shard: int, quick: bool, out: Path) -> None:
    """pgbench through pgshard on 2 shards: a cross-shard transaction (2PC) vs two
    single-shard ones, and single-shard -N with two_phase_commit on vs off."""
    scale = scale or (2 if quick else 10)
    duration = duration or (3 if quick else 10)
    rounds = rounds or (2 if quick else 4)
    clients = _csv(clients_text)
    modes = _csv(modes_text, str)
    if not clients or min(clients) < 1 or not modes or set(modes) - set(MODES):
        raise click.BadParameter(f"clients >= 1; modes a subset of {','.join(MODES)}")
    pgbench_binary()
    signal.signal(signal.SIGTERM, _raise_interrupt)
    work = Path(tempfile.mkdtemp(prefix="pgshard-bench-2pc-"))
    work.chmod(0o755)  # Postgres runs as the postgres OS user under root: it must traverse
    clusters: list[LocalCluster] = []
    servers: list[ServerProcess] = []
    results: list[tuple[int, Measurement]] = []   # (round, measurement)
    meta = {"started_at": datetime.now(UTC).isoformat(timespec="seconds"), "scale": scale,
            "duration_s": duration, "clients": clients, "modes": modes, "rounds": rounds,
            "keys_per_shard": per_shard, "pool_size": POOL_SIZE, "cpus": os.cpu_count(),
            "python": platform.python_version(), "pgshard": pgshard_version, "notes": [
                "2 shards, no replicas, harness settings (fsync/synchronous_commit off), "
                "decision log in the embedded SQLite store",
                "TPS counts script runs: each is one pair of UPDATEs (cross-2pc: one "
                "transaction on two shards; two-txns-1pc: two transactions, one per shard; "
                "same-shard-1pc: one transaction, both keys on one shard)",
                f"pool size {POOL_SIZE} per shard, transaction pooling, pgbench -n, "
                "-j = min(clients, 2)",
                "N-2pc-on / N-2pc-off: two pgshard processes on the same cluster, "
                "two_phase_commit true / false, run in alternating rounds; spread = "
                "(max - min) / median TPS over the rounds of one target; paired = the "
                "on/off ratio of each round's back-to-back runs (median, min, max)",
            ]}
    exit_code = 0
    try:
        on, off, paths = _set_up(work, scale, per_shard, clusters, servers, meta)
        _warm_up([(on, paths[label]) for label in (CROSS, TWO, SAME)])
        _run_pairs(on, paths, modes, clients, duration, scale, results)
        meta["check"] = _check_pairs(clusters[0], meta.pop("_keys"))
        _warm_up([(on, paths[OFF]), (off, paths[OFF])])   # -N changes any row: after the check
        _run_on_off(on, off, paths, modes, clients, duration, scale, rounds, results)
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        meta["interrupted"] = True
        exit_code = 130
    except (BenchSetupError, ClusterError) as exc:
        print(f"bench setup failed: {exc}", file=sys.stderr)
        exit_code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
        _report_server_logs(servers, [m for _, m in results])
        _tear_down(work, clusters, servers)
    if results:
        summary = _summary(results)
        print()
        print(_render(summary))
        failed = report.render_failures([m for _, m in results])
        if failed:
            print("\n" + failed)
        if "check" in meta:
            print(f"\ncheck after the cross-shard runs: {meta['check']['verdict']}")
        for note in meta["notes"]:
            print(f"note: {note}")
        meta.pop("_keys", None)
        meta["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        report.write_json(out, {"meta": meta, "summary": summary, "results": [
            {"round": r, **m.as_dict()} for r, m in results]})
        print(f"results written to {out}")
        if "check" in meta and not meta["check"]["ok"]:
            exit_code = exit_code or 1
    sys.exit(exit_code)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _set_up(work: Path, scale: int, per_shard: int, clusters: list[LocalCluster],
            servers: list[ServerProcess], meta: dict):
    t0 = time.monotonic()
    print(f"creating a 2-shard cluster in {work} ...", flush=True)
    cluster = LocalCluster(work / "two-shards", shards=2, replicas=0)
    clusters.append(cluster)   # before create(): a half-created cluster is torn down too
    cluster.create()
    primaries = [s.primary for s in cluster.shards]
    meta["postgres"] = server_version(primaries[0])
    print(f"loading pgbench data (scale {scale}) on both primaries ...", flush=True)
    with ThreadPoolExecutor(max_workers=2) as pool:
        for future in [pool.submit(load_pgbench_data, p, scale) for p in primaries]:
            future.result()
    print("starting pgshard with two_phase_commit on and off ...", flush=True)
    # One pgshard cluster (one store) with two routers: a second store's 2PC recovery would
    # take the first's prepared transactions for abandoned ones and roll them back.
    store = work / "meta.db"
    on, on_ep = start_pgshard("pgshard-2pc-on", cluster, work, POOL_SIZE, tables=TABLES,
                              store_path=store)
    servers.append(on)
    off, off_ep = start_pgshard("pgshard-2pc-off", cluster, work, POOL_SIZE, tables=TABLES,
                                proxy_settings={"two_phase_commit": "false"}, store_path=store)
    servers.append(off)
    # Keys are placed with the catalog the proxies seeded their (fresh) stores from.
    catalog = load_config(work / "pgshard-2pc-on.toml").catalog
    keys = scripts.keys_per_shard(lambda aid: catalog.shard_for_key(canonical_key(aid)).name,
                                  [s.name for s in cluster.shards], scale, per_shard)
    meta["_keys"] = keys
    texts = {CROSS: scripts.cross_shard_script(keys), SAME: scripts.same_shard_script(keys),
             TWO: scripts.two_transactions_script(keys), OFF: scripts.SIMPLE_UPDATE_SCRIPT}
    paths = {}
    for name, text in texts.items():
        paths[name] = work / f"{name}.sql"
        paths[name].write_text(text)
    print(f"setup done in {time.monotonic() - t0:.0f}s", flush=True)
    return (on, on_ep), (off, off_ep), paths


def _warm_up(pairs) -> None:
    for (server, endpoint), path in pairs:
        m = run_pgbench(server.name, endpoint, mode="simple", clients=2,
                        duration=WARMUP_SECONDS, script=path)
        if not m.ok:
            print(f"warm-up of {path.name} through {server.name} failed: {m.error}", flush=True)


def _measure(label: str, target: tuple[ServerProcess, Endpoint], path: Path, mode: str,
             clients: int, duration: int, scale: int) -> Measurement:
    server, endpoint = target
    m = run_pgbench(label, endpoint, mode=mode, clients=clients, duration=duration,
                    script=path, scale=scale)
    if not server.alive():
        m.ok = False
        m.error = f"{server.name} exited (status {server.proc.returncode}); {m.error or ''}"
    shown = f"{m.tps:9.0f} tps  {m.latency_ms:7.3f} ms" if m.ok else f"FAILED: {m.error}"
    print(f"-M {mode:<8} -c {clients:<3} {label:<15} {shown}", flush=True)
    return m


def _run_pairs(on, paths, modes, clients, duration, scale, results) -> None:
    """The three pair-of-UPDATEs scripts per (mode, clients), back to back."""
    for mode in modes:
        for count in clients:
            for label in (CROSS, TWO, SAME):
                results.append((0, _measure(label, on, paths[label], mode, count, duration,
                                            scale)))


def _run_on_off(on, off, paths, modes, clients, duration, scale, rounds, results) -> None:
    """Single-shard -N through both proxies, alternating which goes first each round."""
    for mode in modes:
        for count in clients:
            for r in range(1, rounds + 1):
                order = [(ON, on), (OFF, off)] if r % 2 else [(OFF, off), (ON, on)]
                for label, target in order:
                    results.append((r, _measure(label, target, paths[OFF], mode, count,
                                                duration, scale)))


def _check_pairs(cluster: LocalCluster, keys: dict[str, list[int]]) -> dict:
    """After the pair scripts: every UPDATE reached its key's owner (the other shard's copy
    of the row is untouched), every debit has its credit (the balances sum to zero) and no
    prepared transaction is left behind."""
    facts: dict = {}
    total = 0
    stray = 0
    touched = {}
    for shard in cluster.shards:
        node = shard.primary
        for owner, aids in keys.items():
            arr = "'{" + ",".join(map(str, aids)) + "}'::int[]"
            s, n = node.psql(f"SELECT coalesce(sum(abalance), 0), count(*) FILTER (WHERE "
                             f"abalance <> 0) FROM pgbench_accounts WHERE aid = ANY({arr})"
                             ).split("|")
            if owner == shard.name:
                total += int(s)
                touched[owner] = int(n)
            else:
                stray += int(n)
        facts[f"{shard.name}_prepared_left"] = int(node.psql(
            "SELECT count(*) FROM pg_prepared_xacts"))
    prepared = sum(v for k, v in facts.items() if k.endswith("_prepared_left"))
    ok = total == 0 and stray == 0 and prepared == 0 and all(touched.values())
    facts.update(balance_sum=total, rows_changed_on_wrong_shard=stray,
                 rows_changed_per_owner=touched, ok=ok)
    facts["verdict"] = ("ok: balances sum to 0, rows changed only on their owners "
                        f"({touched}), no prepared transaction left" if ok else
                        f"FAILED: {facts}")
    return facts


def _summary(results: list[tuple[int, Measurement]]) -> list[dict]:
    """Per (mode, clients): median TPS and latency per target, spread, and the ratios."""
    cells: dict[tuple[str, int], dict[str, list[Measurement]]] = {}
    by_round: dict[tuple[str, int, int], dict[str, Measurement]] = {}
    for r, m in results:
        cells.setdefault((m.mode, m.clients), {}).setdefault(m.target, []).append(m)
        if r:
            by_round.setdefault((m.mode, m.clients, r), {})[m.target] = m
    rows = []
    for (mode, clients), by_target in cells.items():
        row: dict = {"mode": mode, "clients": clients}
        for label, ms in by_target.items():
            ok = [m for m in ms if m.ok]
            if not ok:
                row[label] = None
                continue
            tps = [m.tps for m in ok]
            med = statistics.median(tps)
            row[label] = {"tps": med, "latency_ms": statistics.median(m.latency_ms for m in ok),
                          "runs": len(ok), "spread": (max(tps) - min(tps)) / med if med else None}
        for name, num, den in (*PAIR_RATIOS, ("on/off", ON, OFF)):
            a, b = row.get(num), row.get(den)
            row[name] = a["tps"] / b["tps"] if a and b and b["tps"] else None
        # on/off of each round (the two ran back to back): drift between rounds cancels.
        paired = [ms[ON].tps / ms[OFF].tps for (mo, c, _), ms in by_round.items()
                  if (mo, c) == (mode, clients) and ON in ms and OFF in ms
                  and ms[ON].ok and ms[OFF].ok and ms[OFF].tps]
        if paired:
            row.update({"paired med": statistics.median(paired), "paired min": min(paired),
                        "paired max": max(paired)})
        rows.append(row)
    return rows


def _render(summary: list[dict]) -> str:
    pair = _table(summary, [CROSS, TWO, SAME], [r[0] for r in PAIR_RATIOS], spread=False)
    onoff = _table(summary, [ON, OFF], ["on/off", "paired med", "paired min", "paired max"],
                   spread=True)
    return ("cross-shard pair of UPDATEs (TPS = pairs/s):\n" + pair
            + "\n\nsingle-shard -N, two_phase_commit on vs off (median of rounds; paired: "
            "on/off per round):\n" + onoff)


def _table(summary: list[dict], targets: list[str], ratios: list[str], spread: bool) -> str:
    header = (["mode", "clients"] + [f"TPS {t}" for t in targets] + [f"ms {t}" for t in targets]
              + ([f"spread {t}" for t in targets] if spread else []) + ratios)
    rows = []
    for row in summary:
        if not any(t in row for t in targets):
            continue
        cells = [row["mode"], str(row["clients"])]
        cells += [_fmt(row.get(t), "tps", "{:.0f}") for t in targets]
        cells += [_fmt(row.get(t), "latency_ms", "{:.3f}") for t in targets]
        if spread:
            cells += [_fmt(row.get(t), "spread", "{:.1%}") for t in targets]
        cells += ["-" if row.get(r) is None else f"{row[r]:.2f}" for r in ratios]
        rows.append(cells)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w)
                       for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in [header, *rows]]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _fmt(cell: dict | None, key: str, pattern: str) -> str:
    if cell is None:
        return "FAIL"
    value = cell.get(key)
    return "-" if value is None else pattern.format(value)


def _report_server_logs(servers: list[ServerProcess], results: list[Measurement]) -> None:
    failed = any(not m.ok for m in results)
    for server in servers:
        exited = server.proc is not None and server.proc.poll() is not None
        if exited or failed:
            state = f"exited with status {server.proc.returncode}" if exited else "failed runs"
            print(f"{server.name} ({state}); last lines of {server.log_path}:\n"
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
