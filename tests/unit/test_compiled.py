"""The compiled core: which hot modules run compiled, PGSHARD_PURE, and `pgshard --version`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pgshard import compiled

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str, **env: str) -> str:
    full = {k: v for k, v in os.environ.items() if k != compiled.PURE_ENV} | env
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=full, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


STATUS = ("import json; from pgshard import compiled; s = compiled.status(); "
          "import importlib; s['files'] = {n: importlib.import_module(n).__file__ "
          "for n in compiled.HOT_MODULES}; print(json.dumps(s))")


def test_hot_modules_are_real_modules_of_the_package():
    for name in compiled.HOT_MODULES:
        source, _ = compiled._paths(name)
        assert source.is_file(), name


def test_each_hot_module_runs_compiled_exactly_where_a_fresh_build_is_beside_it():
    s = json.loads(_run(STATUS))
    for name in compiled.HOT_MODULES:
        built = bool(compiled._paths(name)[1]) and not compiled.stale(name)
        assert (name in s["modules"]) == built, (name, s)
        assert s["files"][name].endswith(".py") != built, (name, s["files"][name])
    assert s["compiled"] == bool(s["modules"])
    assert s["pure"] is False


def test_pgshard_pure_runs_every_hot_module_from_its_source():
    s = json.loads(_run(STATUS, PGSHARD_PURE="1"))
    assert s == {**s, "compiled": False, "modules": [], "pure": True}
    assert all(path.endswith(".py") for path in s["files"].values()), s["files"]


def test_ci_runs_the_compiled_build():
    """CI (make test after bootstrap) must have every hot module compiled and fresh."""
    if os.environ.get("CI") != "true" or compiled.pure_requested():
        return
    assert compiled.needs_build() == []
    assert compiled.status()["modules"] == list(compiled.HOT_MODULES)


def test_version_says_whether_the_compiled_core_is_loaded():
    out = subprocess.run([sys.executable, "-m", "pgshard", "--version"], capture_output=True,
                         text=True, timeout=120, cwd=ROOT).stdout
    lines = out.splitlines()
    assert lines[0].startswith("pgshard, version ")
    expected = "compiled core: yes" if compiled.status()["compiled"] else "compiled core: no"
    assert lines[1].startswith(expected), out
    pure = _run("from click.testing import CliRunner; from pgshard.cli import main; "
                "print(CliRunner().invoke(main, ['--version']).output)", PGSHARD_PURE="1")
    assert "compiled core: no (PGSHARD_PURE)" in pure


def test_describe_counts_the_modules():
    text = compiled.describe()
    n = len(compiled.status()["modules"])
    off = "compiled core: no (PGSHARD_PURE)" if compiled.pure_requested() else "compiled core: no"
    assert text == (f"compiled core: yes ({n}/{len(compiled.HOT_MODULES)} modules)" if n
                    else off)
