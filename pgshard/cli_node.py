"""`pgshard node rejoin`: run on a fenced old primary's host, make its data directory a
streaming replica of the shard's new primary (pgshard.cluster.rejoin), then have the control
plane list it as a replica (POST /api/v1/shards/{name}/rejoin with "rejoined": true)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pgshard.cluster import rejoin as steps
from pgshard.cluster.process import ClusterError, find_pg_bindir, run
from pgshard.config import dsn_address
from pgshard.control.rest_client import ApiError, RestClient, path

OPERATION_TIMEOUT = 180.0


def register(main: click.Group, pass_session, json_option, cli_error) -> None:
    """Add the `node` group (commands run on a PostgreSQL server's own host)."""

    @main.group()
    def node() -> None:
        """Commands run on a PostgreSQL server's host (they need its data directory)."""

    @node.command("rejoin")
    @click.option("--data-dir", "data_dir", required=True,
                  type=click.Path(file_okay=False, path_type=Path),
                  help="The old primary's data directory.")
    @click.option("--primary", "primary", required=True, metavar="DSN",
                  help="The shard's new primary: postgresql://USER:PASSWORD@HOST:PORT/DB, "
                  "a role that may replicate and run pg_rewind (superuser, or the pg_rewind "
                  "grants).")
    @click.option("--clone-if-needed", is_flag=True,
                  help="If pg_rewind fails, copy the data directory afresh with "
                  "pg_basebackup (its own *.conf files are kept).")
    @click.option("--address", metavar="HOST:PORT", default=None,
                  help="This server as the catalog names it; default: the fenced server of "
                  "the shard with this server's port.")
    @click.option("--log", "log_path", type=click.Path(dir_okay=False, path_type=Path),
                  default=None, help="Server log for pg_ctl start (default DATA_DIR/server.log).")
    @click.option("--application-name", default=None,
                  help="Name it streams under (default: its cluster_name).")
    @click.option("--wait", "wait_seconds", type=click.FloatRange(min=1), default=120,
                  show_default=True, help="Seconds to wait until it streams.")
    @click.option("--no-register", is_flag=True,
                  help="Do not tell the control plane (it stays fenced in the catalog).")
    @json_option
    @pass_session
    def rejoin(session, data_dir: Path, primary: str, clone_if_needed: bool,
               address: str | None, log_path: Path | None, application_name: str | None,
               wait_seconds: float, no_register: bool, as_json: bool) -> None:
        """Stop this old primary, pg_rewind it to the new primary's timeline, start it as a
        standby streaming from the new primary, then list it as a replica again."""
        data_dir = data_dir.absolute()
        log_path = (log_path or data_dir / "server.log").absolute()
        try:
            up = steps.Upstream.from_dsn(primary, application_name)
            steps.check_data_dir(data_dir)
            bindir = find_pg_bindir()
            steps.check_upstream(bindir, up)
            client = None if no_register else RestClient(
                session.api, session.token(), timeout=max(session.timeout, OPERATION_TIMEOUT),
                ca_file=session.ca_file)
            shard = target = None
            if client is not None:
                shard, target = _locate(client, up, address, _port_of(bindir, data_dir))
            say = (lambda text: None) if as_json else click.echo
            say(f"rejoining {data_dir} as a standby of {up.address}"
                + (f" (shard {shard}, {target})" if shard else ""))
            how = steps.rewind_or_clone(bindir, data_dir, up, clone_if_needed=clone_if_needed)
            say(f"{how}: done; starting the server")
            steps.start(bindir, data_dir, log_path)
            lsn = steps.wait_streaming(bindir, data_dir, up, log_path, timeout=wait_seconds)
            say(f"streaming from {up.address} (replayed up to {lsn})")
        except ClusterError as exc:
            raise cli_error(str(exc)) from None
        reply = {"how": how, "streaming_from": up.address, "replayed": lsn}
        if client is not None:
            try:
                reply |= client.post(path("/api/v1/shards", shard) + "/rejoin",
                                     {"dsn": target, "rejoined": True})
            except ApiError as exc:
                raise cli_error(f"{data_dir} streams from {up.address}, but the control "
                                f"plane did not list it as a replica of {shard}: {exc} (run "
                                "the same command again once the manager answers; pg_rewind "
                                "will find nothing to do)") from None
            reply["how"] = how
            say(f"shard {shard}: {target} is a replica again (catalog version "
                f"{reply.get('catalog_version')})")
        if as_json:
            click.echo(json.dumps(reply, indent=2))


def _port_of(bindir: Path, data_dir: Path) -> int:
    """The port the server in data_dir is configured with (postgres -C reads its config)."""
    out = run([bindir / "postgres", "-C", "port", "-D", data_dir], as_service=True,
              timeout=30, what=f"reading the port of {data_dir}")
    return int(out.strip())


def _locate(client: RestClient, up: steps.Upstream, address: str | None,
            port: int) -> tuple[str, str]:
    """(shard, this server's address among its fenced servers), asked before anything is
    done to the server: the shard is the one whose primary is the upstream."""
    shards = client.get("/api/v1/shards")
    shards = shards.get("shards", shards) if isinstance(shards, dict) else shards
    names = [s["name"] for s in shards if dsn_address(s["primary"]) == up.address]
    if not names:
        raise steps.RejoinError(f"no shard has {up.address} as its primary (the catalog "
                                "names it; pass the new primary as --primary)")
    name = names[0]
    servers = client.get(path("/api/v1/shards", name))["servers"]
    fenced = [s["dsn"] for s in servers if s["role"] == "fenced"]
    if address is not None:
        if address not in fenced:
            raise steps.RejoinError(f"{address} is not a fenced server of shard {name} "
                                    f"(fenced: {', '.join(fenced) or 'none'})")
        return name, address
    same_port = [f for f in fenced if f.rsplit(":", 1)[-1] == str(port)]
    if len(same_port) != 1:
        raise steps.RejoinError(
            f"shard {name} has {len(same_port) or 'no'} fenced server(s) on port {port} "
            f"(fenced: {', '.join(fenced) or 'none'}); pass --address HOST:PORT")
    return name, same_port[0]
