"""The regress harness's pure core: pg_regress output and diffs read, runs compared, gated."""

from __future__ import annotations

import re
from dataclasses import dataclass

EXCERPT_LINES = 8          # changed lines per test in the printed report
JSON_EXCERPT_LINES = 40    # and in summary.json


@dataclass(frozen=True)
class Mode:
    """One run of the suite: where it connects and how many tests pg_regress runs at once."""

    name: str
    label: str
    through_proxy: bool
    pool_mode: str            # the proxy's pool mode ("transaction" when it is not used)
    max_connections: int


MODES: tuple[Mode, ...] = (
    Mode("direct", "the shard directly (db app, the proxy's own server setup)", False,
         "transaction", 4),
    Mode("session", "through the proxy, --pool-mode session, 4 parallel clients", True,
         "session", 4),
    Mode("transaction-4", "through the proxy, transaction pooling, 4 parallel clients", True,
         "transaction", 4),
    Mode("transaction-1", "through the proxy, transaction pooling, one client at a time", True,
         "transaction", 1),
)
MODE_NAMES = tuple(m.name for m in MODES)

# pg_regress up to 15: "test foo ... ok  12 ms", "     foo ... FAILED  12 ms",
# "     foo ... failed (ignored)"; 16 on: TAP, "ok 3  + foo  12 ms" / "not ok 4  - foo".
_CLASSIC = re.compile(r"^(?:test\s+|\s+)(\S+)\s+\.\.\.\s+(ok|FAILED|failed \(ignored\))")
_TAP = re.compile(r"^(not ok|ok)\s+\d+\s+[+-]?\s*(\S+)")
_DIFF_HEAD = re.compile(r"^diff .*?(\S+)\.out\s*$")


def parse_schedule(text: str) -> list[str]:
    """The tests a schedule runs, in order ("test: a b c" lines)."""
    tests: list[str] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("test:"):
            tests.extend(line[len("test:"):].split())
    return tests


def parse_output(text: str) -> dict[str, str]:
    """pg_regress's stdout -> {test: "ok" | "failed" | "ignored"}."""
    status: dict[str, str] = {}
    for line in text.splitlines():
        m = _CLASSIC.match(line)
        if m:
            word = m.group(2)
            status[m.group(1)] = ("ok" if word == "ok" else
                                  "ignored" if word.startswith("failed (") else "failed")
            continue
        m = _TAP.match(line)
        if m:
            status[m.group(2)] = "ok" if m.group(1) == "ok" else "failed"
    return status


def split_diffs(text: str) -> dict[str, list[str]]:
    """regression.diffs -> {test: its hunks' lines} (a section starts at each "diff " line;
    the test is the last .out file the line names, results/NAME.out; the ---/+++ file
    headers before its first @@ are dropped)."""
    diffs: dict[str, list[str]] = {}
    current: list[str] | None = None
    in_hunks = False
    for line in text.splitlines():
        m = _DIFF_HEAD.match(line)
        if m:
            name = m.group(1).rsplit("/", 1)[-1]
            current, in_hunks = diffs.setdefault(name, []), False
            continue
        in_hunks = in_hunks or line.startswith("@@")
        if current is not None and in_hunks:
            current.append(line)
    return diffs


def excerpt(diff_lines: list[str], limit: int = EXCERPT_LINES) -> list[str]:
    """The first changed lines of one test's hunks, block by block (a run of -/+ lines):
    up to 3 removed and 5 added lines of each, so what the proxy's run printed instead
    shows even after hundreds of expected lines it never reached."""
    out: list[str] = []
    for removed, added in _change_blocks(diff_lines):
        for lines, keep, sign in ((removed, 3, "-"), (added, 5, "+")):
            out += lines[:keep]
            if len(lines) > keep:
                out.append(f"{sign}… {len(lines) - keep} more line(s)")
        if len(out) >= limit:
            break
    return out[:limit]


def _change_blocks(diff_lines: list[str]) -> list[tuple[list[str], list[str]]]:
    blocks: list[tuple[list[str], list[str]]] = []
    in_block = False
    for line in diff_lines:
        sign = line[:1]
        if sign not in ("+", "-"):
            in_block = False
            continue
        if not in_block:
            blocks.append(([], []))
            in_block = True
        blocks[-1][0 if sign == "-" else 1].append(line)
    return blocks


