"""One pgbench measurement: the command line, the hinted scripts, and the summary it prints
read back into a Measurement (or the reason it failed).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.targets import Endpoint, connect_args, pgbench_binary, pgbench_env

MODES = ("simple", "extended", "prepared")

# pgbench's built-in select-only transaction with a routing hint. In -M simple pgbench
# substitutes :aid into the text (comments included), so the key itself is the hint; in
# extended/prepared the value travels as $1 and the hint names the parameter instead.
HINTED_SCRIPTS = {
    "simple": ("\\set aid random(1, 100000 * :scale)\n"
               "SELECT abalance FROM pgbench_accounts WHERE aid = :aid /* shard_key: :aid */;\n"),
    "param": ("\\set aid random(1, 100000 * :scale)\n"
              "SELECT abalance FROM pgbench_accounts WHERE aid = :aid /* shard_key_param: 1 */;\n"),
}

_TPS = re.compile(r"^tps = ([0-9.]+)", re.M)
_LATENCY = re.compile(r"^latency average = ([0-9.]+) ms", re.M)
_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.M)


@dataclass
class Measurement:
    target: str
    mode: str
    clients: int
    ok: bool
    tps: float | None = None
    latency_ms: float | None = None
    transactions: int | None = None
    failed_transactions: int | None = None
    error: str | None = None
    cpu_us_per_query: float | None = None   # the proxy's user+system CPU over the run's queries
    script: str = "builtin:select-only"
    command: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


SQL_ROUTED_SCRIPT = (
    "\\set aid random(1, 100000 * :scale)\n"
    "SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n")


def write_sql_routed_script(directory: Path) -> dict[str, Path]:
    """pgbench -S's own query with no hint: pgshard reads the key from the WHERE clause."""
    path = directory / "select-only-sql-routed.sql"
    path.write_text(SQL_ROUTED_SCRIPT)
    return dict.fromkeys(MODES, path)


def write_hinted_scripts(directory: Path) -> dict[str, Path]:
    """The hinted select-only script per protocol mode, written into directory."""
    paths = {}
    for kind, text in HINTED_SCRIPTS.items():
        path = directory / f"select-only-hinted-{kind}.sql"
        path.write_text(text)
        paths[kind] = path
    return {mode: paths["simple" if mode == "simple" else "param"] for mode in MODES}


def pgbench_command(endpoint: Endpoint, *, mode: str, clients: int, duration: int,
                    script: Path | None, scale: int) -> list[str]:
    """pgbench -n -S (or -f script) -M mode -c/-j/-T against endpoint.

    -n everywhere: the pre-run VACUUM is not what we measure (the data was vacuumed at load).
    A custom script gets :scale from -D, since pgbench only reads it from the tables for
    built-in scripts.
    """
    argv = [str(pgbench_binary()), "-n", "-M", mode, "-c", str(clients),
            "-j", str(min(clients, 2)), "-T", str(duration)]
    if script is None:
        argv.append("-S")
    else:
        argv += ["-f", str(script), "-D", f"scale={scale}"]
    return [*argv, *connect_args(endpoint), endpoint.database]


def run_pgbench(target: str, endpoint: Endpoint, *, mode: str, clients: int, duration: int,
                script: Path | None = None, scale: int = 1) -> Measurement:
    """Run one pgbench measurement; a failed run is a Measurement with ok=False, never raises."""
    argv = pgbench_command(endpoint, mode=mode, clients=clients, duration=duration,
                           script=script, scale=scale)
    result = Measurement(target=target, mode=mode, clients=clients, ok=False,
                         script=f"file:{script.name}" if script else "builtin:select-only",
                         command=" ".join(argv))
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env=pgbench_env(endpoint),
                              timeout=duration + 60)
    except subprocess.TimeoutExpired:
        result.error = f"pgbench did not finish within {duration + 60}s (hang?)"
        return result
    parse_summary(proc.stdout, result)
    if proc.returncode != 0 or result.tps is None:
        result.ok = False
        result.error = first_error_line(proc.stderr) or f"pgbench exit status {proc.returncode}"
    else:
        result.ok = True
    return result


def parse_summary(text: str, into: Measurement) -> Measurement:
    """Fill tps, latency and transaction counts from pgbench's end-of-run summary."""
    if m := _TPS.search(text):
        into.tps = float(m.group(1))
    if m := _LATENCY.search(text):
        into.latency_ms = float(m.group(1))
    if m := _PROCESSED.search(text):
        into.transactions = int(m.group(1))
    if m := _FAILED.search(text):
        into.failed_transactions = int(m.group(1))
    return into


def first_error_line(stderr: str) -> str | None:
    """The first line of stderr that reports an error (else its first non-empty line)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if "error" in line.lower() or "fatal" in line.lower():
            return line
    return lines[0] if lines else None
