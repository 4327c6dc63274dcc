"""Routing decisions, pure: what a statement is, and which shard its key names.

`plan(sql)` classifies a statement once (cached by text) and reads the comment hints;
`Router.target(...)` turns a plan plus the session's state into a shard name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from pgshard.protocol.errors import FeatureNotSupported, InvalidParameterValue, PgError

_HINT = re.compile(
    r"/\*\s*(shard_key_param|shard_key|shard|consistency)\s*[:=]\s*"
    r"('(?:[^']|'')*'|\$[0-9]+|[A-Za-z0-9_.:-]+)\s*\*/")
_LEADING = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/|\()*", re.S)
_WORD = re.compile(r"[A-Za-z_]+")
_SET = re.compile(
    r"SET\s+(?:(SESSION|LOCAL)\s+)?([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)"
    r"\s*(?:=|\s+TO\s+|\s+)\s*(.*?)\s*;?\s*$", re.S | re.I)
_SET_TIME_ZONE = re.compile(r"SET\s+(?:SESSION\s+)?TIME\s+ZONE\s+(.*?)\s*;?\s*$", re.S | re.I)
_RESET = re.compile(r"RESET\s+(ALL|[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)\s*;?\s*$",
                    re.S | re.I)
_SHOW = re.compile(r"SHOW\s+([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)\s*;?\s*$", re.S | re.I)
_DEALLOCATE = re.compile(r"DEALLOCATE\s+(?:PREPARE\s+)?(ALL|\"(?:[^\"]|\"\")+\"|[A-Za-z_][A-Za-z0-9_$]*)"
                         r"\s*;?\s*$", re.S | re.I)

# Statement kinds.
BEGIN, COMMIT, ROLLBACK, TXN_INNER = "begin", "commit", "rollback", "txn_inner"
SET, SET_LOCAL, RESET, SHOW = "set", "set_local", "reset", "show"
SET_PGSHARD, RESET_PGSHARD, SHOW_PGSHARD = "set_pgshard", "reset_pgshard", "show_pgshard"
DISCARD_ALL, DEALLOCATE, EMPTY, STATEMENT = "discard_all", "deallocate", "empty", "statement"

_READ_WORDS = frozenset({"SELECT", "WITH", "VALUES", "TABLE", "EXPLAIN", "SHOW", "FETCH"})
_DDL_WORDS = frozenset({"CREATE", "ALTER", "DROP", "TRUNCATE", "COMMENT", "GRANT", "REVOKE"})

PGSHARD_SETTINGS = ("shard_key", "shard", "consistency")


@dataclass(frozen=True, slots=True)
class Plan:
    kind: str
    first_word: str = ""
    shard_key: bytes | None = None      # from a /* shard_key: … */ hint
    shard: str | None = None            # from a /* shard: … */ hint
    key_param: int | None = None        # 1-based, from /* shard_key_param: N */
    consistency: str | None = None
    name: str | None = None             # SET/RESET/DEALLOCATE target
    value: str | None = None            # SET value as written (SQL)
    multi: bool = False                 # more than one statement in the string

    @property
    def is_read(self) -> bool:
        return self.first_word in _READ_WORDS

    @property
    def is_ddl(self) -> bool:
        return self.first_word in _DDL_WORDS

    @property
    def hinted(self) -> bool:
        return self.shard_key is not None or self.shard is not None or self.key_param is not None


def _unquote(v: str) -> str:
    if v.startswith("'") and v.endswith("'") and len(v) >= 2:
        return v[1:-1].replace("''", "'")
    return v


def _hints(sql: str) -> dict[str, str]:
    if "/*" not in sql:
        return {}
    return {k: _unquote(v) for k, v in _HINT.findall(sql)}


def _is_multi(sql: str) -> bool:
    body = sql.strip().rstrip(";").rstrip()
    if ";" not in body:
        return False
    # A ';' may sit inside a literal or comment: ask the real scanner.
    try:
        from pglast.parser import split
        return len(split(body, with_parser=False)) > 1
    except Exception:
        return True


_PLAIN = {w: Plan(STATEMENT, w) for w in ("SELECT", "INSERT", "UPDATE", "DELETE")}


def plan(sql: str) -> Plan:
    """Classify one simple-Query string or Parse text (cached per text)."""
    # Fast path for the commonest texts, whose literals make every text new: one plain
    # statement, no comment (so no hint), no second statement.
    head = sql[:7].upper()
    if head[6:7] in (" ", "\n") and head[:6] in _PLAIN and "/*" not in sql and "--" not in sql:
        body = sql.rstrip().rstrip(";")
        if ";" not in body:
            return _PLAIN[head[:6]]
    return _plan(sql)


@lru_cache(maxsize=8192)
def _plan(sql: str) -> Plan:
    hints = _hints(sql)
    kw = {}
    if "shard_key" in hints:
        v = hints["shard_key"]
        if v.startswith("$") and v[1:].isdigit():
            # pgbench and other clients turn a variable into $n: read the bound parameter.
            hints.setdefault("shard_key_param", v[1:])
        else:
            kw["shard_key"] = v.encode()
    if "shard" in hints:
        kw["shard"] = hints["shard"]
    if "shard_key_param" in hints:
        try:
            n = int(hints["shard_key_param"])
        except ValueError:
            n = 0
        if n < 1:
            raise InvalidParameterValue(
                f"invalid shard_key_param hint {hints['shard_key_param']!r}: expected a "
                "1-based parameter number")
        kw["key_param"] = n
    if "consistency" in hints:
        kw["consistency"] = check_consistency(hints["consistency"])
    start = _LEADING.match(sql).end()
    rest = sql[start:]
    mw = _WORD.match(rest)
    if not mw:
        return Plan(EMPTY if not rest.strip(" \t\n\r;") else STATEMENT, **kw)
    word = mw.group(0).upper()
    multi = _is_multi(rest)
    if multi:
        return Plan(STATEMENT, word, multi=True, **kw)
    if word in ("BEGIN", "START"):
        return Plan(BEGIN, word, **kw)
    if word in ("COMMIT", "END"):
        return Plan(COMMIT if "PREPARED" not in rest.upper() else STATEMENT, word, **kw)
    if word in ("ROLLBACK", "ABORT"):
        up = rest.upper()
        if " TO " in up or "PREPARED" in up:
            return Plan(TXN_INNER, word, **kw)
        return Plan(ROLLBACK, word, **kw)
    if word in ("SAVEPOINT", "RELEASE"):
        return Plan(TXN_INNER, word, **kw)
    if word == "SET":
        ms = _SET.match(rest)
        if ms:
            scope, name, value = ms.group(1), ms.group(2).lower(), ms.group(3)
            if name.startswith("pgshard."):
                return Plan(SET_PGSHARD, word, name=name[8:], value=value,
                            consistency="local" if (scope or "").upper() == "LOCAL" else None,
                            **{k: v for k, v in kw.items() if k != "consistency"})
            if name in ("transaction", "session") or value.upper().startswith("CHARACTERISTICS"):
                return Plan(TXN_INNER if name == "transaction" else STATEMENT, word, **kw)
            if (scope or "").upper() == "LOCAL":
                return Plan(SET_LOCAL, word, name=name, value=value, **kw)
            return Plan(SET, word, name=name, value=value, **kw)
        mt = _SET_TIME_ZONE.match(rest)
        if mt:
            return Plan(SET, word, name="timezone", value=mt.group(1), **kw)
        return Plan(STATEMENT, word, **kw)
    if word == "RESET":
        mr = _RESET.match(rest)
        if mr:
            name = mr.group(1).lower()
            if name.startswith("pgshard."):
                return Plan(RESET_PGSHARD, word, name=name[8:], **kw)
            return Plan(RESET, word, name=name, **kw)
        return Plan(STATEMENT, word, **kw)
    if word == "SHOW":
        ms = _SHOW.match(rest)
        if ms and ms.group(1).lower().startswith("pgshard."):
            return Plan(SHOW_PGSHARD, word, name=ms.group(1).lower()[8:], **kw)
        return Plan(SHOW, word, **kw)
    if word == "DISCARD":
        if rest.upper().split()[1:2] == ["ALL"] or rest.upper().rstrip("; \n").endswith("ALL"):
            return Plan(DISCARD_ALL, word, **kw)
        return Plan(STATEMENT, word, **kw)
    if word == "DEALLOCATE":
        md = _DEALLOCATE.match(rest)
        if md:
            name = md.group(1)
            name = name[1:-1].replace('""', '"') if name.startswith('"') else name.lower()
            if name.upper() == "ALL" and not md.group(1).startswith('"'):
                name = None
            return Plan(DEALLOCATE, word, name=name, **kw)
    return Plan(STATEMENT, word, **kw)


def check_consistency(value: str) -> str:
    v = value.strip().strip("'").lower()
    if v not in ("strong", "eventual", "session"):
        raise InvalidParameterValue(
            f'invalid value for pgshard.consistency: "{value}"',
            hint="use strong, eventual or session")
    return v


class NoShardKey(FeatureNotSupported):
    """A statement that needs a shard key arrived without one on a multi-shard cluster."""


class CrossShardTransaction(FeatureNotSupported):
    pass


def no_key_error(plan_: Plan, n_shards: int, tables: tuple[str, ...] = ()) -> PgError:
    what = "a read" if plan_.is_read else "DDL" if plan_.is_ddl else "a write"
    on = f" on sharded table {', '.join(tables)}" if tables else ""
    return NoShardKey(
        f"statement has no shard key{on} and the cluster has {n_shards} shards; "
        f"{what} without a key cannot be routed",
        hint="add a /* shard_key: <value> */ or /* shard: <name> */ comment, "
             "SET pgshard.shard_key = '<value>', or /* shard_key_param: N */ for a bound parameter")
