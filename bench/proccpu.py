"""CPU time a server process (and its live descendants) has used, read from /proc/<pid>/stat."""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def parse_stat(text: str) -> tuple[int, int, int]:
    """(ppid, utime + stime in clock ticks, pid) from one /proc/<pid>/stat line.

    The command name (field 2) is in parentheses and may hold spaces or ')': the fields
    after it are counted from the last ')'.
    """
    head, _, rest = text.rpartition(")")
    pid = int(head.split("(", 1)[0])
    fields = rest.split()
    # fields[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    return int(fields[1]), int(fields[11]) + int(fields[12]), pid


def _stats(proc_root: Path) -> list[tuple[int, int, int]]:
    out = []
    for entry in proc_root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            out.append(parse_stat((entry / "stat").read_text()))
        except (OSError, ValueError, IndexError):
            continue  # exited while we looked
    return out


def tree_ticks(pid: int, stats: list[tuple[int, int, int]]) -> int:
    """The CPU ticks of pid and every descendant in stats (ppid, ticks, pid)."""
    children: dict[int, list[int]] = {}
    ticks = {}
    for ppid, t, p in stats:
        children.setdefault(ppid, []).append(p)
        ticks[p] = t
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += ticks.get(p, 0)
        todo.extend(children.get(p, ()))
    return total


def cpu_seconds(pid: int, proc_root: Path = Path("/proc")) -> float | None:
    """User + system CPU seconds of pid and its live descendants; None when pid is gone."""
    if not (proc_root / str(pid)).exists():
        return None
    return tree_ticks(pid, _stats(proc_root)) / _TICKS
