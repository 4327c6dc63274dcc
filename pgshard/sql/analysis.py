"""SQL-aware routing facts about one statement text: its kind, shard keys and fan-out plan.

`analyze(sql, tables)` parses with pglast (libpg_query) and never raises. How the proxy
reads the result:

- `keys` not None: every row of a sharded table that the statement reads or writes has its
  key among these values; send it to the shards that own them.
- `keys` None on a read: run it on every shard and combine the results with `merge`
  (sending `shard_sql` instead of the original text when it is set).
- `refuse` set: running the statement on more than one shard would give a wrong answer (or
  lock across shards); it is only a problem when the keys do not all map to one shard.
- unsharded tables are assumed to be present on every shard, so joining them is harmless.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pglast import ast, parse_sql
from pglast.parser import ParseError

from pgshard.sql.confine import Confinement
from pgshard.sql.fanout_plan import MergeSpec, plan_fanout
from pgshard.sql.keys import KeyRef, normalize_table
from pgshard.sql.textmemo import text_memo

__all__ = ["Analysis", "KeyRef", "MergeSpec", "analyze"]

SELECT, INSERT, UPDATE, DELETE = "select", "insert", "update", "delete"
DDL, UTILITY, OTHER, UNPARSED = "ddl", "utility", "other", "unparsed"
LOCK, COPY_OUT, EXPLAIN = "lock", "copy_out", "explain"   # run on every shard when keyless

_UTILITY = frozenset({
    "TransactionStmt", "VariableSetStmt", "VariableShowStmt", "DiscardStmt", "ListenStmt",
    "UnlistenStmt", "NotifyStmt", "DeallocateStmt", "PrepareStmt", "CheckPointStmt",
    "LoadStmt", "ConstraintsSetStmt", "AlterSystemStmt", "FetchStmt", "ClosePortalStmt",
})
# Statements that change schema or maintain tables: they run on every shard.
_DDL = frozenset({
    "TruncateStmt", "CommentStmt", "GrantStmt", "GrantRoleStmt", "IndexStmt", "ViewStmt",
    "RuleStmt", "RenameStmt", "CompositeTypeStmt", "SecLabelStmt", "ReindexStmt",
    "VacuumStmt", "ClusterStmt", "RefreshMatViewStmt", "ImportForeignSchemaStmt",
    "ReassignOwnedStmt", "DropOwnedStmt", "DropdbStmt", "CreatedbStmt",
})


@dataclass(frozen=True, slots=True)
class Analysis:
    """What routing needs to know about one query string (see the module docstring)."""

    kind: str                                   # select|insert|update|delete|ddl|utility|other|unparsed
    tables: tuple[str, ...] = ()                # sharded tables referenced (catalog names)
    keys: tuple[KeyRef, ...] | None = None
    insert_rows: tuple[tuple[KeyRef, int], ...] | None = None   # multi-row VALUES: (key, row)
    refuse: str | None = None
    updates_key: bool = False                   # SET <key column> = … (UPDATE / ON CONFLICT)
    merge: MergeSpec | None = None
    shard_sql: str | None = None
    locking: bool = False                       # SELECT … FOR UPDATE/SHARE on a sharded table
    option: str | None = None                   # COPY_OUT: "header" when it has one;
    #                                             EXPLAIN: its format (text, json, xml, yaml)


def analyze(sql: str, tables: Mapping[str, str] | tuple[tuple[str, str], ...],
            positions: tuple[tuple[str, int], ...] = ()) -> Analysis:
    """Analyse a query string against the sharded tables {table: key column}; cached.
    positions: (table, 0-based ordinal of its key column), for INSERTs without a column
    list (the proxy learns them from the shards)."""
    key = tables if isinstance(tables, tuple) else frozenset(tables.items())
    return _analyze(sql, key, positions)


# Analyses are cached by text, bounded by bytes; texts above 64 KiB are analysed each time.
CACHE_BYTES = 32 * 1024 * 1024
MAX_CACHED_TEXT = 64 * 1024


def _weight(a: Analysis) -> int:
    """The bytes an Analysis holds beyond the text it was made from: its rewritten SQL."""
    return len(a.shard_sql or "") + 64 * len(a.tables) + 64 * len(a.keys or ())


@text_memo(CACHE_BYTES, MAX_CACHED_TEXT, _weight)
def _analyze(sql: str, tables_key, positions=()) -> Analysis:
    tables = {normalize_table(t): c for t, c in tables_key}
    pos = {normalize_table(t): i for t, i in positions}
    try:
        stmts = parse_sql(sql)
    except ParseError:
        return Analysis(UNPARSED)
    except RecursionError:
        return Analysis(UNPARSED, refuse="statement nested too deeply to analyse")
    if not stmts:
        return Analysis(UTILITY)
    try:
        results = [_statement(raw.stmt, tables, pos) for raw in stmts]
    except RecursionError:
        return Analysis(UNPARSED, refuse="statement nested too deeply to analyse")
    except Exception as exc:   # a bug here must not break the session: treat as unparsed
        return Analysis(UNPARSED, refuse=f"statement analysis failed: {exc!r}")
    return results[0] if len(results) == 1 else _combine(results)


def _statement(node, tables: dict[str, str], positions: dict[str, int] | None = None) -> Analysis:
    name = type(node).__name__
    conf = Confinement(tables, positions)
    if isinstance(node, ast.SelectStmt) and node.intoClause is None:
        conf.select(node, None)
        kind = conf.writes[0] if conf.writes else SELECT
    elif isinstance(node, ast.InsertStmt | ast.UpdateStmt | ast.DeleteStmt):
        conf.statement(node)
        kind = conf.writes[0]
    elif isinstance(node, ast.LockStmt):
        conf.statement(node)
        return Analysis(LOCK, tuple(dict.fromkeys(conf.rte_tables)))
    elif isinstance(node, ast.CopyStmt) and not node.is_from and node.query is None \
            and node.filename is None and not node.is_program:
        conf.statement(node)
        return _copy_out(node, tuple(dict.fromkeys(conf.rte_tables)))
    elif isinstance(node, ast.ExplainStmt):
        return _explain(node, _statement(node.query, tables, positions))
    elif name in _UTILITY:
        conf.statement(node)
        return Analysis(UTILITY, tuple(dict.fromkeys(conf.rte_tables)))
    elif name in _DDL or (name.startswith(("Create", "Alter", "Drop", "Define"))) or \
            isinstance(node, ast.SelectStmt):
        conf.statement(node)
        return Analysis(DDL, tuple(dict.fromkeys(conf.rte_tables)))
    else:
        conf.statement(node)
        kind = OTHER
    names = tuple(dict.fromkeys(conf.rte_tables))
    if not names:
        return Analysis(kind)
    keys = conf.keys()
    refuse = merge = shard_sql = None
    if kind == SELECT:
        refuse = conf.refusal()
        if refuse is None:
            merge, shard_sql, refuse = plan_fanout(node)
    elif kind == OTHER and keys is None:
        refuse = f"{name.removesuffix('Stmt').upper()} cannot run across shards"
    return Analysis(kind, names, keys, conf.insert_rows, refuse, conf.updates_key, merge,
                    shard_sql, conf.locking)


def _options(node) -> dict[str, str | bool]:
    """A statement's DefElem options: name → value (True for a bare option)."""
    out: dict[str, str | bool] = {}
    for o in node.options or ():
        arg = o.arg
        v = getattr(arg, "sval", None) if arg is not None else None
        if v is None and arg is not None:
            v = str(getattr(arg, "ival", getattr(arg, "boolval", "")))
        out[o.defname] = True if arg is None else str(v).lower()
    return out


