"""Session state a statement leaves on its server that the proxy cannot replay, pure.

Under transaction pooling the proxy replays tracked SETs on whichever server serves a
client. Some state cannot be replayed: a session-level advisory lock, a temporary table, an
SQL-level PREPARE, a WITH HOLD cursor, SET SESSION AUTHORIZATION, a set_config(…, false),
a SET the proxy cannot read or one inside a string of several statements. A statement that
may leave such state keeps its client on its server (the session pins it) and that server
is reset with DISCARD ALL before another client may have it.

The test is read from the statement's tokens (never from string literals or comments), and
errs on the side of pinning: a false positive costs pooling efficiency for one client, a
false negative would leak one client's state to another.
"""

from __future__ import annotations

from pgshard.sql import lex as lx
from pgshard.sql import settings as ss

# Functions whose effect outlives the transaction that called them.
_SESSION_FUNCTIONS = frozenset({
    "set_config",
    "pg_advisory_lock", "pg_advisory_lock_shared",
    "pg_try_advisory_lock", "pg_try_advisory_lock_shared",
    "dblink_connect", "dblink_connect_u",
})
# First words of statements that always leave session state (or may: DO runs any code).
_FIRST_WORDS = {
    "PREPARE": "SQL PREPARE",
    "LISTEN": "LISTEN",
    "LOAD": "LOAD",
    "DO": "a DO block",
}
# What a plain SELECT/INSERT/UPDATE/DELETE must contain to pin: a text without any of
# these is decided without tokenizing (the classifier's hot path).
# Substring tests of the lowered text: a case-insensitive regex search of four alternatives
# cost ~30k instructions on a 55-character pgbench query (a fifth of the proxy's work for it).
_MAYBE_DML_WORDS = ("temp", "set_config", "advisory_lock", "dblink_connect")
_SET_WORDS = frozenset({"SET", "RESET"})


def maybe_dml(sql: str) -> bool:
    """False when a plain DML statement surely pins nothing (a cheap text test)."""
    low = sql.lower()
    for word in _MAYBE_DML_WORDS:
        if word in low:
            return True
    return False


def untracked_set(sql: str, statements: tuple[tuple[int, int], ...]) -> str | None:
    """A single SET/RESET the classifier does not track (SESSION AUTHORIZATION, SESSION
    CHARACTERISTICS, XML OPTION, …): why it pins; SET CONSTRAINTS lasts one transaction."""
    s, e = statements[0]
    toks = list(lx.tokens(sql, s, min(e, s + 256)))
    words = [ss.word(t) for t in toks[:3]]
    if len(words) > 1 and words[1] == "CONSTRAINTS":
        return None
    return f"{' '.join(w for w in words if w)} (pgshard cannot replay it on another server)"


def reason(sql: str, statements: tuple[tuple[int, int], ...], backslash_escapes: bool = False
           ) -> str | None:
    """Why the statements of sql (spans from lex.scan) pin their client, or None.

    SET and RESET of a single statement are judged by the classifier (it knows which forms
    it tracks); in a string of several statements every SET/RESET pins."""
    several = len(statements) > 1
    for s, e in statements:
        why = _statement(sql, s, e, several, backslash_escapes)
        if why is not None:
            return why
    return None


def _statement(sql: str, s: int, e: int, several: bool, esc: bool) -> str | None:
    # The first word (after any opening parentheses) and the one after it decide most
    # statements; the rest is tokenized only when the text may hold what the loop below
    # looks for (every word it returns on contains one of _MAYBE_DML_WORDS) or for DECLARE.
    it = lx.tokens(sql, lx.skip_open_parens(sql, s, e), e, esc)
    toks = []
    for t in it:
        toks.append(t)
        if not (t.kind == lx.OP and t.text == "("):
            break
    after = next(it, None)
    if after is not None:
        toks.append(after)
    i = 0
    while i < len(toks) and toks[i].kind == lx.OP and toks[i].text == "(":
        i += 1
    first = ss.word(toks[i]) if i < len(toks) else None
    if first in _FIRST_WORDS:
        if first == "PREPARE" and ss.word(toks[i + 1] if i + 1 < len(toks) else None) \
                == "TRANSACTION":
            return None
        return _FIRST_WORDS[first]
    if first in _SET_WORDS:
        if several:
            return f"{first} in a string of several statements"
        return None
    if first != "DECLARE" and not maybe_dml(sql[s:e]):
        return None
    toks.extend(it)
    if first == "DECLARE" and any(ss.word(t) == "HOLD" for t in toks):
        return "a WITH HOLD cursor"
    prev = None
    for j, t in enumerate(toks):
        if t.kind == lx.IDENT:
            w = t.text.lower()
            if w in ("temp", "temporary") and prev in ("create", "global", "local", "into",
                                                       "or", "replace"):
                return "a temporary table"
            if w == "pg_temp" or w.startswith("pg_temp_"):
                return "a temporary table"
            if w in _SESSION_FUNCTIONS and j + 1 < len(toks) and toks[j + 1].text == "(":
                return f"{w}()"
            prev = w
        elif t.kind == lx.QIDENT:
            if t.text[1:-1] in _SESSION_FUNCTIONS and j + 1 < len(toks) \
                    and toks[j + 1].text == "(":
                return f"{t.text[1:-1]}()"
            prev = None
        elif not (t.kind == lx.OP and t.text == "."):
            prev = None
    return None
