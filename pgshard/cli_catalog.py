"""`pgshard tables|users|routers|audit`: thin commands over the catalog's REST API
(/api/v1/tables, /users, /routers, /audit)."""

from __future__ import annotations

import click

from pgshard.cli_output import answer, echo_table, items
from pgshard.control.rest_client import path

ROLES = ("admin", "operator", "viewer", "app")


def _tables_table(reply) -> None:
    rows = items(reply, "tables")
    if isinstance(rows, dict):
        rows = [{"name": t, "shard_key": k} for t, k in rows.items()]
    echo_table(rows, ["name", "shard_key"], empty="no sharded tables")


def _routers_table(reply) -> None:
    if isinstance(reply, dict) and "catalog_version" in reply:
        click.echo(f"catalog version {reply['catalog_version']}, "
                   f"active manager {reply.get('leader') or 'none'}")
    echo_table(items(reply, "routers"),
               ["id", "role", "catalog_version", "up_to_date", "leader", "proxy", "api",
                "updated_at"], empty="no routers registered")


def register(main: click.Group, pass_session, json_option, read_password) -> None:
    """Add the tables and users groups and the routers and audit commands to main."""

    @main.group()
    def tables() -> None:
        """Sharded tables and their shard key columns."""

    @tables.command("list")
    @json_option
    @pass_session
    def tables_list(session, as_json: bool) -> None:
        """List the sharded tables."""
        answer(session.client().get("/api/v1/tables"), as_json, _tables_table)

    @tables.command("add")
    @click.argument("name")
    @click.option("--shard-key", required=True, metavar="COLUMN", help="The shard key column.")
    @json_option
    @pass_session
    def tables_add(session, name: str, shard_key: str, as_json: bool) -> None:
        """Declare a table sharded by a column (or change its shard key)."""
        reply = session.client().put(path("/api/v1/tables", name), {"shard_key": shard_key})
        answer(reply, as_json, f"table {name} is sharded by {shard_key}")

    @tables.command("remove")
    @click.argument("name")
    @json_option
    @pass_session
    def tables_remove(session, name: str, as_json: bool) -> None:
        """Stop treating a table as sharded (its rows are not touched)."""
        reply = session.client().delete(path("/api/v1/tables", name))
        answer(reply, as_json, f"table {name} is no longer sharded")

    @main.group()
    def users() -> None:
        """Users of the REST API and their roles (admin only)."""

    @users.command("list")
    @json_option
    @pass_session
    def users_list(session, as_json: bool) -> None:
        """List the users."""
        answer(session.client().get("/api/v1/users"), as_json, lambda reply: echo_table(
            items(reply, "users"), ["name", "role", "created_at"], empty="no users"))

    @users.command("add")
    @click.argument("name")
    @click.option("--role", required=True, type=click.Choice(ROLES),
                  help="admin: everything; operator: shards and jobs; viewer: read-only; "
                       "app: /v1/execute only.")
    @click.option("--password-stdin", is_flag=True,
                  help="Read the password from the first line of stdin instead of prompting.")
    @json_option
    @pass_session
    def users_add(session, name: str, role: str, password_stdin: bool, as_json: bool) -> None:
        """Create a user; the password is prompted for (twice) unless --password-stdin."""
        password = read_password(password_stdin, f"Password for {name}", confirm=True)
        reply = session.client().post("/api/v1/users",
                                      {"name": name, "password": password, "role": role})
        answer(reply, as_json, f"added user {name} ({role})")

    @users.command("remove")
    @click.argument("name")
    @json_option
    @pass_session
    def users_remove(session, name: str, as_json: bool) -> None:
        """Delete a user."""
        reply = session.client().delete(path("/api/v1/users", name))
        answer(reply, as_json, f"removed user {name}")

    @main.command()
    @json_option
    @pass_session
    def routers(session, as_json: bool) -> None:
        """List the live routers and the catalog version each one serves."""
        answer(session.client().get("/api/v1/routers"), as_json, _routers_table)

    @main.command()
    @click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
    @click.option("--actor", help="Only calls made by this user.")
    @click.option("--action", help="Only this action, e.g. shard.add, user.remove, auth.login.")
    @json_option
    @pass_session
    def audit(session, limit: int, actor: str | None, action: str | None,
              as_json: bool) -> None:
        """Show the audit trail of mutating API calls, newest first."""
        reply = session.client().get("/api/v1/audit",
                                     {"limit": limit, "actor": actor, "action": action})
        answer(reply, as_json, lambda r: echo_table(
            items(r, "records"),
            ["time", "actor", "role", "action", "target", "result", "status", "detail"],
            empty="no audit records"))
