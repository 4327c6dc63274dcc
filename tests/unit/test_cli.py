"""The REST CLI without a sidecar: help texts, argument checks, unreachable-sidecar errors,
the saved login, and the problem+json → error mapping."""

from __future__ import annotations

import json
import socket
import stat

import pytest
from click.testing import CliRunner

from pgshard.cli import Session, main
from pgshard.cli_output import cell as _cell
from pgshard.cli_output import flatten as _flatten
from pgshard.control import rest_client
from pgshard.control.rest_client import (
    ApiError,
    Conflict,
    Forbidden,
    NotAuthenticated,
    NotFound,
    SavedLogin,
    check_api_url,
    load_login,
    save_login,
)

REST_COMMANDS = [
    ["login"], ["status"], ["routers"], ["catalog", "show"],
    ["shards", "list"], ["shards", "show"], ["shards", "add"], ["shards", "remove"],
    ["tables", "list"], ["tables", "add"], ["tables", "remove"], ["audit"],
    ["users", "list"], ["users", "add"], ["users", "remove"],
]


@pytest.fixture
def config_dir(tmp_path, monkeypatch):
    """A private PGSHARD_CONFIG_DIR and no PGSHARD_* settings leaking in from outside."""
    for var in ("PGSHARD_API", "PGSHARD_TOKEN", "PGSHARD_USER", "PGSHARD_CA_FILE"):
        monkeypatch.delenv(var, raising=False)
    directory = tmp_path / "config"
    monkeypatch.setenv("PGSHARD_CONFIG_DIR", str(directory))
    return directory


