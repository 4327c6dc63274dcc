"""The `pgshard` command line (click): thin commands over the proxy, the demo and REST."""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import click

from pgshard import __version__
from pgshard.cli_output import (
    answer,
    echo_fields,
    echo_json,
    echo_notes,
    echo_table,
    flatten,
    item,
    items,
)
from pgshard.control.rest_client import (
    DEFAULT_API,
    DEFAULT_TIMEOUT,
    ApiError,
    Conflict,
    Forbidden,
    NotAuthenticated,
    NotFound,
    RestClient,
    SavedLogin,
    SidecarUnreachable,
    check_api_url,
    load_login,
    path,
    save_login,
)

# Exit codes of the REST commands; the main help lists them.
EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3
EXIT_CODES: dict[type[ApiError], int] = {
    SidecarUnreachable: EXIT_UNREACHABLE,
    NotAuthenticated: 4,
    Forbidden: 5,
    NotFound: 6,
    Conflict: 7,
}
SHARD_COLUMNS = ["name", "status", "weight", "vnodes", "ownership", "primary", "replicas"]


class CliError(click.ClickException):
    """A one-line error on stderr and a chosen exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR):
        super().__init__(message)
        self.exit_code = exit_code


def api_error(exc: ApiError, *, login_hint: bool = True) -> CliError:
    """The CLI's wording and exit code for a failed REST call."""
    message = str(exc)
    if isinstance(exc, SidecarUnreachable):
        message += " (is pgshard running? --api or PGSHARD_API picks the URL)"
    elif isinstance(exc, NotAuthenticated) and login_hint:
        message += " (run `pgshard login --user NAME`)"
    return CliError(message, EXIT_CODES.get(type(exc), EXIT_ERROR))


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ApiError as exc:
            raise api_error(exc) from None


@dataclass
class Session:
    """The global options, resolved lazily so `serve` and `demo` never read them."""

    api_option: str | None
    token_option: str | None
    ca_file: str | None
    timeout: float

    @cached_property
    def saved(self) -> SavedLogin | None:
        return load_login()

    @property
    def api(self) -> str:
        raw = self.api_option or (self.saved.api if self.saved else DEFAULT_API)
        try:
            return check_api_url(raw)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--api' / PGSHARD_API") from None

    def token(self) -> str | None:
        if self.token_option:
            return self.token_option
        saved = self.saved
        # A saved token goes only to the sidecar that issued it, never to another --api.
        if saved and saved.api == self.api:
            return saved.token
        return None

    def client(self, *, authenticated: bool = True) -> RestClient:
        return RestClient(self.api, self.token() if authenticated else None,
                          timeout=self.timeout, ca_file=self.ca_file)


pass_session = click.make_pass_decorator(Session)
json_option = click.option("--json", "as_json", is_flag=True, help="Print the reply as JSON.")


def _setup_logging(level: str) -> None:
    from pythonjsonlogger.json import JsonFormatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _print_version(ctx: click.Context, param, value: bool) -> None:
    """`pgshard --version`: the version and whether the Cython-compiled core is loaded."""
    if not value or ctx.resilient_parsing:
        return
    from pgshard.compiled import describe
    click.echo(f"pgshard, version {__version__}\n{describe()}")
    ctx.exit()


def _run(coro) -> None:
    try:
        import uvloop
        uvloop.run(coro)
    except ImportError:
        asyncio.run(coro)


@click.group(cls=_Group)
@click.option("--version", is_flag=True, expose_value=False, is_eager=True,
              callback=_print_version, help="Show the version (and whether the compiled core "
              "is loaded) and exit.")
@click.option("--api", metavar="URL", envvar="PGSHARD_API",
              help=f"Sidecar URL [env PGSHARD_API; default: the URL saved by login, "
                   f"else {DEFAULT_API}].")
@click.option("--token", metavar="JWT", envvar="PGSHARD_TOKEN",
              help="Bearer token [env PGSHARD_TOKEN; default: the one saved by login].")
@click.option("--ca-file", type=click.Path(exists=True, dir_okay=False), envvar="PGSHARD_CA_FILE",
              help="CA certificate to trust for an https:// sidecar [env PGSHARD_CA_FILE].")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_TIMEOUT,
              metavar="SECONDS",
              show_default=True, help="Seconds to wait for the sidecar.")
