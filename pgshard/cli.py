"""The `pgshard` command line (click): thin commands over the proxy, the demo and REST."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import click

from pgshard import __version__


def _setup_logging(level: str) -> None:
    from pythonjsonlogger.json import JsonFormatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _run(coro) -> None:
    try:
        import uvloop
        uvloop.run(coro)
    except ImportError:
        asyncio.run(coro)


@click.group()
@click.version_option(__version__, prog_name="pgshard")
def main() -> None:
    """pgshard — a PostgreSQL sharding proxy."""


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), required=True,
              help="pgshard.toml")
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING, ERROR")
def serve(config_path: str, log_level: str | None) -> None:
    """Run the proxy with the shards and users of a config file."""
    from pgshard.config import ConfigError, load_config
    from pgshard.runtime import serve_forever

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if config.catalog is None:
        raise click.ClickException(f"{config_path}: no [[shards]] configured")
    _setup_logging(log_level or config.log_level)
    _run(serve_forever(config))


@main.command()
@click.option("--data-dir", type=click.Path(file_okay=False), default=".demo", show_default=True)
@click.option("--shards", type=click.IntRange(1, 16), default=2, show_default=True)
@click.option("--replicas", type=click.IntRange(0, 4), default=1, show_default=True)
@click.option("--port", type=int, default=6432, show_default=True, help="proxy port")
@click.option("--api-port", type=int, default=8081, show_default=True)
@click.option("--pool-mode", type=click.Choice(["transaction", "session"]), default="transaction")
@click.option("--log-level", default="WARNING", show_default=True)
def demo(data_dir: str, shards: int, replicas: int, port: int, api_port: int, pool_mode: str,
         log_level: str) -> None:
    """Start local PostgreSQL shards with replicas and the proxy in front of them.

    Runs in the foreground; writes DATA_DIR/demo.json once ready; Ctrl-C stops everything.
    """
    from pgshard.runtime import run_demo

    _setup_logging(log_level)
    _run(run_demo(Path(data_dir).absolute(), shards, replicas, port, api_port, pool_mode))


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


@main.group()
def shards() -> None:
    """Shard commands."""


@shards.command("init-sql")
def init_sql() -> None:
    """Print the SQL that installs pgshard.hash() on a shard (pipe it to psql)."""
    from pgshard.cluster import hash_sql

    click.echo(hash_sql())


if __name__ == "__main__":
    main()
