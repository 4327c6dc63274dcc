"""Which statements leave session state the proxy cannot replay (sql.sticky), as a table."""

from __future__ import annotations

import pytest

from pgshard.sql import classify as r

PINS = [
    ("SELECT set_config('search_path', '', false), 1", "set_config()"),
    ("SELECT pg_catalog.set_config('a', current_user, false)", "set_config()"),
    ("SELECT set_config($1, 'x', false)", "set_config()"),
    ("SELECT set_config('pgshard.shard', 'shard0', false)", "set_config()"),
    ('SELECT "set_config"(\'a\', \'b\', false)', "set_config()"),
    ("select pg_advisory_lock(1)", "pg_advisory_lock()"),
    ("SELECT pg_try_advisory_lock_shared(1, 2)", "pg_try_advisory_lock_shared()"),
    ("CREATE TEMP TABLE t (x int)", "a temporary table"),
    ("create temporary table t (x int)", "a temporary table"),
    ("CREATE GLOBAL TEMPORARY TABLE t (x int)", "a temporary table"),
    ("CREATE OR REPLACE TEMP VIEW v AS SELECT 1", "a temporary table"),
    ("SELECT * INTO TEMP t FROM x", "a temporary table"),
    ("INSERT INTO pg_temp.t VALUES (1)", "a temporary table"),
    ("PREPARE p AS SELECT 1", "SQL PREPARE"),
    ("LISTEN ch", "LISTEN"),
    ("LOAD 'auto_explain'", "LOAD"),
    ("DO $$ BEGIN END $$", "a DO block"),
    ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", "a WITH HOLD cursor"),
    ("SET ROLE r; SELECT 1", "SET in a string of several statements"),
    ("SELECT 1; RESET ALL", "RESET in a string of several statements"),
    ("SET SESSION AUTHORIZATION r", "SET SESSION AUTHORIZATION (pgshard cannot replay it on "
                                    "another server)"),
    ("SET XML OPTION DOCUMENT", "SET XML OPTION (pgshard cannot replay it on another server)"),
    ("SELECT dblink_connect('x')", "dblink_connect()"),
]

FREE = [
    "SELECT 1",
    "SELECT temperature FROM weather",
    "SELECT 'set_config(' AS s",
    "SELECT 1 /* pg_advisory_lock(1) */",
    "SELECT pg_advisory_xact_lock(1)",
    "PREPARE TRANSACTION 'gid'",
    "DECLARE c CURSOR FOR SELECT 1",
    "SET CONSTRAINTS ALL DEFERRED",
    "SET search_path TO public",
    "SET ROLE r",
    "RESET ALL",
    "UPDATE t SET a = 1 WHERE id = 2",
    "INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING",
    "CREATE TABLE template_x (temp int)",
]


@pytest.mark.parametrize("sql,why", PINS)
def test_pins(sql, why):
    assert r.plan(sql).sticky == why


@pytest.mark.parametrize("sql", FREE)
def test_does_not_pin(sql):
    assert r.plan(sql).sticky is None


# set_config(…, false) with plain literals is tracked like a SET (pg_dump's first statement)
CONFIG = [
    ("SELECT set_config('search_path', '', false)", "search_path", "''"),
    ("SELECT pg_catalog.set_config('search_path', '', false);", "search_path", "''"),
    ("select Set_Config('Work_Mem', '4MB', FALSE)", "work_mem", "'4MB'"),
    ("SELECT set_config('myapp.x', 'it''s', false)", "myapp.x", "'it''s'"),
    ("SELECT set_config('a.b', $$v$$, false)", "a.b", "'v'"),
]


@pytest.mark.parametrize("sql,name,value", CONFIG)
def test_set_config_is_tracked(sql, name, value):
    p = r.plan(sql)
    assert (p.config, p.sticky, p.name, p.value) == (True, None, name, value)
    assert p.value.replay(name) == f"SELECT pg_catalog.set_config('{name}', {value}, false)"


def test_set_config_local_is_neither_tracked_nor_pinned():
    p = r.plan("SELECT set_config('work_mem', '4MB', true)")
    assert not p.config and p.sticky == "set_config()"   # pins, as before: errs on the safe side


@pytest.mark.parametrize("sql,name", [("PREPARE p AS SELECT 1", "p"),
                                      ('PREPARE "Mixed" AS SELECT 1', "Mixed"),
                                      ("PREPARE Up (int) AS SELECT $1", "up"),
                                      ("PREPARE TRANSACTION 'g'", None)])
def test_prepare_name(sql, name):
    assert r.plan(sql).name == name
