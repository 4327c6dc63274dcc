"""The statement classifier, pure: what a statement is (its kind) and the hints it carries.

`plan(sql)` classifies a statement once (cached by text, the cache bounded by bytes) and
reads the comment hints, both from the SQL's own tokens (lex: linear time, so no text a
client sends can stall the event loop); the session's targeting turns a plan plus its
state into a shard name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from enum import StrEnum
from itertools import islice

from pgshard.cache import ByteLRU
from pgshard.protocol.errors import FeatureNotSupported, InvalidParameterValue, PgError
from pgshard.sql import lex as lx
from pgshard.sql import settings as ss
from pgshard.sql import sticky


class Kind(StrEnum):
    """What a statement is, as far as the session treats it specially. A StrEnum, not a
    (str, Enum): a kind equals, hashes and prints as its value, so sets of plain strings
    and the labels built from it read as before."""

    BEGIN = "begin"
    COMMIT = "commit"
    ROLLBACK = "rollback"
    TXN_INNER = "txn_inner"             # SAVEPOINT, RELEASE, ROLLBACK TO|PREPARED, SET TRANSACTION
    SET = "set"
    SET_LOCAL = "set_local"
    RESET = "reset"
    SHOW = "show"
    SET_PGSHARD = "set_pgshard"
    RESET_PGSHARD = "reset_pgshard"
    SHOW_PGSHARD = "show_pgshard"
    DISCARD_ALL = "discard_all"
    DEALLOCATE = "deallocate"
    EMPTY = "empty"
    STATEMENT = "statement"             # anything else: the server's business


# The kinds under their module-level names, as the call sites read them (r.BEGIN, …).
BEGIN, COMMIT, ROLLBACK, TXN_INNER = Kind.BEGIN, Kind.COMMIT, Kind.ROLLBACK, Kind.TXN_INNER
SET, SET_LOCAL, RESET, SHOW = Kind.SET, Kind.SET_LOCAL, Kind.RESET, Kind.SHOW
SET_PGSHARD, RESET_PGSHARD, SHOW_PGSHARD = Kind.SET_PGSHARD, Kind.RESET_PGSHARD, Kind.SHOW_PGSHARD
DISCARD_ALL, DEALLOCATE, EMPTY, STATEMENT = (Kind.DISCARD_ALL, Kind.DEALLOCATE, Kind.EMPTY,
                                             Kind.STATEMENT)

_READ_WORDS = frozenset({"SELECT", "WITH", "VALUES", "TABLE", "EXPLAIN", "SHOW", "FETCH"})
_DDL_WORDS = frozenset({"CREATE", "ALTER", "DROP", "TRUNCATE", "COMMENT", "GRANT", "REVOKE"})

PGSHARD_SETTINGS = ("shard_key", "shard", "consistency")
_SPACES = " \t\n\r\f\v"     # what the lexer takes as space (not Unicode's other spaces)
_HINT_NAMES = frozenset({"shard_key_param", "shard_key", "shard", "consistency"})


@dataclass(frozen=True, slots=True)
class Plan:
    """One statement text classified: its kind, first word and the hints it carries."""

    kind: Kind
    first_word: str = ""
    shard_key: bytes | None = None      # from a /* shard_key: … */ hint
    shard: str | None = None            # from a /* shard: … */ hint
    key_param: int | None = None        # 1-based, from /* shard_key_param: N */
    consistency: str | None = None      # SET_PGSHARD: "local" for SET LOCAL
    name: str | None = None             # SET/RESET/DEALLOCATE target
    value: str | None = None            # SET: the value as written (SQL); SET_PGSHARD: the
    #                                     value decoded, None for DEFAULT
    multi: bool = False                 # more than one statement in the string
    sticky: str | None = None           # why it leaves session state the proxy cannot
    #                                     replay (the session then pins its server)
    config: bool = False                # SELECT set_config('name', 'value', false): tracked
    #                                     like a SET of name to value (a ConfigValue)

    # From first_word, set once (read per statement on the hot path: a field, not a
    # property call).
    is_read: bool = field(init=False, repr=False, compare=False)
    is_ddl: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "is_read", self.first_word in _READ_WORDS)
        object.__setattr__(self, "is_ddl", self.first_word in _DDL_WORDS)

    @property
    def hinted(self) -> bool:
        return self.shard_key is not None or self.shard is not None or self.key_param is not None


# ------------------------------------------------------------ the plan cache

DEFAULT_PLAN_CACHE_BYTES = 16 * 1024 * 1024
MAX_CACHED_TEXT = 64 * 1024     # longer texts are planned every time, never kept
_ENTRY_OVERHEAD = 256           # the Plan, the key's str header, the cache's own node
_cache = ByteLRU(DEFAULT_PLAN_CACHE_BYTES)


def configure_cache(max_bytes: int) -> None:
    """Bound the plan cache by the bytes of the texts it keeps (plan_cache_bytes)."""
    _cache.resize(max_bytes)


def clear_cache() -> None:
    _cache.clear()


def cache_usage() -> tuple[int, int]:
    """(entries, bytes) of the plan cache now."""
    return len(_cache), _cache.bytes


_PLAIN = {w: Plan(STATEMENT, w) for w in ("SELECT", "INSERT", "UPDATE", "DELETE")}


class _PlanSlots:
    """Plan's slots, settable: the fast path fills one and makes it a Plan (the same
    layout), for Plan's frozen __init__ costs an object.__setattr__ call per field (18k
    instructions, a third of the classification of a hinted text; this costs 5k)."""

    __slots__ = Plan.__slots__


def _hinted_plan(word: str, shard_key: bytes | None = None, shard: str | None = None,
                 key_param: int | None = None, consistency: str | None = None) -> Plan:
    """Plan(STATEMENT, word, shard_key=…, shard=…, key_param=…, consistency=…)."""
    p = _PlanSlots()
    p.kind = STATEMENT
    p.first_word = word
    p.shard_key = shard_key
    p.shard = shard
    p.key_param = key_param
    p.consistency = consistency
    p.name = p.value = p.sticky = None
    p.multi = p.config = False
    p.is_read = word in _READ_WORDS
    p.is_ddl = word in _DDL_WORDS
    p.__class__ = Plan
    return p


def plan(sql: str) -> Plan:
    """Classify one simple-Query string or Parse text (cached per text)."""
    # Fast paths for the commonest texts, whose literals make every text new: one plain
    # statement, no second statement, and no comment (so no hint) or one comment (a hint).
    if "/*" not in sql:
        head = sql[:7].upper()
        if head[6:7] in (" ", "\n") and head[:6] in _PLAIN and "--" not in sql:
            body = sql.rstrip(_SPACES).rstrip(";")
            if ";" not in body and not sticky.maybe_dml(sql):
                return _PLAIN[head[:6]]
    else:
        p = _one_comment(sql)
        if p is not None:
            return p
    p = _cache.get(sql)
    if p is None:
        p = _plan(sql)
        if len(sql) <= MAX_CACHED_TEXT:
            _cache.put(sql, p, len(sql) + _ENTRY_OVERHEAD)
    return p


def _one_comment(sql: str) -> Plan | None:
    """The Plan of a plain SELECT/INSERT/UPDATE/DELETE with exactly one /* */ comment,
    before, inside or after it (`… WHERE aid = 5 /* shard_key: 5 */;`), read without the
    scan and the tokens: None unless the text around the comment is plain code with at
    most a final ';' (no string, quoted identifier, dollar quote, line comment, nested
    comment or second statement), so that the slow path would read the same spans. It
    then gives what _plan(sql) gives (tests/unit/test_classify_fast.py compares them)."""
    i = sql.find("/*")
    j = sql.find("*/", i + 2)
    if i < 0 or j < 0 or sql.find("/*", i + 2) >= 0:
        return None
    # One pass over the code around the comment (which reads as one space): what only a
    # scan could read (a string or quoted identifier, a line comment, a dollar quote,
    # i.e. a $ that starts no $n) or a second statement sends the text to the slow path.
    # Compiled, a typed loop: a few C tests per character, no slices.
    n = len(sql)
    first = -1                  # where the first word starts
    semi = False                # a ';' was seen: only space may follow
    k = 0
    while k < n:
        if k == i:
            k = j + 2
            continue
        c = sql[k]
        if c in " \t\n\r\f\v":
            k += 1
            continue
        if semi or c == "'" or c == '"':
            return None
        if c == ";":
            semi = True
        elif c == "-":
            if k + 1 < n and k + 1 != i and sql[k + 1] == "-":
                return None
        elif c == "$":
            if k + 1 >= n or k + 1 == i or not ("0" <= sql[k + 1] <= "9"):
                return None
        if first < 0:
            first = k
        k += 1
    # The first word: six ASCII letters of one of the four statements, then a space or a
    # newline (or the comment).
    if first < 0 or first < i < first + 6 or first + 6 >= n:
        return None
    w = sql[first:first + 6]
    if not w.isascii():
        return None
    word = w.upper()
    if word not in _PLAIN:
        return None
    if first + 6 != i:
        c = sql[first + 6]
        if c != " " and c != "\n":
            return None
    if sticky.maybe_dml(sql):
        return None
    h = _hint(sql[i + 2:j])
    if h is None:
        return _PLAIN[word]
    v = h[1]
    if h[0] == "shard_key" and not v.startswith("$"):
        return _hinted_plan(word, v.encode())     # the commonest hint, without the dicts
    return _hinted_plan(word, **_hint_fields({h[0]: h[1]}))


# ------------------------------------------------------------ classification

def _plan(sql: str) -> Plan:
    sc = lx.scan(sql)
    # A backslash inside a '…' literal: the text reads differently when the session has
    # standard_conforming_strings off. Trust only what both readings agree on.
    alt = lx.scan(sql, backslash_escapes=True) if sc.ambiguous else None
    p = _classify(sql, sc, alt)
    if p.config:
        if alt is None:
            return p   # replayed like a SET: nothing pins
        p = replace(p, config=False, name=None, value=None)
    why = sticky.reason(sql, sc.statements)
    if why is None and alt is not None:
        why = sticky.reason(sql, alt.statements, backslash_escapes=True)
    if why is None and p.kind == STATEMENT and p.first_word in ("SET", "RESET") and not p.multi:
        why = sticky.untracked_set(sql, sc.statements)
    return p if why is None else replace(p, sticky=why)


def _classify(sql: str, sc: lx.Scan, alt: lx.Scan | None) -> Plan:
    kw = _hint_fields(_hints(sql, sc, alt))
    _refuse_pgshard_in_multi(sql, sc, alt)
    if not sc.statements:
        return Plan(EMPTY, **kw)
    s0, e0 = sc.statements[0]
    it = lx.tokens(sql, lx.skip_open_parens(sql, s0, e0), e0)
    first = next(it, None)
    while first is not None and first.kind == lx.OP and first.text == "(":
        first = next(it, None)
    word = ss.word(first)
    if len(sc.statements) > 1:
        return Plan(STATEMENT, word or "", multi=True, **kw)
    if word is None:
        return Plan(STATEMENT, **kw)
    if word in ("BEGIN", "START"):
        return Plan(BEGIN, word, **kw)
    if word in ("COMMIT", "END"):
        nxt = ss.word(next(it, None))
        return Plan(STATEMENT if nxt == "PREPARED" else COMMIT, word, **kw)
    if word in ("ROLLBACK", "ABORT"):
        words = {ss.word(t) for t in islice(it, 3)}
        return Plan(TXN_INNER if "TO" in words or "PREPARED" in words else ROLLBACK, word, **kw)
    if word in ("SAVEPOINT", "RELEASE"):
        return Plan(TXN_INNER, word, **kw)
    if word == "SET":
        return _set(sql, [first, *it], kw)
    if word == "RESET":
        return _reset([first, *it], kw)
    if word == "SHOW":
        return _show([first, *it], kw)
    if word == "DISCARD":
        toks = list(islice(it, 2))
        if len(toks) == 1 and ss.word(toks[0]) == "ALL":
            return Plan(DISCARD_ALL, word, **kw)
        return Plan(STATEMENT, word, **kw)
    if word == "DEALLOCATE":
        return _deallocate([first, *islice(it, 3)], kw)
    if word == "PREPARE":
        return Plan(STATEMENT, word, name=_prepared_name(next(it, None)), **kw)
    if word == "SELECT" and "set_config" in sql.lower():
        call = ss.set_config_call([first, *it])
        if call is not None:
            return Plan(STATEMENT, word, name=call[0], value=call[1], config=True, **kw)
    return Plan(STATEMENT, word, **kw)


def _prepared_name(t: lx.Token | None) -> str | None:
    """The name an SQL PREPARE gives its statement (None: PREPARE TRANSACTION, or none)."""
    if t is None or ss.word(t) == "TRANSACTION":
        return None
    if t.kind == lx.IDENT:
        return ss.var_name([t], 0)[0]
    if t.kind == lx.QIDENT and t.flavor == "" and len(t.text) > 2:
        return t.text[1:-1].replace('""', '"')
    return None


def _set(sql: str, toks: list[lx.Token], kw: dict) -> Plan:
    n = len(toks)
    i, scope = 1, None
    if n > 2 and ss.word(toks[1]) in ("SESSION", "LOCAL") and toks[2].kind in (lx.IDENT, lx.QIDENT):
        scope, i = ss.word(toks[1]), 2
    kind = SET_LOCAL if scope == "LOCAL" else SET
    target = ss.word(toks[i]) if i < n else None
    if target == "TRANSACTION":
        return Plan(TXN_INNER, "SET", **kw)
    if target in ("CHARACTERISTICS", "AUTHORIZATION") and scope == "SESSION" or target == "SESSION":
        return Plan(STATEMENT, "SET", **kw)
    if target == "TIME" and i + 2 < n and ss.word(toks[i + 1]) == "ZONE":
        return Plan(kind, "SET", name="timezone", value=_text(sql, toks, i + 2), **kw)
    special = {"ROLE": "role", "SCHEMA": "search_path", "NAMES": "client_encoding"}
    if target in special and i + 1 < n and not (toks[i + 1].kind == lx.OP
                                                   or ss.word(toks[i + 1]) == "TO"):
        return Plan(kind, "SET", name=special[target], value=_text(sql, toks, i + 1), **kw)
    name, quoted, j = ss.var_name(toks, i)
    if name is None:
        return Plan(STATEMENT, "SET", **kw)
    pgshard = name.startswith("pgshard.")
    sep = toks[j] if j < n else None
    if sep is not None and (sep.kind == lx.OP and sep.text == "=" or ss.word(sep) == "TO"):
        j += 1
    elif pgshard and ss.word(sep) == "FROM":
        raise FeatureNotSupported(f"SET {name} FROM CURRENT is not supported")
    elif pgshard:
        raise ss.syntax_error(sep)
    else:
        return Plan(STATEMENT, "SET", **kw)
    if pgshard:
        setting = name[len("pgshard."):]
        value = ss.single_value(sql, toks, j, setting)
        return Plan(SET_PGSHARD, "SET", name=setting, value=value,
                    consistency="local" if scope == "LOCAL" else None,
                    **{k: v for k, v in kw.items() if k != "consistency"})
    if quoted or not ss.check_list(sql, toks, j):
        return Plan(STATEMENT, "SET", **kw)   # PostgreSQL reports what is wrong with it
    if j + 1 == n and ss.word(toks[j]) == "DEFAULT":
        return Plan(kind, "SET", name=name, value=None, **kw)   # as RESET
    return Plan(kind, "SET", name=name, value=_text(sql, toks, j), **kw)


def _text(sql: str, toks: list[lx.Token], i: int) -> str:
    """The source of toks[i:] (comments between tokens kept, those around dropped)."""
    return sql[toks[i].start:toks[-1].end] if i < len(toks) else ""


def _reset(toks: list[lx.Token], kw: dict) -> Plan:
    n = len(toks)
    if n == 3 and ss.word(toks[1]) == "TIME" and ss.word(toks[2]) == "ZONE":
        return Plan(RESET, "RESET", name="timezone", **kw)
    name, quoted, j = ss.var_name(toks, 1)
    if name is not None and name.startswith("pgshard."):
        if j < n:
            raise ss.syntax_error(toks[j])
        return Plan(RESET_PGSHARD, "RESET", name=name[len("pgshard."):], **kw)
    if name is not None and not quoted and j == n:
        return Plan(RESET, "RESET", name=name, **kw)
    return Plan(STATEMENT, "RESET", **kw)


def _show(toks: list[lx.Token], kw: dict) -> Plan:
    name, _, j = ss.var_name(toks, 1)
    if name is not None and name.startswith("pgshard."):
        if j < len(toks):
            raise ss.syntax_error(toks[j])
        return Plan(SHOW_PGSHARD, "SHOW", name=name[len("pgshard."):], **kw)
    return Plan(SHOW, "SHOW", **kw)


def _deallocate(toks: list[lx.Token], kw: dict) -> Plan:
    i = 2 if len(toks) == 3 and ss.word(toks[1]) == "PREPARE" else 1
    if len(toks) == i + 1:
        t = toks[i]
        if t.kind == lx.IDENT:
            name = None if t.text.upper() == "ALL" else ss.var_name(toks, i)[0]
            return Plan(DEALLOCATE, "DEALLOCATE", name=name, **kw)
        if t.kind == lx.QIDENT and len(t.text) > 2 and t.flavor == "":
            return Plan(DEALLOCATE, "DEALLOCATE", name=t.text[1:-1].replace('""', '"'), **kw)
    return Plan(STATEMENT, "DEALLOCATE", **kw)


def _refuse_pgshard_in_multi(sql: str, sc: lx.Scan, alt: lx.Scan | None) -> None:
    """pgshard.* settings are the proxy's: in a string of several statements they cannot
    be taken out without changing what the rest means, and PostgreSQL would take them as
    placeholders and ignore them. Refuse the whole string before anything runs."""
    for reading, esc in ((sc, False), (alt, True)):
        if reading is None or len(reading.statements) < 2:
            continue
        for s, e in reading.statements:
            name = _pgshard_setting(sql, s, e, esc)
            if name is not None:
                raise FeatureNotSupported(
                    f"{name} in a string of several statements: pgshard.* settings must be "
                    "sent as their own statement (nothing in this string was run)",
                    hint=f"send SET/RESET/SHOW {name} alone, then the other statements")


def _pgshard_setting(sql: str, s: int, e: int, esc: bool) -> str | None:
    """The pgshard.* setting a SET/RESET/SHOW statement in sql[s:e] names, else None."""
    it = lx.tokens(sql, s, e, esc)
    verb = ss.word(next(it, None))
    if verb not in ("SET", "RESET", "SHOW"):
        return None
    toks = list(islice(it, 64))
    i = 0
    if verb == "SET" and len(toks) > 1 and ss.word(toks[0]) in ("SESSION", "LOCAL") \
            and toks[1].kind in (lx.IDENT, lx.QIDENT):
        i = 1
    try:
        name = ss.var_name(toks, i)[0]
    except PgError:
        return "pgshard.*"   # a name pgshard cannot read: do not let it through
    return name if name is not None and name.startswith("pgshard.") else None


# ------------------------------------------------------------ comment hints

def _hints(sql: str, sc: lx.Scan, alt: lx.Scan | None) -> dict[str, str]:
    if "/*" not in sql:
        return {}
    spans = sc.comments
    if alt is not None:
        agreed = set(alt.comments)
        spans = tuple(sp for sp in spans if sp in agreed)
    out: dict[str, str] = {}
    for span in spans:
        h = _hint(lx.comment_body(sql, span))
        if h is not None:
            out[h[0]] = h[1]
    return out


# A hint's name and a bare value: single character-class runs (no backtracking).
_HINT_NAME = re.compile(r"[A-Za-z_]*")
_BARE_VALUE = re.compile(r"[A-Za-z0-9_.:-]+")


def _bare_hint(b: str) -> tuple[str, str] | None:
    """The commonest hint whole, `name: bare-value` (space, [A-Za-z_]+, space, ':' or '=',
    space, [A-Za-z0-9_.:-]+, space), read in one pass (compiled: a typed loop); None for
    any other form."""
    n = len(b)
    k = s = _skip_space(b, 0, n)
    while k < n:
        c = b[k]
        if not ("a" <= c <= "z" or "A" <= c <= "Z" or c == "_"):
            break
        k += 1
    e = k
    k = _skip_space(b, k, n)
    if e == s or k == n or b[k] not in ":=":
        return None
    k = vs = _skip_space(b, k + 1, n)
    while k < n:
        c = b[k]
        if not ("a" <= c <= "z" or "A" <= c <= "Z" or "0" <= c <= "9" or c in "_.:-"):
            break
        k += 1
    ve = k
    if ve == vs or _skip_space(b, k, n) != n:
        return None
    return b[s:e], b[vs:ve]


def _skip_space(b: str, k: int, n: int) -> int:
    while k < n and b[k] in " \t\n\r\f\v":
        k += 1
    return k


def _hint(body: str | None) -> tuple[str, str] | None:
    """A comment that is exactly `name: value` (or name = value): shard_key, shard,
    shard_key_param or consistency; value bare, '$n' or a '…' literal."""
    if body is None:
        return None
    h = _bare_hint(body)
    if h is not None:   # what the general reading gives it, in one pass
        return h if h[0] in _HINT_NAMES else None
    return _general_hint(body)


def _general_hint(body: str) -> tuple[str, str] | None:
    """_hint's reading of any comment body."""
    b = body.strip(_SPACES)
    name = _HINT_NAME.match(b).group()
    k = len(name)
    if name not in _HINT_NAMES:
        return None
    rest = b[k:].lstrip(_SPACES)
    if not rest or rest[0] not in ":=":
        return None
    v = rest[1:].lstrip(_SPACES)
    if v.startswith("'"):
        end, _ = lx.skip_string(v, 0, False)
        if end != len(v):
            return None
        return name, v[1:-1].replace("''", "'")
    if v.startswith("$") and v[1:].isdigit() and v[1:].isascii():
        return name, v
    if _BARE_VALUE.fullmatch(v) is not None:
        return name, v
    return None


def _hint_fields(hints: dict[str, str]) -> dict:
    kw: dict = {}
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
    return kw


def check_consistency(value: str) -> str:
    v = value.lower()
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
