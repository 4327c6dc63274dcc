"""The pgshard schema every shard primary carries: the SQL twin of the token hash."""

from __future__ import annotations

from importlib import resources

HASH_SQL_RESOURCE = ("ring", "sql", "pgshard_hash.sql")


def hash_sql() -> str:
    """The SQL script that creates schema pgshard and pgshard.hash(text|bigint|uuid)."""
    return resources.files("pgshard").joinpath(*HASH_SQL_RESOURCE).read_text(encoding="utf-8")


def bootstrap_script(*, user: str, password: str, database: str) -> str:
    """psql script run as the bootstrap superuser on a fresh primary: role, database, schema."""
    role, db, secret = quote_ident(user), quote_ident(database), quote_literal(password)
    lines = [
        "SET password_encryption = 'scram-sha-256';",
        f"SELECT NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {quote_literal(user)})"
        " AS role_missing \\gset",
        f"\\if :role_missing\n  CREATE ROLE {role};\n\\endif",
        f"ALTER ROLE {role} LOGIN SUPERUSER REPLICATION PASSWORD {secret};",
        # The schema "pgshard" holds pgshard.hash(); for a role also named pgshard the
        # default search_path ("$user", public) would put every new table there.
        f"ALTER ROLE {role} SET search_path = public;",
    ]
    if database != "postgres":
        lines.append(f"CREATE DATABASE {db} OWNER {role};")
    lines.append(f"\\connect {quote_psql_arg(database)}")
    lines.append(hash_sql())
    return "\n".join(lines) + "\n"


def database_script(*, user: str, database: str) -> str:
    """psql script run as the bootstrap superuser on a running primary: one more database
    owned by user, carrying the pgshard schema (idempotent: a present one is kept)."""
    db = quote_ident(database)
    return "\n".join([
        f"SELECT NOT EXISTS (SELECT FROM pg_database WHERE datname = {quote_literal(database)})"
        " AS db_missing \\gset",
        f"\\if :db_missing\n  CREATE DATABASE {db} OWNER {quote_ident(user)};\n\\endif",
        f"\\connect {quote_psql_arg(database)}",
        hash_sql(),
    ]) + "\n"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def quote_psql_arg(value: str) -> str:
    """Quote a psql meta-command argument (\\connect dbname)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
