"""Benchmark results out: the comparison table on stdout and the JSON file."""

from __future__ import annotations

import json
from pathlib import Path

from bench.runner import Measurement

DIRECT, PGBOUNCER, PGSHARD_1, PGSHARD_2, PGSHARD_2_SQL, PGSHARD_2_SCRIPT = (
    "direct", "pgbouncer", "pgshard-1", "pgshard-2", "pgshard-2-sql", "pgshard-2-script")
PGBOUNCER_NEW = "pgbouncer-new"   # a second, newer PgBouncer (e.g. 1.25) when one is given
PGSHARD_1_WORKERS = "pgshard-1-workers"   # pgshard-1's cluster under serve --workers N

# (label, numerator, denominator) of the TPS ratio columns.
RATIOS = (
    ("ps1/pgb", PGSHARD_1, PGBOUNCER),
    ("ps1/pgbN", PGSHARD_1, PGBOUNCER_NEW),
    ("ps1/direct", PGSHARD_1, DIRECT),
    ("ps2/pgb", PGSHARD_2, PGBOUNCER),
    ("ps2/ps1", PGSHARD_2, PGSHARD_1),
    ("sql/ps1", PGSHARD_2_SQL, PGSHARD_1),
    ("wN/ps1", PGSHARD_1_WORKERS, PGSHARD_1),
    ("wN/pgbN", PGSHARD_1_WORKERS, PGBOUNCER_NEW),
)
# (label, numerator, denominator) of the CPU-per-query ratio columns.
CPU_RATIOS = (
    ("cpu ps1/pgbN", PGSHARD_1, PGBOUNCER_NEW),
)


def cells(results: list[Measurement]) -> list[tuple[str, int, dict[str, Measurement]]]:
    """Results grouped per (mode, clients) in run order: [(mode, clients, {target: m})]."""
    grouped: dict[tuple[str, int], dict[str, Measurement]] = {}
    for m in results:
        grouped.setdefault((m.mode, m.clients), {})[m.target] = m
    return [(mode, clients, by_target) for (mode, clients), by_target in grouped.items()]


def ratio(by_target: dict[str, Measurement], num: str, den: str) -> float | None:
    a, b = by_target.get(num), by_target.get(den)
    if a is None or b is None or not a.ok or not b.ok or not b.tps:
        return None
    return a.tps / b.tps


def cpu_ratio(by_target: dict[str, Measurement], num: str, den: str) -> float | None:
    a, b = by_target.get(num), by_target.get(den)
    if (a is None or b is None or not a.ok or not b.ok or a.cpu_us_per_query is None
            or not b.cpu_us_per_query):
        return None
    return a.cpu_us_per_query / b.cpu_us_per_query


def render_table(results: list[Measurement], targets: list[str]) -> str:
    """A fixed-width table: TPS, average latency and proxy CPU µs/query per target, then the
    ratios (of targets present)."""
    present = set(targets)
    ratios = [r for r in RATIOS if r[1] in present and r[2] in present]
    cpu_ratios = [r for r in CPU_RATIOS if r[1] in present and r[2] in present]
    proxied = [t for t in targets
               if any(m.cpu_us_per_query is not None for m in results if m.target == t)]
    header = (["mode", "clients"] + [f"TPS {t}" for t in targets]
              + [f"ms {t}" for t in targets] + [f"us/q {t}" for t in proxied]
              + [label for label, _, _ in ratios] + [label for label, _, _ in cpu_ratios])
    rows = []
    for mode, clients, by_target in cells(results):
        row = [mode, str(clients)]
        row += [_tps(by_target.get(t)) for t in targets]
        row += [_latency(by_target.get(t)) for t in targets]
        row += [_cpu(by_target.get(t)) for t in proxied]
        row += [_ratio(ratio(by_target, num, den)) for _, num, den in ratios]
        row += [_ratio(cpu_ratio(by_target, num, den)) for _, num, den in cpu_ratios]
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) if i > 0 else cell.ljust(w)
                       for i, (cell, w) in enumerate(zip(r, widths, strict=True)))
             for r in [header, *rows]]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def render_failures(results: list[Measurement]) -> str:
    failed = [m for m in results if not m.ok]
    if not failed:
        return ""
    return "\n".join(["failed runs:"] + [
        f"  {m.target:<16} -M {m.mode:<8} -c {m.clients:<3} {m.error}" for m in failed])


def _tps(m: Measurement | None) -> str:
    if m is None:
        return "-"
    return f"{m.tps:.0f}" if m.ok and m.tps is not None else "FAIL"


def _latency(m: Measurement | None) -> str:
    if m is None:
        return "-"
    return f"{m.latency_ms:.3f}" if m.ok and m.latency_ms is not None else "FAIL"


def _cpu(m: Measurement | None) -> str:
    if m is None or not m.ok or m.cpu_us_per_query is None:
        return "-"
    return f"{m.cpu_us_per_query:.1f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def results_document(meta: dict, results: list[Measurement]) -> dict:
    """Everything the run produced, for bench/results.json."""
    return {
        "meta": meta,
        "results": [m.as_dict() for m in results],
        "ratios": [
            {"mode": mode, "clients": clients,
             **{label: ratio(by_target, num, den) for label, num, den in RATIOS},
             **{label: cpu_ratio(by_target, num, den) for label, num, den in CPU_RATIOS}}
            for mode, clients, by_target in cells(results)
        ],
    }


def write_json(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
