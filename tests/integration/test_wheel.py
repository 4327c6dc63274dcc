"""A built wheel is what users get: it must carry every module and give a working pgshard."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import venv
import zipfile
from pathlib import Path

import pytest

from pgshard.compiled import HOT_MODULES, pure_requested

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(900)   # the wheel compiles the hot path (Cython, setup.py)
def test_wheel_ships_every_module_and_runs(tmp_path):
    src = tmp_path / "src"
    # The source tree as a user's checkout has it: no venv, no caches, no demo data, no
    # extension modules built in place.
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".venv", ".git", ".demo", "__pycache__", "*.egg-info", "build", "node_modules",
        "*.so", "*.c"))
    out = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(out), str(src)], check=True, timeout=800)
    wheel = next(out.glob("pgshard-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "pgshard").rglob("*.py"))
    missing = [mod for mod in modules if mod not in names]
    assert not missing, f"the wheel lacks {missing}"
    assert "pgshard/ring/sql/pgshard_hash.sql" in names
    assert any(n.endswith("LICENSE") for n in names)
    # With Cython and a compiler here, every hot module is in the wheel compiled too.
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    compiled = _cython_available() and not pure_requested()
    for name in HOT_MODULES:
        so = name.replace(".", "/") + suffix
        assert (so in names) == compiled, (so, compiled)

    # A fresh venv with the wheel installed (not editable); the dependencies come from this
    # test's own environment so the test needs no network.
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    deps = sysconfig.get_paths()["purelib"]
    Path(site, "deps.pth").write_text(deps + "\n")   # a plain path: editable finders stay off
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, timeout=300)
    mods = [m[:-3].replace("/", ".").removesuffix(".__init__") for m in modules
            if not m.endswith("__main__.py")]   # importing __main__ would run the CLI
    code = ("import importlib, pgshard, sys\n"
            "assert 'site-packages' in pgshard.__file__ and '/work/' not in pgshard.__file__, pgshard.__file__\n"
            f"for name in {mods!r}:\n    importlib.import_module(name)\n"
            "print('ok', len(sys.modules))")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    cwd = tempfile.mkdtemp()
    res = subprocess.run([str(py), "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and res.stdout.startswith("ok"), res.stderr[-3000:]
    for args in (["--help"], ["demo", "--help"], ["serve", "--help"]):
        res = subprocess.run([str(env_dir / "bin" / "pgshard"), *args], cwd=cwd, env=env,
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0 and "Usage" in res.stdout, res.stderr[-3000:]
    res = subprocess.run([str(env_dir / "bin" / "pgshard"), "--version"], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=60)
    expected = (f"compiled core: yes ({len(HOT_MODULES)}/{len(HOT_MODULES)} modules)"
                if compiled else "compiled core: no")
    assert res.returncode == 0 and expected in res.stdout, (res.stdout, res.stderr[-3000:])


def _cython_available() -> bool:
    try:
        import Cython  # noqa: F401
    except ImportError:
        return False
    return True