def _true(v) -> bool:
    return v is True or v in ("true", "on", "1", "yes")


def _copy_out(node, names: tuple[str, ...]) -> Analysis:
    """COPY table TO STDOUT: on every shard, its rows concatenated (text and CSV)."""
    opts = _options(node)
    refuse = None
    if opts.get("format") == "binary":
        refuse = ("binary COPY TO STDOUT cannot be combined across shards (every shard's "
                  "output has its own header and trailer); use text or CSV, or a shard key")
    header = _true(opts.get("header", False))
    return Analysis(COPY_OUT, names, refuse=refuse, option="header" if header else None)


def _explain(node, inner: Analysis) -> Analysis:
    """EXPLAIN: where its statement would go. Keyless, every shard shows its own plan; an
    EXPLAIN ANALYZE (which runs the statement) of a keyless write is refused."""
    opts = _options(node)
    refuse = None
    if _true(opts.get("analyze", False)) and inner.kind not in (SELECT, UTILITY) \
            and inner.keys is None and inner.tables:
        refuse = ("EXPLAIN ANALYZE runs the statement, and this write has no shard key: it "
                  "would run on every shard outside a transaction")
    fmt = opts.get("format", "text")
    return Analysis(EXPLAIN, inner.tables, inner.keys, refuse=refuse, locking=inner.locking,
                    option=fmt if isinstance(fmt, str) else "text")


def _combine(results: list[Analysis]) -> Analysis:
    """One Analysis for a query string holding several statements."""
    kinds = {r.kind for r in results if r.kind != UTILITY}
    kind = kinds.pop() if len(kinds) == 1 else UTILITY if not kinds else OTHER
    sharded = [r for r in results if r.tables]
    names = tuple(dict.fromkeys(t for r in sharded for t in r.tables))
    keys = None
    if sharded and all(r.keys is not None for r in sharded):
        sets = {frozenset(r.keys) for r in sharded}
        if len(sets) == 1:
            keys = sharded[0].keys
    refuse = None
    if sharded:
        refuse = next((r.refuse for r in sharded if r.refuse),
                      "a query string of several statements cannot be merged across shards")
    return Analysis(kind, names, keys, None, refuse, any(r.updates_key for r in results),
                    None, None, any(r.locking for r in results))
