"""pgshard/sql is the pure SQL core: no asyncio, socket or ssl, directly or through what it
imports, and nothing from the asyncio data plane or the control plane."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).parents[2]
PKG = ROOT / "pgshard" / "sql"
BANNED = {"asyncio", "socket", "ssl", "selectors"}
# What the SQL core may build on: itself, the sans-IO protocol, the ring and the byte cache.
ALLOWED_PGSHARD = ("pgshard.sql", "pgshard.protocol", "pgshard.ring", "pgshard.cache")


def _imports(path: pathlib.Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module]
    return names


def test_sql_package_does_no_io():
    paths = [*PKG.glob("*.py"), ROOT / "pgshard" / "cache.py"]
    assert len(paths) > 10   # the glob found the package
    for path in paths:
        for name in _imports(path):
            assert name.split(".")[0] not in BANNED, f"{path.name} imports {name}"
            if name == "pgshard" or name.startswith("pgshard."):
                assert name.startswith(ALLOWED_PGSHARD), f"{path.name} imports {name}"


def test_importing_the_sql_core_loads_no_io_module():
    """The same, transitively: a fresh interpreter that imports every pgshard.sql module has
    loaded none of asyncio, socket, ssl or selectors (and no pgshard.proxy)."""
    code = (
        "import importlib, pkgutil, sys, pgshard.sql\n"
        "mods = [m.name for m in pkgutil.iter_modules(pgshard.sql.__path__, 'pgshard.sql.')]\n"
        "for name in mods:\n    importlib.import_module(name)\n"
        f"bad = sorted(n for n in sys.modules if n.split('.')[0] in {sorted(BANNED)!r}"
        " or n.startswith(('pgshard.proxy', 'pgshard.control')))\n"
        "print(len(mods), bad)\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr[-3000:]
    n, bad = res.stdout.split(" ", 1)
    assert int(n) > 10 and bad.strip() == "[]", res.stdout
