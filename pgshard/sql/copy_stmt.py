"""`COPY table [(columns)] FROM STDIN [WITH (...)]` read with pglast, pure: the table, the
column list, the data format (pgshard.protocol.copyrows.CopyFormat) and where the shard key
column sits in each row."""

from __future__ import annotations

from dataclasses import dataclass

from pglast import parse_sql
from pglast.parser import ParseError

from pgshard.protocol.copyrows import CopyFormat, unsupported_option
from pgshard.protocol.errors import (
    FeatureNotSupported,
    InvalidParameterValue,
    SyntaxError_,
)
from pgshard.sql.keys import normalize_table

# What a COPY without a column list reads, in order: the table's columns that are neither
# dropped nor generated, each with its type OID (a domain's base type). Run on a shard.
COPY_COLUMNS_SQL = (
    "SELECT a.attname, COALESCE(NULLIF(t.typbasetype, 0), a.atttypid)::int4 AS oid "
    "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
    "WHERE a.attrelid = to_regclass({table}) AND a.attnum > 0 AND NOT a.attisdropped "
    "AND a.attgenerated = '' ORDER BY a.attnum")

_TRUE = frozenset({"true", "on", "1", "yes"})
_FALSE = frozenset({"false", "off", "0", "no"})
# Options that change nothing about how rows are read or where they go.
_PASSIVE = frozenset({"freeze"})


@dataclass(frozen=True, slots=True)
class CopyIn:
    """One COPY … FROM STDIN statement."""

    table: str                      # as the catalog keys it (normalize_table)
    columns: tuple[str, ...] | None  # the column list, None when the statement has none
    format: CopyFormat
    force_null: tuple[str, ...] = ()
    force_not_null: tuple[str, ...] = ()

    def key_index(self, key_column: str, table_columns: list[str] | None = None) -> int:
        """The key field's position in each row: from the column list, else from
        table_columns (the table's columns in order, without dropped or generated ones)."""
        cols = self.columns if self.columns is not None else table_columns
        if cols is None:
            raise ValueError("the table's column order is needed: COPY names no columns")
        try:
            return list(cols).index(key_column)
        except ValueError:
            raise FeatureNotSupported(
                f"COPY into {self.table} must include its shard key column {key_column}",
                hint="list the key column in COPY's column list") from None

    def splitter_format(self, key_column: str) -> CopyFormat:
        """The format with FORCE_NULL / FORCE_NOT_NULL resolved for the key column."""
        from dataclasses import replace

        return replace(self.format, force_null=key_column in self.force_null,
                       force_not_null=key_column in self.force_not_null)


def parse_copy_in(sql: str) -> CopyIn:
    """Read a COPY FROM STDIN statement; anything else is an error saying why."""
    try:
        stmts = parse_sql(sql)
    except ParseError as exc:
        raise SyntaxError_(str(exc)) from None
    if len(stmts) != 1 or type(stmts[0].stmt).__name__ != "CopyStmt":
        raise ValueError("not a single COPY statement")
    st = stmts[0].stmt
    if not st.is_from:
        raise ValueError("COPY TO is not COPY FROM")
    if st.relation is None:
        raise FeatureNotSupported("COPY FROM needs a table")
    if st.filename is not None or st.is_program:
        raise FeatureNotSupported("COPY FROM a server file or program cannot run through "
                                  "pgshard (each shard would read its own file)",
                                  hint="use COPY … FROM STDIN (psql: \\copy)")
    rv = st.relation
    table = normalize_table(f"{rv.schemaname}.{rv.relname}" if rv.schemaname else rv.relname)
    columns = tuple(a.sval for a in st.attlist) if st.attlist else None
    opts: dict[str, object] = {}
    for o in st.options or ():
        opts[o.defname] = o.arg
    kind = _string(opts.pop("format", None), "format", "text").lower()
    if kind not in ("text", "csv", "binary"):
        raise InvalidParameterValue(f'COPY format "{kind}" not recognized')
    force_null = _names(opts.pop("force_null", None))
    force_not_null = _names(opts.pop("force_not_null", None))
    header = _header(opts.pop("header", False))
    encoding = opts.pop("encoding", None)
    if encoding is not None and _string(encoding, "encoding", "").lower().replace("-", "") \
            not in ("utf8", "unicode"):
        raise unsupported_option("with an ENCODING other than UTF8")
    fields = {}
    for name in ("delimiter", "null", "quote", "escape"):
        if name in opts:
            fields[name] = _string(opts.pop(name), name, "").encode()
    unknown = set(opts) - _PASSIVE
    if unknown:
        raise unsupported_option(f"option {', '.join(sorted(unknown)).upper()}")
    if kind == "binary":
        if fields or header:
            raise SyntaxError_("cannot specify DELIMITER, NULL, QUOTE, ESCAPE or HEADER in BINARY "
                               "mode")
        return CopyIn(table, columns, CopyFormat.binary())
    for name in ("delimiter", "quote", "escape"):
        if name in fields and len(fields[name]) != 1:
            raise unsupported_option(f"with a {name.upper()} that is not one single-byte "
                                     "character")
    if kind == "text" and ("quote" in fields or "escape" in fields):
        raise FeatureNotSupported("COPY quote and escape are available only in CSV mode")
    fmt = (CopyFormat.csv(header=header, **fields) if kind == "csv"
           else CopyFormat.text(header=header, **fields))
    return CopyIn(table, columns, fmt, force_null, force_not_null)


def _string(arg, name: str, default: str) -> str:
    if arg is None:
        return default
    value = getattr(arg, "sval", None)
    if value is None:
        raise SyntaxError_(f"{name} requires a string value")
    return value


def _header(arg) -> bool:
    if arg is None:                     # HEADER alone
        return True
    if isinstance(arg, bool):
        return arg
    if hasattr(arg, "boolval"):
        return bool(arg.boolval)
    if hasattr(arg, "ival"):
        if arg.ival in (0, 1):
            return bool(arg.ival)
    value = str(getattr(arg, "sval", "")).lower()
    if value in _TRUE or value == "match":
        return True
    if value in _FALSE:
        return False
    raise InvalidParameterValue("header requires a Boolean value or \"match\"")


def _names(arg) -> tuple[str, ...]:
    if arg is None:
        return ()
    if not isinstance(arg, tuple | list):
        raise unsupported_option("FORCE_NULL / FORCE_NOT_NULL with *")
    return tuple(a.sval for a in arg)


def copy_columns_sql(table: str) -> str:
    """COPY_COLUMNS_SQL for one table (its name as the COPY statement wrote it)."""
    return COPY_COLUMNS_SQL.format(table="'" + table.replace("'", "''") + "'")
