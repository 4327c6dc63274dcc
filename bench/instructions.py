"""`make bench-instructions`: instructions the proxy executes per query (valgrind callgrind).

CPU time on a shared 2-core box is noisy; an instruction count is not. One pgshard runs under
callgrind with instrumentation off; for each pgbench -M mode the script runs pgbench -S twice
(-t short, -t long, one client) with instrumentation on and takes the difference, so the
connection's start-up (SCRAM, the first Parse) cancels out. Counted: the socket-read handlers
(client and server protocols and all they call), or with --whole-process everything (the
health checks and two-phase commit recovery rounds, whose cost is per second rather than per
query, are then spaced out to once an hour). The lowest of --reps pairs is kept. Prints
instructions per query, the functions that spent the most of them (self cost per query) and
the compiled pgshard functions with their callees, and writes the figures as JSON.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from bench.runner import MODES, write_hinted_scripts, write_sql_routed_script
from bench.targets import (
    BENCH_PASSWORD,
    BENCH_USER,
    BenchSetupError,
    Endpoint,
    ServerProcess,
    connect_args,
    load_pgbench_data,
    pgbench_binary,
    pgbench_env,
    pgshard_config,
)
from pgshard.cluster import ClusterError, LocalCluster, free_port

DEFAULT_OUT = Path(__file__).with_name("results-instructions.json")
_LINE = re.compile(r"^\s*([\d,]+)\s+(?:\(\s*[\d.]+%\)\s+)?(\S.*)$")


def annotate(path: Path, inclusive: bool = False) -> tuple[int, dict[str, int]]:
    """(total Ir, {function: self Ir}) of one callgrind dump, via callgrind_annotate
    (inclusive: each function's cost with its callees')."""
    out = subprocess.run(["callgrind_annotate", "--threshold=100",
                          f"--inclusive={'yes' if inclusive else 'no'}", "--auto=no", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return parse_annotate(out)


def parse_annotate(text: str) -> tuple[int, dict[str, int]]:
    """The PROGRAM TOTALS line and the per-function lines of callgrind_annotate's output."""
    total, funcs, in_funcs = 0, {}, False
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m:
            if line.strip().startswith("Ir") and "file:function" in line:
                in_funcs = True
            continue
        count, name = int(m.group(1).replace(",", "")), m.group(2).strip()
        if "PROGRAM TOTALS" in name:
            total = count
        elif in_funcs:
            obj = re.search(r"\s+\[([^\]]*)\]$", name)
            name = name[:obj.start()] if obj else name
            if obj and name.startswith("???"):   # no symbols: name the object file instead
                name = f"{Path(obj.group(1)).name}:{name.partition(':')[2]}"
            funcs[name] = funcs.get(name, 0) + count
    return total, funcs


def short_name(name: str) -> str:
    """'file:function' with Cython's mangling undone: pgshard_5proxy_6client_13ClientSession_
    5data_received -> client.c:proxy.client.ClientSession.data_received."""
    path, _, func = name.rpartition(":")
    if "pgshard_" in func:
        rest, parts = func.split("pgshard_", 1)[1], []
        while (m := re.match(r"\d+", rest)) is not None:
            n, body = int(m.group()), rest[m.end():]
            if len(body) > n and body[n] == "_":
                parts.append(body[:n])
                rest = body[n + 1:]
            else:   # the last piece: a counter, then the function's name
                parts.append(body)
                break
        func = ".".join(parts) or func
    return f"{Path(path).name}:{func}" if path else func


class Callgrind:
    """One process under callgrind, steered with callgrind_control."""

    def __init__(self, pid: int, out_dir: Path):
        self.pid, self.out_dir, self.dumps = pid, out_dir, 0

    def _ctl(self, *args: str) -> None:
        subprocess.run(["callgrind_control", *args, str(self.pid)], check=True,
                       capture_output=True, timeout=120)

    def measure(self, action) -> tuple[Path, float]:
        """Zero the counters, run action() instrumented, dump; the dump's path and how long
        the instrumented span lasted (seconds)."""
        before = set(self.out_dir.glob("callgrind.out.*"))
        self._ctl("-z")
        self._ctl("-i", "on")
        t0 = time.monotonic()
        try:
            action()
        finally:
            self._ctl("-i", "off")
            elapsed = time.monotonic() - t0
            self._ctl("-d")
        new = sorted(set(self.out_dir.glob("callgrind.out.*")) - before,
                     key=lambda p: p.stat().st_mtime)
        if not new:
            raise BenchSetupError("callgrind wrote no dump")
        return new[-1], elapsed

    def profile(self, action) -> tuple[int, dict[str, int], float]:
        """(total Ir, {function: self Ir}, seconds) of action() run instrumented."""
        path, elapsed = self.measure(action)
        total, funcs = annotate(path)
        _, self.last_inclusive = annotate(path, inclusive=True)
        return total, funcs, elapsed


