"""The errors a client session answers for statements it refuses or cannot run now, and the
statement that makes a server raise one of them inside its transaction."""

from __future__ import annotations

from pgshard.protocol.errors import (
    ActiveSqlTransaction,
    FeatureNotSupported,
    InFailedSqlTransaction,
    PgError,
)
from pgshard.proxy.units import quote_literal
from pgshard.sql import classify as r


def raise_sql(exc: PgError) -> str:
    """A statement that makes a server raise exc, so its transaction state follows."""
    parts = [f"ERRCODE = {quote_literal(exc.sqlstate)}", f"MESSAGE = {quote_literal(exc.message)}"]
    if exc.hint:
        parts.append(f"HINT = {quote_literal(exc.hint)}")
    if exc.detail:
        parts.append(f"DETAIL = {quote_literal(exc.detail)}")
    return f"DO $pgshard$ BEGIN RAISE EXCEPTION USING {', '.join(parts)}; END $pgshard$"


def already_in_txn() -> PgError:
    return ActiveSqlTransaction("there is already a transaction in progress")


def aborted() -> PgError:
    return InFailedSqlTransaction("current transaction is aborted, commands ignored until end "
                                  "of transaction block")


def sticky_fanout(plan: r.Plan) -> PgError:
    return FeatureNotSupported(
        f"{plan.sticky} leaves session state on its server, and this statement runs on "
        "several shards",
        hint="pin it to one shard with /* shard: <name> */ or a /* shard_key: … */ hint")


def listen_error() -> PgError:
    return FeatureNotSupported(
        "LISTEN on a cluster of several shards needs the shard its NOTIFYs run on",
        hint="SET pgshard.shard = '<name>' first (here and where NOTIFY runs), or connect "
             "as a user with pool_mode = \"session\"")


def pipeline_shared() -> PgError:
    return FeatureNotSupported(
        "a statement that needs several shards cannot share a pipeline with other "
        "statements", hint="send a Sync before and after it")
