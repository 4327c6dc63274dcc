"""The image's build steps run here without Docker: the Dockerfile's npm and pip commands in a
temporary build context holding only what its COPY lines copy, the result installed in a
fresh venv from the built wheels alone, then started through the image's entrypoint against
the session's real cluster until the image's own HEALTHCHECK command passes and the console
is served from the installed package. And the Grafana dashboard's metric names against a
real /metrics page."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
import venv
from pathlib import Path

import aiohttp
import asyncpg

from pgshard.cluster import free_port
from tests.fixtures.runtime import running_runtime, runtime_config

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "docker" / "Dockerfile").read_text()
IGNORE = shutil.ignore_patterns("node_modules", "__pycache__", "*.egg-info", "static")

# The Dockerfile's RUN steps this test repeats; each must be in the Dockerfile verbatim.
NPM_CI = "npm ci --no-audit --no-fund"
NPM_BUILD = "npm run build"
PIP_WHEEL = "pip wheel --no-cache-dir --wheel-dir /wheels ."
PIP_INSTALL = "pip install --no-cache-dir --no-index --find-links /wheels pgshard"


def pip_here(step: str, wheels: Path) -> list[str]:
    """A Dockerfile pip step for this machine: its wheel dir, and pip's cache allowed (the
    image skips it to stay small; here it only saves downloads)."""
    return shlex.split(step.replace("/wheels", str(wheels)).replace("--no-cache-dir ", ""))


def run(cmd: list[str], cwd: Path, timeout: float, env: dict | None = None) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env)
    assert done.returncode == 0, f"{cmd}: {(done.stdout + done.stderr)[-4000:]}"
    return done.stdout


def healthcheck_command() -> str:
    m = re.search(r"^HEALTHCHECK [^\n]*\\\n\s+CMD (.+)$", DOCKERFILE, re.M)
    assert m, "no HEALTHCHECK CMD in the Dockerfile"
    return m.group(1)


def test_image_build_steps_work_and_the_result_serves(tmp_path, pg_cluster):
    for step in (NPM_CI, NPM_BUILD, PIP_WHEEL, PIP_INSTALL):
        assert f"RUN {step}" in DOCKERFILE, step
    # Stage "ui": package files, npm ci, then the sources, npm run build.
    ui = tmp_path / "ui-stage" / "src" / "ui"
    ui.mkdir(parents=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copy(ROOT / "ui" / name, ui / name)
    run(shlex.split(NPM_CI), ui, 600)
    shutil.copytree(ROOT / "ui", ui, dirs_exist_ok=True, ignore=IGNORE)
    run(shlex.split(NPM_BUILD), ui, 600)
    bundle = ui.parent / "pgshard" / "control" / "static" / "ui"
    assert (bundle / "index.html").is_file()

    # Stage "wheels": the package sources, the bundle from stage ui, pip wheel.
    src = tmp_path / "wheel-stage" / "src"
    src.mkdir(parents=True)
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "pgshard", src / "pgshard", ignore=IGNORE)
    shutil.copytree(bundle, src / "pgshard" / "control" / "static" / "ui")
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", *pip_here(PIP_WHEEL, wheels)], src, 900)
    assert list(wheels.glob("pgshard-*.whl")) and list(wheels.glob("asyncpg-*.whl"))

    # Stage "runtime": a fresh venv, only the wheels (no index), the entrypoint scripts.
    env_dir = tmp_path / "runtime"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    run([str(py), "-m", *pip_here(PIP_INSTALL, wheels)], tmp_path, 900)
    bindir = tmp_path / "usr-local-bin"
    bindir.mkdir()
    shutil.copy(ROOT / "docker" / "render-config.py", bindir / "pgshard-render-config")
    shutil.copy(ROOT / "docker" / "entrypoint.sh", bindir / "pgshard-entrypoint")
    for f in bindir.iterdir():
        f.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "PYTHON", "VIRTUAL"))}
    env["PATH"] = f"{bindir}:{env_dir / 'bin'}:/usr/bin:/bin"

    # The entrypoint's non-serve form runs a pgshard subcommand.
    assert "Usage" in run(["pgshard-entrypoint", "--help"], tmp_path, 60, env)

    # `serve` with a mounted config whose secrets come from the environment.
    api_port, proxy_port = free_port(), free_port()
    shards = "".join(
        f'[[shards]]\nname = "{s["name"]}"\nprimary = "{s["primary"]}"\n'
        f'replicas = {json.dumps(s["replicas"])}\n\n' for s in pg_cluster.describe()["shards"])
    config = tmp_path / "etc" / "pgshard.toml"
    config.parent.mkdir()
    config.write_text(
        f'store = "sqlite:///{tmp_path / "meta.db"}"\n\n[proxy]\nhost = "127.0.0.1"\n'
        f'port = {proxy_port}\ndatabase = "app"\n\n[sidecar]\nhost = "127.0.0.1"\n'
        f'port = {api_port}\njwt_secret = "${{PGSHARD_JWT_SECRET}}"\n\n'
        f'[[users]]\nname = "app"\npassword = "${{APP_PASSWORD}}"\n\n{shards}')
    env.update(PGSHARD_CONFIG=str(config), PGSHARD_JWT_SECRET="a-jwt-secret",
               APP_PASSWORD='app "pw"', PGSHARD_ADMIN_PASSWORD="admin-pw-123",
               TMPDIR=str(tmp_path), PGSHARD_HEALTH_URL=f"http://127.0.0.1:{api_port}/health")
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen(["pgshard-entrypoint", "serve"], cwd=tmp_path, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        check = shlex.split(healthcheck_command())
        deadline = time.monotonic() + 40
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            if subprocess.run(check, env=env, capture_output=True, timeout=10).returncode == 0:
                break
            assert time.monotonic() < deadline, "the HEALTHCHECK never passed"
            time.sleep(0.5)
        rendered = (tmp_path / "pgshard.toml")
        assert oct(rendered.stat().st_mode & 0o777) == "0o600"   # secrets: owner only
        assert 'password = "app \\"pw\\""' in rendered.read_text()
        with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/ui/", timeout=5) as resp:
            html = resp.read().decode()
            assert resp.status == 200 and "/ui/assets/" in html
        token = _login(api_port, "admin", "admin-pw-123")
        assert token.count(".") == 2
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    # The installed package is the one that served: it carries the bundle itself.
    where = run([str(py), "-c", "import pgshard.control.console as c; print(c.STATIC_ROOT)"],
                tmp_path, 60, env).strip()
    assert str(env_dir) in where and Path(where, "index.html").is_file()


def _login(port: int, user: str, password: str) -> str:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/auth/login", method="POST",
                                 data=json.dumps({"username": user, "password": password})
                                 .encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())["token"]


# ---------------------------------------------------------------------- Grafana

def metric_names(exposition: str) -> set[str]:
    """Every series name the exposition has samples of or declares (a labelled family with
    no samples yet, such as failovers before the first one, is declared by its # TYPE)."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.add(name)
            if kind == "histogram":
                names |= {name + "_bucket", name + "_sum", name + "_count"}
            elif kind == "counter" and not name.endswith("_total"):
                names.add(name + "_total")
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


async def test_dashboard_queries_only_metrics_pgshard_exports(pg_cluster):
    async with running_runtime(runtime_config(pg_cluster)) as rt, \
            aiohttp.ClientSession() as session:
        conn = await asyncpg.connect(f"postgresql://app:app-secret@127.0.0.1:{rt.proxy.port}"
                                     "/app", timeout=10)
        try:
            await conn.fetchval("SELECT 1")
            try:
                await conn.execute("SELECT * FROM no_such_table_for_metrics")
            except asyncpg.PostgresError:
                pass
        finally:
            await conn.close()
        async with session.get(rt.api_url + "/health") as resp:
            assert resp.status == 200   # so the REST request counter has a sample
        async with session.get(rt.api_url + "/metrics") as resp:
            exported = metric_names(await resp.text())
    dash = json.loads((ROOT / "docker" / "grafana" / "pgshard.json").read_text())
    used = set()
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            used |= set(re.findall(r"\bpgshard_[a-z_]+", target["expr"]))
    assert len(used) >= 15
    assert used <= exported, f"the dashboard queries metrics pgshard does not export: " \
                             f"{sorted(used - exported)}"
