"""pgshard's own objects on the shards (the `pgshard` schema, `pgshard_*` event triggers),
recognised in DDL and COPY FROM, pure: a dump restored through the proxy skips them (the
cluster has its own, some with per-shard contents), and dropping them is refused.

pg_dump through the proxy dumps them with the rest of the database (they are ordinary
objects on every shard); on restore, each statement whose *object* is one of them is
answered with a NOTICE and its command tag instead of being run. A user's own object that
merely uses one (`DEFAULT pgshard.hash(…)`) is not affected.
"""

from __future__ import annotations

from dataclasses import dataclass

from pglast import ast, parse_sql
from pglast.enums import ObjectType
from pglast.parser import ParseError

from pgshard.sql.textmemo import text_memo

SCHEMA = "pgshard"
TRIGGER_PREFIX = "pgshard_"


@dataclass(frozen=True, slots=True)
class OwnObject:
    """A statement on one of pgshard's own objects: its command tag, what it names, and
    whether it is a drop (refused) rather than a create/alter/grant/comment/copy (skipped)."""

    tag: str
    what: str
    drop: bool = False
    copy_in: bool = False


def _names_own(names) -> bool:
    """A qualified name (a tuple of String nodes) in the pgshard schema."""
    return bool(names) and len(names) > 1 and getattr(names[0], "sval", None) == SCHEMA


def _rel_own(rv) -> bool:
    return isinstance(rv, ast.RangeVar) and rv.schemaname == SCHEMA


def _object_own(obj, objtype) -> str | None:
    """What an AlterOwner/Comment/Grant/Drop object names of pgshard's, or None."""
    if isinstance(obj, ast.String):
        v = obj.sval
        if objtype == ObjectType.OBJECT_SCHEMA and v == SCHEMA:
            return f"schema {SCHEMA}"
        if objtype == ObjectType.OBJECT_EVENT_TRIGGER and v.startswith(TRIGGER_PREFIX):
            return f"event trigger {v}"
        return None
    if isinstance(obj, ast.ObjectWithArgs):
        return ".".join(n.sval for n in obj.objname) if _names_own(obj.objname) else None
    if isinstance(obj, tuple):
        return ".".join(n.sval for n in obj) if _names_own(obj) else None
    if _rel_own(obj):
        return f"{SCHEMA}.{obj.relname}"
    return None


def _tag(node, verb: str) -> str:
    kind = {ObjectType.OBJECT_SCHEMA: "SCHEMA", ObjectType.OBJECT_FUNCTION: "FUNCTION",
            ObjectType.OBJECT_TABLE: "TABLE", ObjectType.OBJECT_SEQUENCE: "SEQUENCE",
            ObjectType.OBJECT_EVENT_TRIGGER: "EVENT TRIGGER",
            ObjectType.OBJECT_INDEX: "INDEX", ObjectType.OBJECT_VIEW: "VIEW",
            ObjectType.OBJECT_TYPE: "TYPE"}
    objtype = getattr(node, "objectType", None) or getattr(node, "objtype", None) \
        or getattr(node, "removeType", None)
    return f"{verb} {kind.get(objtype, 'TABLE')}"


@text_memo(1024 * 1024, 64 * 1024)
def own_object(sql: str) -> OwnObject | None:
    """The OwnObject a single statement sql acts on, or None (also for unparsable SQL)."""
    try:
        stmts = parse_sql(sql)
    except ParseError:
        return None
    if len(stmts) != 1:
        return None
    node = stmts[0].stmt
    what = None
    if isinstance(node, ast.CreateSchemaStmt):
        if node.schemaname == SCHEMA:
            return OwnObject("CREATE SCHEMA", f"schema {SCHEMA}")
    elif isinstance(node, ast.CreateFunctionStmt):
        if _names_own(node.funcname):
            return OwnObject("CREATE PROCEDURE" if node.is_procedure else "CREATE FUNCTION",
                             ".".join(n.sval for n in node.funcname))
    elif isinstance(node, ast.CreateStmt | ast.CreateSeqStmt | ast.ViewStmt):
        rv = getattr(node, "relation", None) or getattr(node, "sequence", None) \
            or getattr(node, "view", None)
        if _rel_own(rv):
            tag = {ast.CreateStmt: "CREATE TABLE", ast.CreateSeqStmt: "CREATE SEQUENCE",
                   ast.ViewStmt: "CREATE VIEW"}[type(node)]
            return OwnObject(tag, f"{SCHEMA}.{rv.relname}")
    elif isinstance(node, ast.AlterTableStmt | ast.IndexStmt | ast.AlterSeqStmt):
        rv = getattr(node, "relation", None) or getattr(node, "sequence", None)
        if _rel_own(rv):
            tag = {ast.AlterTableStmt: "ALTER TABLE", ast.IndexStmt: "CREATE INDEX",
                   ast.AlterSeqStmt: "ALTER SEQUENCE"}[type(node)]
            return OwnObject(tag, f"{SCHEMA}.{rv.relname}")
    elif isinstance(node, ast.AlterOwnerStmt):
        what = _object_own(node.object, node.objectType)
        if what:
            return OwnObject(_tag(node, "ALTER"), what)
    elif isinstance(node, ast.AlterFunctionStmt):
        what = _object_own(node.func, None)
        if what:
            return OwnObject("ALTER FUNCTION", what)
    elif isinstance(node, ast.CommentStmt):
        what = _object_own(node.object, node.objtype)
        if what:
            return OwnObject("COMMENT", what)
    elif isinstance(node, ast.GrantStmt):
        whats = [_object_own(o, node.objtype) for o in node.objects or ()]
        if whats and all(whats):
            return OwnObject("GRANT" if node.is_grant else "REVOKE", ", ".join(whats))
    elif isinstance(node, ast.CreateEventTrigStmt | ast.AlterEventTrigStmt):
        if node.trigname.startswith(TRIGGER_PREFIX):
            tag = "CREATE EVENT TRIGGER" if isinstance(node, ast.CreateEventTrigStmt) \
                else "ALTER EVENT TRIGGER"
            return OwnObject(tag, f"event trigger {node.trigname}")
    elif isinstance(node, ast.DropStmt):
        whats = [_object_own(o, node.removeType) for o in node.objects or ()]
        if any(whats):
            return OwnObject(_tag(node, "DROP"), ", ".join(w for w in whats if w), drop=True)
    elif isinstance(node, ast.CopyStmt):
        if node.is_from and node.filename is None and not node.is_program \
                and _rel_own(node.relation):
            return OwnObject("COPY", f"{SCHEMA}.{node.relation.relname}", copy_in=True)
    return None


def may_name_own(sql: str) -> bool:
    """A cheap test before parsing: only statements mentioning pgshard can name its objects."""
    return SCHEMA in sql or "PGSHARD" in sql or "Pgshard" in sql
