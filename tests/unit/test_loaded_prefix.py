"""LOAD 'library': the custom-setting prefix it reserves (sql.settings.loaded_prefix)."""

from __future__ import annotations

import pytest

from pgshard.sql.settings import loaded_prefix


@pytest.mark.parametrize("sql,prefix", [
    ("LOAD 'plpgsql'", "plpgsql"),
    ("load 'plpgsql';", "plpgsql"),
    ("LOAD '$libdir/plpgsql.so'", "plpgsql"),
    ("LOAD '/usr/lib/postgresql/15/lib/auto_explain.so' ;", "auto_explain"),
    ("LOAD E'pg_stat_statements'", "pg_stat_statements"),
    ("LOAD 'Auto_Explain'", "auto_explain"),
    ("LOAD $$plpgsql$$", "plpgsql"),
    ("LOAD plpgsql", None),                       # not a string: a syntax error on the server
    ("LOAD ''", None),
    ("LOAD 'a'; SELECT 1", None),                 # several statements: pinned anyway
    ("SELECT 'plpgsql'", None),
    ("LOAD", None),
])
def test_loaded_prefix(sql, prefix):
    assert loaded_prefix(sql) == prefix