@click.pass_context
def main(ctx: click.Context, api: str | None, token: str | None, ca_file: str | None,
         timeout: float) -> None:
    """pgshard — a PostgreSQL sharding proxy.

    `serve` and `demo` run the proxy; the other commands talk to its REST sidecar.
    `pgshard login --user NAME` saves a token (and the URL) in
    ~/.config/pgshard/token ($PGSHARD_CONFIG_DIR/token) for the commands after it.

    \b
    Exit codes:
      0  success
      1  error (the sidecar refused the request, or a local failure)
      2  usage error
      3  sidecar unreachable
      4  not authenticated (401: no token, bad or expired token, wrong password)
      5  forbidden (403: your role may not do this)
      6  not found (404)
      7  conflict (409: e.g. removing a shard that owns ranges)
    """
    ctx.obj = Session(api, token, ca_file, timeout)


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), required=True,
              help="pgshard.toml")
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING, ERROR")
@click.option("--role", type=click.Choice(["all", "router"]), default="all", show_default=True,
              help="all: router, REST sidecar and manager; router: a router that follows the "
                   "catalog in the store and serves /health and /metrics only.")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Router processes on the port (SO_REUSEPORT)  [default: [proxy] workers, "
                   "else 1].")
def serve(config_path: str, log_level: str | None, role: str, workers: int | None) -> None:
    """Run the proxy and its control plane from a config file.

    The catalog comes from the metadata store; the config's [[shards]] seed a store
    that holds none yet. With several workers, worker 0 runs the REST sidecar and the
    manager, the others route only; /metrics sums them all.
    """
    from pgshard.config import ConfigError, load_config
    from pgshard.runtime import serve_forever
    from pgshard.worker_link import WorkerInfo

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    _setup_logging(log_level or config.log_level)
    worker = WorkerInfo.from_env()
    count = workers or config.proxy.workers
    if worker is not None:
        from pgshard.workers import serve_worker
        serve_worker(config, role, config_path, worker)
    elif count > 1:
        from pgshard.workers import supervise
        sys.exit(supervise(config, config_path, role, log_level, count))
    else:
        _run(serve_forever(config, role, config_path=config_path))


@main.command()
@click.option("--data-dir", type=click.Path(file_okay=False), default=".demo", show_default=True)
@click.option("--shards", type=click.IntRange(1, 16), default=2, show_default=True)
@click.option("--replicas", type=click.IntRange(0, 4), default=1, show_default=True)
@click.option("--port", type=int, default=6432, show_default=True, help="proxy port")
@click.option("--api-port", type=int, default=8081, show_default=True)
@click.option("--pool-mode", type=click.Choice(["transaction", "session"]), default="transaction")
@click.option("--log-level", default="WARNING", show_default=True)
@click.option("--durable", is_flag=True, help="run PostgreSQL with fsync, synchronous_commit "
              "and full_page_writes on (default: off, fast, a crash can lose committed data)")
@click.option("--sync-replication", is_flag=True, help="synchronous replication: each primary "
              "waits for ANY 1 of its replicas at commit (implies --durable); a failover then "
              "loses no acknowledged write")
@click.option("--spares", type=click.IntRange(0, 8), default=0, show_default=True,
              help="also start this many empty clusters (spare0, …) outside the catalog, "
              "listed in demo.json, to add as shards and reshard into")
@click.option("--session-reset", type=click.Choice(["discard", "close"]), default="discard",
              show_default=True, help="session pooling: a server a client leaves is reset with "
              "DISCARD ALL and reused, or closed (each client then gets a new backend, as "
              "with a direct connection)")
@click.option("--database", "databases", multiple=True, metavar="NAME",
              help="also serve logical database NAME (repeatable): created on every shard "
              "with the pgshard schema and the example table, next to app")
