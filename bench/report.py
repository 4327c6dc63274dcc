"""Benchmark results out: the comparison table on stdout and the JSON file."""

from __future__ import annotations

import json
from pathlib import Path

from bench.runner import Measurement

DIRECT, PGBOUNCER, PGSHARD_1, PGSHARD_2, PGSHARD_2_SQL, PGSHARD_2_SCRIPT = (
    "direct", "pgbouncer", "pgshard-1", "pgshard-2", "pgshard-2-sql", "pgshard-2-script")

# (label, numerator, denominator) of the ratio columns.
RATIOS = (
    ("ps1/pgb", PGSHARD_1, PGBOUNCER),
    ("ps1/direct", PGSHARD_1, DIRECT),
    ("ps2/pgb", PGSHARD_2, PGBOUNCER),
    ("sql/hint", PGSHARD_2_SQL, PGSHARD_2),
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


def render_table(results: list[Measurement], targets: list[str]) -> str:
    """A fixed-width table: TPS and average latency per target, then the ratios."""
    header = (["mode", "clients"] + [f"TPS {t}" for t in targets]
              + [f"ms {t}" for t in targets] + [label for label, _, _ in RATIOS])
    rows = []
    for mode, clients, by_target in cells(results):
        row = [mode, str(clients)]
        row += [_tps(by_target.get(t)) for t in targets]
        row += [_latency(by_target.get(t)) for t in targets]
        row += [_ratio(ratio(by_target, num, den)) for _, num, den in RATIOS]
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


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def results_document(meta: dict, results: list[Measurement]) -> dict:
    """Everything the run produced, for bench/results.json."""
    return {
        "meta": meta,
        "results": [m.as_dict() for m in results],
        "ratios": [
            {"mode": mode, "clients": clients,
             **{label: ratio(by_target, num, den) for label, num, den in RATIOS}}
            for mode, clients, by_target in cells(results)
        ],
    }


def write_json(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
