"""The REST CLI against a real sidecar: a `pgshard serve` subprocess over shard0 of the session
cluster, driven through CliRunner and as a real `pgshard` subprocess."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
import urllib.request

import jwt
import psycopg
import pytest
from click.testing import CliRunner

from pgshard.cli import main
from pgshard.cluster import free_port
from tests.fixtures.proxy import PGSHARD, ProxyProcess
from tests.fixtures.runtime import ADMIN_PASSWORD, runtime_config, shards_of

JWT_SECRET = "cli-test-jwt-secret-0123456789abcdef"
TABLE = "cli_items"


@pytest.fixture(scope="module")
def sidecar(pg_cluster):
    """`pgshard serve` over shard0 only (shard1 is there to be added), with a private store."""
    cfg = runtime_config(pg_cluster, proxy={"port": free_port()},
                         sidecar={"port": free_port(), "jwt_secret": JWT_SECRET},
                         shards=shards_of(pg_cluster, {"shard0"}))
    with ProxyProcess(cfg) as proc:
        url = f"http://127.0.0.1:{proc.api_port}"
        _wait_for_health(url, proc)
        proc.url = url
        yield proc


def _wait_for_health(url: str, proc: ProxyProcess, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline or not proc.alive():
                raise RuntimeError(f"the sidecar at {url} did not come up: {proc.log()}") from None
            time.sleep(0.1)


@pytest.fixture
def env(sidecar, tmp_path):
    """A clean CLI environment pointed at the sidecar, with a private config directory."""
    return {"PGSHARD_API": sidecar.url, "PGSHARD_CONFIG_DIR": str(tmp_path / "cfg"),
            "PGSHARD_TOKEN": None, "PGSHARD_USER": None, "PGSHARD_CA_FILE": None}


@pytest.fixture
def cli(env):
    """Run a CLI command in-process; `cli(..., input=...)` feeds stdin."""

    def run(*args: str, input: str | None = None, **extra_env):
        return CliRunner(env={**env, **extra_env}).invoke(main, list(args), input=input)

    return run


@pytest.fixture
def admin(cli):
    """The CLI with the bootstrap admin logged in."""
    result = cli("login", "--user", "admin", "--password-stdin", input=ADMIN_PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    return cli


def _one_line_error(result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, (result.exit_code, result.output)
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


# ---- login and tokens -----------------------------------------------------------------------

def test_login_saves_a_private_token_that_later_commands_use(cli, env, sidecar):
    result = cli("login", "--user", "admin", "--password-stdin", input=ADMIN_PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    assert "logged in to" in result.stdout and "as admin (admin)" in result.stdout
    token_file = os.path.join(env["PGSHARD_CONFIG_DIR"], "token")
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    saved = json.loads(open(token_file).read())
    assert saved["api"] == sidecar.url and saved["role"] == "admin" and saved["token"]
    assert ADMIN_PASSWORD not in open(token_file).read()

    # Later commands find the URL and the token in the file, with no --api or env.
    result = cli("catalog", "show", PGSHARD_API=None)
    assert result.exit_code == 0, result.output
    assert "catalog version" in result.stdout and "shard0" in result.stdout
    result = cli("status", PGSHARD_API=None)
    assert result.exit_code == 0, result.output
    login_line = result.stdout.splitlines()[-1]
    assert login_line.startswith("login ") and "admin (admin), token valid until" in login_line


def test_login_prompts_for_the_password(cli):
    result = cli("login", "--user", "admin", input=ADMIN_PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    assert "Password:" in result.output and ADMIN_PASSWORD not in result.output


def test_wrong_password_at_login(cli, env):
    result = cli("login", "--user", "admin", "--password-stdin", input="not-the-password\n")
    _one_line_error(result, 4, "login failed: 401 Unauthorized",
                    "unknown user or wrong password")
    assert not os.path.exists(os.path.join(env["PGSHARD_CONFIG_DIR"], "token"))
    result = cli("login", "--user", "nobody", "--password-stdin", input="whatever-pw\n")
    _one_line_error(result, 4, "unknown user or wrong password")


def test_commands_without_a_token_get_401_and_a_hint(cli):
    _one_line_error(cli("shards", "list"), 4, "401 Unauthorized", "pgshard login")


def test_a_bad_or_expired_token_is_401(cli):
    _one_line_error(cli("--token", "garbage", "tables", "list"), 4, "the token is not valid")
    now = int(time.time())
    expired = jwt.encode({"sub": "admin", "role": "admin", "iat": now - 7200, "exp": now - 3600,
                          "iss": "pgshard"}, JWT_SECRET, algorithm="HS256")
    _one_line_error(cli("catalog", "show", PGSHARD_TOKEN=expired), 4, "the token has expired")


def test_a_saved_token_is_not_sent_to_another_sidecar(admin, sidecar):
    dead = f"http://127.0.0.1:{free_port()}"
    result = admin("--api", dead, "shards", "list")
    _one_line_error(result, 3, f"cannot reach the pgshard sidecar at {dead}")


# ---- read commands --------------------------------------------------------------------------

def test_status(cli, sidecar):
    result = cli("status")
    assert result.exit_code == 0, result.output
    assert "status" in result.stdout and "ok" in result.stdout
    assert "store.reachable" in result.stdout
    assert result.stdout.splitlines()[-1].split()[:2] == ["login", "none"]
    doc = json.loads(cli("status", "--json").stdout)
    assert doc["api"] == sidecar.url and doc["health"]["status"] == "ok"
    assert doc["health"]["catalog_version"] >= 1 and doc["login"] is None


def test_catalog_show(admin):
    result = admin("catalog", "show")
    assert result.exit_code == 0, result.output
    assert "vnodes (256 per shard)" in result.stdout
    assert "shard0" in result.stdout and "pgshard:***@" in result.stdout
    doc = json.loads(admin("catalog", "show", "--json").stdout)
    assert doc["version"] >= 1 and len(doc["ring"]) >= 256
    assert {s["name"] for s in doc["shards"]} >= {"shard0"}


def test_shards_list_and_show(admin):
    result = admin("shards", "list")
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert header.split()[:5] == ["NAME", "STATUS", "WEIGHT", "VNODES", "OWNERSHIP"]
    assert any(r.startswith("shard0 ") and "256" in r for r in rows)
    doc = json.loads(admin("shards", "list", "--json").stdout)
    assert "shard0" in [s["name"] for s in doc["shards"]]
    shard0 = json.loads(admin("shards", "show", "shard0", "--json").stdout)
    assert shard0["name"] == "shard0" and shard0["vnodes"] == 256
    assert ":***@" in shard0["primary"]
    result = admin("shards", "show", "shard0")
    assert result.exit_code == 0 and "ranges" in result.stdout
    _one_line_error(admin("shards", "show", "nope"), 6, "404 Not Found", 'shard "nope"')


def test_routers(admin, sidecar):
    result = admin("routers")
    assert result.exit_code == 0, result.output
    assert "active manager" in result.stdout and "yes" in result.stdout
    doc = json.loads(admin("routers", "--json").stdout)
    assert [r["up_to_date"] for r in doc["routers"]] == [True]
    assert doc["routers"][0]["api"] == sidecar.url


# ---- changes --------------------------------------------------------------------------------

@pytest.fixture
def populated_table(pg_cluster):
    """A table with one row on shard0, so a new shard must wait for a rebalance."""
    dsn = pg_cluster.shards[0].primary.dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigint PRIMARY KEY, v text)")
        conn.execute(f"INSERT INTO {TABLE} VALUES (1, 'x') ON CONFLICT DO NOTHING")
    yield TABLE
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")


def test_shards_add_and_remove(admin, pg_cluster, populated_table):
    shard1 = pg_cluster.describe()["shards"][1]
    result = admin("tables", "add", populated_table, "--shard-key", "id")
    assert result.exit_code == 0, result.output
    try:
        # A replica is no primary: the sidecar connects, sees a standby and refuses (422).
        result = admin("shards", "add", "shard1", "--primary", shard1["replicas"][0])
        _one_line_error(result, 1, "422", "is a standby, not a primary")

        result = admin("shards", "add", "shard1", "--primary", shard1["primary"],
                       "--replica", shard1["replicas"][0])
        assert result.exit_code == 0, result.output
        assert "added shard shard1" in result.stdout
        assert "owns no ranges until a rebalance" in result.stdout
        _one_line_error(admin("shards", "add", "shard1", "--primary", shard1["primary"]), 7,
                        "409 Conflict", "already exists")
        shown = json.loads(admin("shards", "show", "shard1", "--json").stdout)
        assert shown["vnodes"] == 0 and len(shown["replicas"]) == 1

        # shard0 owns every range: removing it is refused.
        _one_line_error(admin("shards", "remove", "shard0"), 7, "409 Conflict",
                        'shard "shard0" owns 256 vnodes')
        result = admin("shards", "remove", "shard1", "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["deleted"] == "shard1"
        _one_line_error(admin("shards", "remove", "shard1"), 6, "404", 'shard "shard1"')
    finally:
        admin("shards", "remove", "shard1")
        admin("tables", "remove", populated_table)


def test_tables_add_list_remove(admin, pg_cluster):
    _one_line_error(admin("tables", "add", "public.cli_nothing", "--shard-key", "id"), 1,
                    "422", 'table "public.cli_nothing" does not exist on shard shard0')
    pg_cluster.shards[0].primary.psql("DROP TABLE IF EXISTS cli_orders; "
                                      "CREATE TABLE cli_orders (id int, customer_id int)")
    result = admin("tables", "add", "public.cli_orders", "--shard-key", "customer_id")
    assert result.exit_code == 0, result.output
    assert "table public.cli_orders is sharded by customer_id" in result.stdout
    result = admin("tables", "list")
    assert any(line.split() == ["public.cli_orders", "customer_id"]
               for line in result.stdout.splitlines()), result.stdout
    tables = json.loads(admin("tables", "list", "--json").stdout)["tables"]
    assert {"name": "public.cli_orders", "shard_key": "customer_id"} in tables
    result = admin("tables", "remove", "public.cli_orders")
    assert result.exit_code == 0 and "no longer sharded" in result.stdout
    _one_line_error(admin("tables", "remove", "public.cli_orders"), 6, "is not sharded")
    _one_line_error(admin("tables", "add", "no such; table", "--shard-key", "id"), 1,
                    "400 Bad Request")


def test_users_and_roles(admin, cli, tmp_path):
    result = admin("users", "add", "cli-viewer", "--role", "viewer", "--password-stdin",
                   input="viewer-secret\n")
    assert result.exit_code == 0, result.output
    assert "added user cli-viewer (viewer)" in result.stdout
    try:
        _one_line_error(admin("users", "add", "cli-viewer", "--role", "viewer",
                              "--password-stdin", input="viewer-secret\n"), 7, "already exists")
        _one_line_error(admin("users", "add", "cli-short", "--role", "viewer",
                              "--password-stdin", input="short\n"), 1, "400 Bad Request")
        result = admin("users", "list")
        assert any(line.split()[:2] == ["cli-viewer", "viewer"]
                   for line in result.stdout.splitlines()), result.stdout
        names = [u["name"] for u in json.loads(admin("users", "list", "--json").stdout)["users"]]
        assert {"admin", "cli-viewer"} <= set(names)

        # The viewer, with a config directory of its own, reads but may not change anything.
        viewer_dir = str(tmp_path / "viewer")
        result = cli("login", "--user", "cli-viewer", "--password-stdin",
                     input="viewer-secret\n", PGSHARD_CONFIG_DIR=viewer_dir)
        assert result.exit_code == 0, result.output
        assert cli("shards", "list", PGSHARD_CONFIG_DIR=viewer_dir).exit_code == 0
        _one_line_error(cli("tables", "add", "t", "--shard-key", "id",
                            PGSHARD_CONFIG_DIR=viewer_dir), 5, "403 Forbidden",
                        'role "viewer" lacks the catalog:write permission')
        _one_line_error(cli("users", "list", PGSHARD_CONFIG_DIR=viewer_dir), 5, "403")
        # Without --password-stdin the password is prompted for, twice.
        result = admin("users", "add", "cli-operator", "--role", "operator",
                       input="operator-secret\noperator-secret\n")
        assert result.exit_code == 0, result.output
        assert "Repeat for confirmation" in result.output
        assert "operator-secret" not in result.output
    finally:
        admin("users", "remove", "cli-operator")
        result = admin("users", "remove", "cli-viewer")
    assert result.exit_code == 0 and "removed user cli-viewer" in result.stdout
    _one_line_error(admin("users", "remove", "cli-viewer"), 6, 'user "cli-viewer" does not exist')
    _one_line_error(admin("users", "remove", "admin"), 7, "the last admin")


def test_audit_shows_the_admin_calls(admin):
    admin("tables", "add", "cli_audited", "--shard-key", "id")
    admin("tables", "remove", "cli_audited")
    records = json.loads(admin("audit", "--limit", "5", "--json").stdout)["records"]
    assert [(r["action"], r["target"], r["actor"]) for r in records[:2]] == [
        ("table.remove", "cli_audited", "admin"), ("table.put", "cli_audited", "admin")]
    result = admin("audit", "--action", "auth.login", "--limit", "1")
    assert result.exit_code == 0 and "auth.login" in result.stdout


def test_an_https_sidecar_needs_its_ca(pg_cluster, tls_pair, tmp_path):
    cert, key = tls_pair
    cfg = runtime_config(pg_cluster, proxy={"port": free_port()},
                         sidecar={"port": free_port(), "tls_cert": str(cert),
                                  "tls_key": str(key)},
                         shards=shards_of(pg_cluster, {"shard0"}))
    with ProxyProcess(cfg) as proc:
        url = f"https://127.0.0.1:{proc.api_port}"
        env = {"PGSHARD_API": url, "PGSHARD_CONFIG_DIR": str(tmp_path), "PGSHARD_TOKEN": None}
        runner = CliRunner(env=env)
        deadline = time.monotonic() + 20
        while True:
            result = runner.invoke(main, ["--ca-file", str(cert), "status", "--json"])
            if result.exit_code != 3 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["api"] == url
        result = runner.invoke(main, ["status"])
        _one_line_error(result, 3, f"cannot reach the pgshard sidecar at {url}: TLS "
                                   "certificate not trusted")


# ---- as a real subprocess -------------------------------------------------------------------

def pgshard(*args: str, env: dict, input: str | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PGSHARD_")}
    full_env.update({k: v for k, v in env.items() if v is not None})
    return subprocess.run([PGSHARD, *args], input=input, capture_output=True, text=True,
                          env=full_env, timeout=60)


def test_subprocess_unreachable_sidecar(env):
    dead = f"http://127.0.0.1:{free_port()}"
    proc = pgshard("--api", dead, "shards", "list", env=env)
    assert proc.returncode == 3
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"Error: cannot reach the pgshard sidecar at {dead}: "
                                  "connection refused")


def test_subprocess_wrong_password(env):
    proc = pgshard("login", "--user", "admin", "--password-stdin", env=env, input="wrong-pw\n")
    assert proc.returncode == 4
    assert proc.stderr == ("Error: login failed: 401 Unauthorized: unknown user or wrong "
                           "password\n")


def test_subprocess_login_json_and_conflict(env):
    proc = pgshard("login", "--user", "admin", "--password-stdin", env=env,
                   input=ADMIN_PASSWORD + "\n")
    assert proc.returncode == 0, proc.stderr
    for args in (["shards", "list"], ["catalog", "show"], ["tables", "list"], ["users", "list"],
                 ["routers"], ["status"], ["audit"], ["shards", "show", "shard0"]):
        proc = pgshard(*args, "--json", env=env)
        assert proc.returncode == 0, (args, proc.stderr)
        assert isinstance(json.loads(proc.stdout), dict), args
    proc = pgshard("shards", "remove", "shard0", env=env)
    assert proc.returncode == 7
    assert proc.stderr.startswith("Error: 409 Conflict: shard \"shard0\" owns 256 vnodes")
    assert proc.stderr.count("\n") == 1