def demo(data_dir: str, shards: int, replicas: int, port: int, api_port: int, pool_mode: str,
         log_level: str, durable: bool, sync_replication: bool, spares: int,
         databases: tuple[str, ...], session_reset: str) -> None:
    """Start local PostgreSQL shards with replicas and the proxy in front of them.

    Runs in the foreground; writes DATA_DIR/demo.json once ready; Ctrl-C stops everything.
    PostgreSQL runs with fsync off for speed unless --durable is given.
    """
    from pgshard.runtime import run_demo

    _setup_logging(log_level)
    _run(run_demo(Path(data_dir).absolute(), shards, replicas, port, api_port, pool_mode,
                  durable, sync_replication=sync_replication, spares=spares,
                  databases=databases, session_reset=session_reset))


@main.command()
@click.option("--out", type=click.Path(file_okay=False), default=".", show_default=True)
@click.option("--host", "hosts", multiple=True, default=["localhost", "127.0.0.1"],
              show_default=True, help="names the certificate is valid for")
@click.option("--days", type=int, default=365, show_default=True)
def certs(out: str, hosts: tuple[str, ...], days: int) -> None:
    """Generate a self-signed TLS certificate and key (pgshard.crt, pgshard.key)."""
    from pgshard.tls import write_self_signed

    cert, key = write_self_signed(Path(out), list(hosts), days)
    click.echo(f"wrote {cert} and {key}")


# ---- REST commands -------------------------------------------------------------------------

def _read_password(from_stdin: bool, prompt: str = "Password", confirm: bool = False) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt(prompt, hide_input=True, confirmation_prompt=confirm)
    if not password:
        raise click.UsageError("the password is empty")
    return password


@main.command()
@click.option("--user", "-u", required=True, envvar="PGSHARD_USER",
              help="User name [env PGSHARD_USER].")
@click.option("--password-stdin", is_flag=True,
              help="Read the password from the first line of stdin instead of prompting.")
@json_option
@pass_session
def login(session: Session, user: str, password_stdin: bool, as_json: bool) -> None:
    """Log in to the sidecar and save the token for the commands after it.

    The token and the sidecar URL go to ~/.config/pgshard/token (mode 0600;
    $PGSHARD_CONFIG_DIR overrides the directory).
    """
    password = _read_password(password_stdin)
    try:
        reply = session.client(authenticated=False).login(user, password)
    except NotAuthenticated as exc:
        raise CliError(f"login failed: {exc}", EXIT_CODES[NotAuthenticated]) from None
    saved = SavedLogin(api=session.api, token=reply["token"], user=user,
                       role=str(reply.get("role", "")), expires_at=reply.get("expires_at"))
    target = save_login(saved)
    if as_json:
        echo_json({k: v for k, v in reply.items() if k != "token"} | {"token_file": str(target)})
        return
    role = f" ({saved.role})" if saved.role else ""
    until = f", valid until {saved.expires_at}" if saved.expires_at else ""
    click.echo(f"logged in to {saved.api} as {user}{role}{until}; token saved in {target}")


@main.command()
@json_option
@pass_session
def status(session: Session, as_json: bool) -> None:
    """Show the sidecar's health and who you are logged in as.

    Exits 1 when the sidecar answers but reports itself unhealthy.
    """
    health = session.client(authenticated=False).request("GET", "/health", accept_status=(503,))
    if not isinstance(health, dict):
        health = {"status": health}
    healthy = str(health.get("status", "ok")).lower() in ("ok", "pass", "healthy", "up")
    saved = session.saved
    login = None
    if saved and saved.api == session.api:
        login = {"user": saved.user, "role": saved.role, "expires_at": saved.expires_at}
    if as_json:
        echo_json({"api": session.api, "health": health, "login": login})
    else:
        if session.token_option:
            who = "token from --token / PGSHARD_TOKEN"
        elif login:
            who = f"{login['user']} ({login['role']})"
            who += f", token valid until {login['expires_at']}" if login["expires_at"] else ""
        else:
            who = "none (run `pgshard login --user NAME`)"
        echo_fields({"api": session.api, **flatten(health), "login": who})
        for warning in health.get("warnings") or ():
            click.echo(f"warning: {warning}", err=True)
    if not healthy:
        raise CliError(f"the sidecar at {session.api} reports {health.get('status')}")


@main.group()
def catalog() -> None:
    """The versioned catalog: shards, ring, sharded tables, fences."""


