"""A server connection's state changes only through its own methods: no module of the data
plane but backend.py assigns or mutates these attributes of an object other than `self`."""

from __future__ import annotations

import ast
import pathlib

PROXY = pathlib.Path(__file__).resolve().parents[2] / "pgshard" / "proxy"
OWNED = {"sticky", "sql_names", "prepared", "unnamed_owner", "synced", "vars", "dirty",
         "state", "_write_paused", "txn_status", "expect"}
MUTATORS = {"add", "discard", "clear", "pop", "update", "append", "remove", "setdefault"}


def _foreign(node) -> str | None:
    """`x.attr` with x not self, attr owned by the server connection: its name."""
    if isinstance(node, ast.Attribute) and node.attr in OWNED \
            and not (isinstance(node.value, ast.Name) and node.value.id == "self"):
        return node.attr
    return None


def _writes(tree) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        elif isinstance(node, ast.Delete):
            targets = node.targets
        for t in targets:
            if isinstance(t, ast.Subscript):
                t = t.value
            name = _foreign(t)
            if name:
                out.append((node.lineno, name))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in MUTATORS:
            name = _foreign(node.func.value)
            if name:
                out.append((node.lineno, name))
    return out


def test_only_the_server_connection_changes_its_state():
    found = []
    for p in sorted(PROXY.glob("*.py")):
        if p.name in ("backend.py",):
            continue
        found += [f"{p.name}:{line} .{name}" for line, name in _writes(ast.parse(p.read_text()))]
    assert not found, f"server connection state written from outside backend.py: {found}"