@pytest.fixture
def dead_url():
    """An http:// URL on a loopback port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(main, list(args), input=input)


def test_main_help_documents_the_exit_codes():
    result = run("--help")
    assert result.exit_code == 0
    for line in ("3  sidecar unreachable", "4  not authenticated", "5  forbidden",
                 "6  not found", "7  conflict", "PGSHARD_API", "PGSHARD_TOKEN"):
        assert line in result.output


@pytest.mark.parametrize("command", REST_COMMANDS, ids=" ".join)
def test_every_rest_command_has_help_and_json(command):
    result = run(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "--json" in result.output
    summary = result.output.split("\n\n")[1].strip()
    assert summary and not summary.startswith("Options"), result.output


@pytest.mark.parametrize("command", REST_COMMANDS, ids=" ".join)
def test_every_rest_command_reports_an_unreachable_sidecar_in_one_line(command, config_dir,
                                                                       dead_url):
    args = {"login": ["--user", "u", "--password-stdin"], "shards show": ["s"],
            "shards add": ["s", "--primary", "postgresql://h/db"], "shards remove": ["s"],
            "tables add": ["t", "--shard-key", "id"], "tables remove": ["t"],
            "users add": ["u", "--role", "viewer", "--password-stdin"],
            "users remove": ["u"]}.get(" ".join(command), [])
    result = run("--api", dead_url, *command, *args, input="secret\n")
    assert result.exit_code == 3, result.output
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"Error: cannot reach the pgshard sidecar at {dead_url}: ")
    assert "connection refused" in result.stderr


def test_the_default_api_url_and_the_env_override(config_dir, dead_url, monkeypatch):
    assert "http://127.0.0.1:8081" in run("--help").output
    monkeypatch.setenv("PGSHARD_API", dead_url + "/")
    result = run("shards", "list")
    assert result.exit_code == 3
    assert f"at {dead_url}:" in result.stderr


def test_a_sidecar_that_never_answers_times_out(config_dir):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # the kernel accepts; nobody ever replies
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        result = run("--api", url, "--timeout", "0.3", "catalog", "show")
    assert result.exit_code == 3
    assert result.stderr == f"Error: cannot reach the pgshard sidecar at {url}: timed out " \
                            "(is pgshard running? --api or PGSHARD_API picks the URL)\n"


@pytest.mark.parametrize("args", [
    ["--api", "localhost:8081", "routers"],
    ["--api", "ftp://h", "routers"],
    ["--api", "http://h:99999", "routers"],
    ["--timeout", "0", "routers"],
    ["shards", "add", "s1"],                                  # --primary is required
    ["shards", "show"],                                       # NAME is required
    ["tables", "add", "t"],                                   # --shard-key is required
    ["users", "add", "u", "--role", "root", "--password-stdin"],
    ["login"],                                                # --user is required
    ["login", "--user", "u", "--password-stdin"],             # empty password
])
def test_usage_errors_exit_2_before_any_request(args, config_dir):
    result = run(*args, input="\n")
    assert result.exit_code == 2, result.output
    assert "Error:" in result.stderr


def test_serve_and_init_sql_ignore_a_bad_api_setting(monkeypatch, config_dir):
    monkeypatch.setenv("PGSHARD_API", "not a url")
    result = run("shards", "init-sql")
    assert result.exit_code == 0
    assert "pgshard" in result.output and "hash" in result.output
    result = run("serve", "--config", str(config_dir / "missing.toml"))
    assert result.exit_code == 1
    assert "cannot read" in result.stderr


def test_status_without_a_sidecar_says_so(config_dir, dead_url):
    result = run("--api", dead_url, "status", "--json")
    assert result.exit_code == 3
    assert result.stdout == ""


# ---- the saved login ------------------------------------------------------------------------

def test_save_login_is_private_and_round_trips(config_dir):
    login = SavedLogin(api="http://127.0.0.1:9", token="t0k", user="ann", role="admin",
                       expires_at="2030-01-01T00:00:00Z")
    target = save_login(login)
    assert target == config_dir / "token"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert stat.S_IMODE(config_dir.stat().st_mode) == 0o700
    assert load_login() == login
    assert json.loads(target.read_text())["api"] == "http://127.0.0.1:9"
    assert [p.name for p in config_dir.iterdir()] == ["token"]
    # Overwriting keeps the mode even if someone loosened it.
    target.chmod(0o644)
    save_login(SavedLogin(api="http://127.0.0.1:9", token="t1"))
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert load_login().token == "t1"


@pytest.mark.parametrize("content", ["", "{", "[]", '{"token": "x"}', '{"api": "nope", "token": 1}'])
def test_an_unreadable_token_file_counts_as_no_login(config_dir, content):
    config_dir.mkdir()
    (config_dir / "token").write_text(content)
    assert load_login() is None


def test_the_saved_token_goes_only_to_the_sidecar_that_issued_it(config_dir):
    save_login(SavedLogin(api="http://127.0.0.1:9001", token="saved"))
    assert Session(None, None, None, 1).api == "http://127.0.0.1:9001"
    assert Session(None, None, None, 1).token() == "saved"
    assert Session("http://127.0.0.1:9001/", None, None, 1).token() == "saved"
    assert Session("http://127.0.0.1:9002", None, None, 1).token() is None
    assert Session("http://127.0.0.1:9002", "explicit", None, 1).token() == "explicit"


def test_commands_use_the_api_url_saved_by_login(config_dir, dead_url):
    save_login(SavedLogin(api=dead_url, token="x", user="ann", role="viewer"))
    result = run("status")
    assert result.exit_code == 3
    assert dead_url in result.stderr


# ---- error mapping and formatting -----------------------------------------------------------

def problem(status: int, title: str, detail: str = "") -> bytes:
    return json.dumps({"type": "about:blank", "title": title, "status": status,
                       "detail": detail}).encode()


@pytest.mark.parametrize("status,body,cls,message", [
    (401, problem(401, "Unauthorized", "token expired"), NotAuthenticated,
     "401 Unauthorized: token expired"),
    (403, problem(403, "Forbidden", "role viewer may not POST /api/v1/shards"), Forbidden,
     "403 Forbidden: role viewer may not POST /api/v1/shards"),
    (404, problem(404, "Not Found", 'no shard "x"'), NotFound, '404 Not Found: no shard "x"'),
    (404, b"404: Not Found", NotFound, "404 Not Found: GET /api/v1/x not found"),
    (409, problem(409, "Conflict", "shard s0 owns\n 256 vnodes"), Conflict,
     "409 Conflict: shard s0 owns 256 vnodes"),
    (413, problem(413, "Payload Too Large"), ApiError, "413 Payload Too Large"),
    (500, b"<html>\n<b>boom</b></html>", ApiError, "500 Internal Server Error: <html> <b>boom</b></html>"),
])
def test_problem_bodies_become_one_line_typed_errors(status, body, cls, message):
    exc = rest_client._error("GET", "/api/v1/x", status, "", body)
    assert type(exc) is cls
    assert str(exc) == message
    assert exc.status == status


@pytest.mark.parametrize("url,expected", [
    ("http://127.0.0.1:8081", "http://127.0.0.1:8081"),
    ("https://pgshard.example:443/", "https://pgshard.example:443"),
    (" http://h/prefix/ ", "http://h/prefix"),
])
def test_check_api_url(url, expected):
    assert check_api_url(url) == expected


def test_names_are_one_path_segment():
    assert rest_client.path("/api/v1/tables", "public.t/../x") == "/api/v1/tables/public.t%2F..%2Fx"


def test_human_output_helpers():
    assert _flatten({"status": "ok", "store": {"reachable": True, "x": {"y": 1}}, "e": {}}) == {
        "status": "ok", "store.reachable": True, "store.x.y": 1, "e": {}}
    assert _cell("ownership", 0.33333) == "33.3%"
    assert _cell("replicas", []) == "-"
    assert _cell("replicas", ["a", "b"]) == "a, b"
    assert _cell("leader", False) == "no"
    assert _cell("x", None) == "-"