def passed(status: dict[str, str], tests: list[str]) -> int:
    return sum(1 for t in tests if status.get(t) == "ok")


def proxy_caused(direct: dict[str, str], proxied: dict[str, str], tests: list[str]) -> list[str]:
    """Tests that pass against the shard directly and not through the proxy, in order."""
    return [t for t in tests if direct.get(t) == "ok" and proxied.get(t) != "ok"]


def render_table(runs: dict[str, dict], total: int) -> str:
    """The issue's table: run | passed of N (with the proxy-caused count per proxy run)."""
    lines = [f"| run | passed of {total} | time |", "|---|---|---|"]
    for mode in MODES:
        run = runs.get(mode.name)
        if run is None:
            continue
        cell = str(run["passed"])
        if mode.through_proxy and run.get("proxy_caused") is not None:
            cell += f" ({len(run['proxy_caused'])} failures caused by the proxy)"
        if not run.get("complete", True):
            cell += " (did not finish: " + run.get("incomplete_reason", "?") + ")"
        lines.append(f"| {mode.label} | {cell} | {run['seconds']:.0f} s |")
    return "\n".join(lines)


def evaluate_gate(runs: dict[str, dict], baseline: dict) -> tuple[list[str], list[str]]:
    """(failures, notes) of the gate against the checked-in baseline.

    Fails when the direct run passes fewer than baseline["direct_floor"] (the setup is
    broken, so nothing else means anything), when a test that passes directly fails through
    the proxy in session mode without being listed in the baseline's known failures, and
    when a transaction-mode run passes fewer tests than its floor. Notes list baseline
    entries that pass now (the baseline can shrink) and unlisted transaction-mode failures.
    """
    failures: list[str] = []
    notes: list[str] = []
    modes = baseline.get("modes", {})
    direct = runs.get("direct")
    if direct is None:
        return ["the direct run is missing: nothing to compare the proxy runs with"], notes
    floor = baseline.get("direct_floor", 0)
    if direct["passed"] < floor:
        failures.append(f"direct: {direct['passed']} passed, below the floor {floor} "
                        "(the setup is broken)")
    for name, run in runs.items():
        if name == "direct":
            continue
        spec = modes.get(name, {})
        known = set(spec.get("known_failures", []))
        caused = run.get("proxy_caused") or []
        new = [t for t in caused if t not in known]
        fixed = sorted(t for t in known if t not in caused and direct["tests"].get(t) == "ok")
        if name == "session" and new:
            failures.append(f"session: {len(new)} test(s) pass directly but fail through the "
                            f"proxy and are not in the baseline: {', '.join(new)}")
        elif new:
            notes.append(f"{name}: not in the baseline's known failures: {', '.join(new)}")
        if fixed:
            notes.append(f"{name}: baseline lists as failing, passes now (remove from "
                         f"tests/regress/baseline.json): {', '.join(fixed)}")
        mode_floor = spec.get("floor")
        if mode_floor is not None and run["passed"] < mode_floor:
            failures.append(f"{name}: {run['passed']} passed, below the floor {mode_floor}")
        elif mode_floor is not None and run["passed"] > spec.get("recorded_passed", mode_floor):
            notes.append(f"{name}: {run['passed']} passed, more than the baseline's run "
                         f"({spec.get('recorded_passed', mode_floor)}): the floor {mode_floor} "
                         "can rise")
    return failures, notes


def baseline_from(runs: dict[str, dict], previous: dict, margin: dict[str, int]) -> dict:
    """A baseline recording this run: known failures per proxy mode, floors per
    transaction mode (passed minus that mode's margin), the direct floor (passed minus 3)."""
    out = {k: v for k, v in previous.items() if k not in ("direct_floor", "modes")}
    if "direct" in runs:
        out["direct_floor"] = max(0, runs["direct"]["passed"] - 3)
    modes = dict(previous.get("modes", {}))
    for name, run in runs.items():
        if name == "direct":
            continue
        spec = {"known_failures": list(run.get("proxy_caused") or [])}
        if name.startswith("transaction"):
            spec["floor"] = max(0, run["passed"] - margin.get(name, 0))
            spec["recorded_passed"] = run["passed"]
        modes[name] = spec
    out["modes"] = modes
    return out
