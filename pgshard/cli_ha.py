"""`pgshard shards failover|switchover|rejoin`: thin commands over the high-availability REST
API (POST /api/v1/shards/{name}/failover, /switchover, /rejoin)."""

from __future__ import annotations

import json

import click

from pgshard.control.rest_client import RestClient, path

# A promotion, a switchover's drain and catch-up, or a rejoin's clone take longer than a
# catalog read: the CLI waits this long at least, whatever --timeout says.
OPERATION_TIMEOUT = 180.0


def register(shards: click.Group, pass_session, json_option) -> None:
    """Add failover, switchover and rejoin to the `shards` group."""

    def client(session) -> RestClient:
        return RestClient(session.api, session.token(),
                          timeout=max(session.timeout, OPERATION_TIMEOUT),
                          ca_file=session.ca_file)

    to_option = click.option("--to", "to", metavar="REPLICA", default=None,
                             help="The replica to promote (host:port or DSN); default: the "
                             "healthy one with the highest WAL position.")

    @shards.command("failover")
    @click.argument("name")
    @to_option
    @json_option
    @pass_session
    def failover(session, name: str, to: str | None, as_json: bool) -> None:
        """Promote a replica of shard NAME now, whatever its primary's state (under
        synchronous replication only a synchronous standby qualifies)."""
        reply = client(session).post(path("/api/v1/shards", name) + "/failover",
                                     {"to": to} if to else {})
        _report(reply, as_json, f"shard {name}: failed over to {reply.get('primary')}")

    @shards.command("switchover")
    @click.argument("name")
    @to_option
    @json_option
    @pass_session
    def switchover(session, name: str, to: str | None, as_json: bool) -> None:
        """Planned primary change of shard NAME: writes pause briefly, none fails."""
        reply = client(session).post(path("/api/v1/shards", name) + "/switchover",
                                     {"to": to} if to else {})
        _report(reply, as_json, f"shard {name}: switched over to {reply.get('primary')} "
                f"(statements held {reply.get('pause_seconds')}s)")

    @shards.command("rejoin")
    @click.argument("name")
    @click.argument("old_primary")
    @json_option
    @pass_session
    def rejoin(session, name: str, old_primary: str, as_json: bool) -> None:
        """Make OLD_PRIMARY (host:port or DSN of a fenced old primary of shard NAME) a
        streaming replica of the shard's primary again."""
        reply = client(session).post(path("/api/v1/shards", name) + "/rejoin",
                                     {"dsn": old_primary})
        _report(reply, as_json, f"shard {name}: {reply.get('rejoined')} is a replica again")


def _report(reply: dict, as_json: bool, text: str) -> None:
    if as_json:
        click.echo(json.dumps(reply, indent=2))
    else:
        click.echo(text)