def pgbench_fixed(endpoint: Endpoint, mode: str, transactions: int,
                  scripts: dict[str, Path] | None = None) -> None:
    """pgbench -S (or the mode's script) -c 1 -t transactions -M mode; raises when it fails."""
    work = ["-S"] if scripts is None else ["-f", str(scripts[mode]), "-D", "scale=1"]
    argv = [str(pgbench_binary()), "-n", *work, "-M", mode, "-c", "1", "-j", "1",
            "-t", str(transactions), *connect_args(endpoint), endpoint.database]
    proc = subprocess.run(argv, capture_output=True, text=True, env=pgbench_env(endpoint),
                          timeout=1200)
    if proc.returncode != 0:
        raise BenchSetupError(f"pgbench -M {mode} failed: {proc.stderr.strip()[-500:]}")


def compiled_state() -> dict:
    try:
        from pgshard import compiled
    except ImportError:
        return {"compiled": False, "modules": []}
    return compiled.status()


@click.command()
@click.option("--short", "n_short", type=click.IntRange(1), default=200, show_default=True,
              help="transactions of the short run")
@click.option("--long", "n_long", type=click.IntRange(2), default=2200, show_default=True,
              help="transactions of the long run (the difference is measured)")
@click.option("--modes", "modes_text", default=",".join(MODES), show_default=True)
@click.option("--reps", type=click.IntRange(1), default=3, show_default=True,
              help="short/long pairs per mode; the lowest difference is kept")
@click.option("--idle", "idle_seconds", type=click.FloatRange(1), default=5, show_default=True,
              help="seconds of idle profile (background work per second, a check)")
@click.option("--whole-process", is_flag=True,
              help="count the whole proxy process (event loop, timers and background work "
                   "too: not repeatable on a busy box), not only its socket-read handlers")
@click.option("--shards", type=click.IntRange(1), default=1, show_default=True,
              help="shards of the cluster behind the proxy (each holds every row)")
@click.option("--hinted", is_flag=True,
              help="make bench's hinted select-only script (shard_key / shard_key_param "
                   "comment) instead of pgbench -S")
@click.option("--sql-routed", is_flag=True,
              help="pgbench -S's query without a hint instead (routed by its WHERE clause: "
                   "pgbench_accounts is declared sharded by aid)")
@click.option("--top", type=click.IntRange(1), default=15, show_default=True,
              help="functions listed per mode")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_OUT,
              show_default=True)