@catalog.command("show")
@json_option
@pass_session
def catalog_show(session: Session, as_json: bool) -> None:
    """Show the current catalog (--json prints the full document, ring included)."""
    doc = session.client().get("/api/v1/catalog")
    if as_json:
        echo_json(doc)
        return
    doc = doc if isinstance(doc, dict) else {}
    click.echo(f"catalog version {doc.get('version', '?')}: {len(doc.get('ring') or [])} "
               f"vnodes ({doc.get('vnodes_per_shard', '?')} per shard)")
    click.echo()
    echo_table(doc.get("shards"), SHARD_COLUMNS, empty="no shards")
    click.echo()
    tables = doc.get("tables") or {}
    if isinstance(tables, dict):
        tables = [{"table": t, "shard_key": k} for t, k in tables.items()]
    echo_table(tables, ["table", "shard_key"], empty="no sharded tables")
    fences = doc.get("fences") or []
    if fences:
        click.echo()
        echo_table(fences, ["lo", "hi", "job"])


@main.group()
def shards() -> None:
    """Shards: list, show, add, remove; init-sql prints the per-shard SQL."""


@shards.command("init-sql")
def init_sql() -> None:
    """Print the SQL that installs pgshard.hash() on a shard (pipe it to psql)."""
    from pgshard.cluster import hash_sql

    click.echo(hash_sql())


@shards.command("list")
@json_option
@pass_session
def shards_list(session: Session, as_json: bool) -> None:
    """List the shards."""
    reply = session.client().get("/api/v1/shards")
    answer(reply, as_json, lambda r: echo_table(items(r, "shards"), SHARD_COLUMNS,
                                                empty="no shards"))


@shards.command("show")
@click.argument("name")
@json_option
@pass_session
def shards_show(session: Session, name: str, as_json: bool) -> None:
    """Show one shard."""
    reply = session.client().get(path("/api/v1/shards", name))
    answer(reply, as_json, lambda r: echo_fields(item(r, "shard")))


@shards.command("add")
@click.argument("name")
@click.option("--primary", required=True, metavar="DSN", help="postgresql:// URL of the primary.")
@click.option("--replica", "replicas", multiple=True, metavar="DSN",
              help="postgresql:// URL of a replica (repeatable).")
@json_option
@pass_session
def shards_add(session: Session, name: str, primary: str, replicas: tuple[str, ...],
               as_json: bool) -> None:
    """Add a shard; the sidecar connects to its endpoints first.

    On a cluster whose sharded tables hold no rows the new shard gets its vnodes at
    once; otherwise it owns no ranges until a rebalance job moves some to it.
    """
    reply = session.client().post("/api/v1/shards",
                                  {"name": name, "primary": primary, "replicas": list(replicas)})
    if as_json:
        echo_json(reply)
        return
    click.echo(f"added shard {name}")
    echo_notes(reply)


@shards.command("remove")
@click.argument("name")
@json_option
@pass_session
def shards_remove(session: Session, name: str, as_json: bool) -> None:
    """Remove a shard that owns no hash ranges (one that does is refused: exit 7)."""
    reply = session.client().delete(path("/api/v1/shards", name))
    answer(reply, as_json, f"removed shard {name}")


# `pgshard reshard …` and `pgshard jobs …` (pgshard/cli_reshard.py).
from pgshard.cli_reshard import register as _register_reshard  # noqa: E402

_register_reshard(main, pass_session, json_option)

# `pgshard tables|users …`, `pgshard routers`, `pgshard audit` (pgshard/cli_catalog.py).
from pgshard.cli_catalog import register as _register_catalog  # noqa: E402

_register_catalog(main, pass_session, json_option, _read_password)

# `pgshard shards failover|switchover|rejoin` (pgshard/cli_ha.py).
from pgshard.cli_ha import register as _register_ha  # noqa: E402

_register_ha(shards, pass_session, json_option)

# `pgshard node rejoin` (pgshard/cli_node.py), run on a PostgreSQL server's host.
from pgshard.cli_node import register as _register_node  # noqa: E402

_register_node(main, pass_session, json_option, CliError)

if __name__ == "__main__":
    main()