def main(n_short: int, n_long: int, modes_text: str, reps: int, idle_seconds: float,
         whole_process: bool, shards: int, hinted: bool, sql_routed: bool, top: int,
         out: Path) -> None:
    """Proxy instructions per query for pgbench -S in -M simple, extended and prepared."""
    if n_long <= n_short:
        raise click.BadParameter("--long must be greater than --short")
    modes = [m for m in modes_text.split(",") if m]
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found (apt-get install valgrind)")
    work = Path(tempfile.mkdtemp(prefix="pgshard-instr-"))
    work.chmod(0o755)
    cluster = LocalCluster(work / "cluster", shards=shards, replicas=0)
    if hinted and sql_routed:
        raise click.BadParameter("--hinted and --sql-routed are two different scripts")
    scripts = write_hinted_scripts(work) if hinted else \
        write_sql_routed_script(work) if sql_routed else None
    server = None
    doc = {"short": n_short, "long": n_long, "compiled": compiled_state(), "shards": shards,
           "hinted": hinted, "sql_routed": sql_routed, "modes": {}}
    try:
        cluster.create()
        for shard in cluster.shards:   # every shard holds all rows (select-only)
            load_pgbench_data(shard.primary, 1)
        port = free_port()
        config = work / "pgshard.toml"
        # Health checks (a login to each server every check_interval: SCRAM's PBKDF2) cost
        # per second, not per query: spaced out so the difference counts queries only.
        # Under valgrind the router is slow: a long lease keeps it registered, and renewing
        # it is background work too.
        # The manager's two-phase commit recovery logs in to every shard each round (SCRAM):
        # background work per second, spaced out like the health checks.
        text = pgshard_config(cluster, port, 20, work / "meta.db",
                              proxy_settings={"twophase_recovery_interval": "3600"})
        text = text.replace("\n", "\nlease_ttl = 600\n", 1) + "\n[ha]\ncheck_interval = 3600\n"
        config.write_text(text)
        python = sys.executable   # the venv's link (not a shim script): valgrind runs it
        # By default only what runs inside uvloop's socket-read callback is counted (where
        # the proxy's protocols handle client and server bytes, and what they call), not
        # inside asyncpg's (the background connections): no timers, no background tasks,
        # so the figure repeats to within 0.1 % on a busy box.
        handlers_only = not whole_process
        toggles = (["--toggle-collect=*uv_stream_on_read",
                    "--toggle-collect=*asyncpg*BaseProtocol*data_received"]
                   if handlers_only else [])
        doc["handlers_only"] = handlers_only
        argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", *toggles,
                f"--callgrind-out-file={work}/callgrind.out.%p", python, "-m", "pgshard",
                "serve", "--config", str(config), "--log-level", "WARNING"]
        print("starting pgshard under callgrind (slow) ...", flush=True)
        server = ServerProcess("pgshard", argv, work / "pgshard.log", port)
        server.start(timeout=900)
        endpoint = Endpoint("127.0.0.1", port, BENCH_USER, BENCH_PASSWORD, cluster.database)
        pgbench_fixed(endpoint, "simple", 50, scripts)     # warm-up: pool, caches
        cg = Callgrind(server.proc.pid, work)
        # What the proxy does per second with no client (timers, background tasks): the
        # long run lasts longer than the short one, so this much per second is in the
        # difference too. Printed as a check (it should be small), not subtracted: on a busy
        # box one idle sample is no good estimate.
        idle_total, _, idle_s = cg.profile(lambda: time.sleep(idle_seconds))
        doc["idle_instructions_per_second"] = idle_total / idle_s
        print(f"idle: {idle_total / idle_s:,.0f} instructions/s", flush=True)
        for mode in modes:
            pgbench_fixed(endpoint, mode, 20, scripts)
            n = n_long - n_short
            pairs = []
            for _ in range(reps):
                a = cg.profile(lambda m=mode: pgbench_fixed(endpoint, m, n_short, scripts))
                a_incl = cg.last_inclusive
                b = cg.profile(lambda m=mode: pgbench_fixed(endpoint, m, n_long, scripts))
                pairs.append(((b[0] - a[0]) / n, a, b, a_incl, cg.last_inclusive))
            # The lowest difference: a rare event (a server login) in one run is left out.
            per_query, a, b, a_incl, b_incl = min(pairs, key=lambda p: p[0])
            # Compiled pgshard functions, with their callees: a per-function profile.
            own = {f: (b_incl.get(f, 0) - a_incl.get(f, 0)) / n
                   for f in set(a_incl) | set(b_incl) if "pgshard_" in f and "__Pyx" not in f}
            own_ranked = sorted(own.items(), key=lambda kv: -kv[1])[:top]
            doc.setdefault("all_runs", {})[mode] = [p[0] for p in pairs]
            funcs = {f: (b[1].get(f, 0) - a[1].get(f, 0)) / n for f in set(a[1]) | set(b[1])}
            ranked = sorted(funcs.items(), key=lambda kv: -kv[1])[:top]
            doc["modes"][mode] = {"instructions_per_query": per_query,
                                  "top": [{"function": f, "per_query": v} for f, v in ranked],
                                  "pgshard_inclusive": [{"function": f, "per_query": v}
                                                        for f, v in own_ranked]}
            runs = ", ".join(f"{p[0]:,.0f}" for p in pairs)
            print(f"\n-M {mode}: {per_query:,.0f} instructions/query in the proxy "
                  f"(pairs: {runs})")
            for f, v in ranked:
                print(f"  {v:10,.0f}  {100 * v / per_query:5.1f}%  {short_name(f)}")
            if own_ranked:
                print("  compiled pgshard functions, inclusive (with their callees):")
                for f, v in own_ranked:
                    print(f"  {v:10,.0f}  {100 * v / per_query:5.1f}%  {short_name(f)}")
    except (BenchSetupError, ClusterError, subprocess.CalledProcessError) as exc:
        print(f"failed: {exc}", file=sys.stderr)
        if server is not None:
            print(server.log_tail(), file=sys.stderr)
        sys.exit(1)
    finally:
        if server is not None:
            server.stop(timeout=60)
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)
    state = doc["compiled"]
    print(f"\ncompiled core: {state.get('compiled')} ({len(state.get('modules', []))} modules)")
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"results written to {out}")


if __name__ == "__main__":
    main()
