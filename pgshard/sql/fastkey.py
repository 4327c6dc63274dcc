"""The literal fast path: the shard of a simple-protocol statement without a parse per text.

Its literals change every time, so the analysis is cached per *normalized* text
(constants → $n, numbered after the text's own $n, in text order, as libpg_query's
normalize numbers them). The normalizing is one pass over the characters here (compiled:
a typed loop), not libpg_query's normalize and scanner (~20 µs a text): it takes only
plain code, integer and decimal numbers, '…' strings, quoted identifiers, $n parameters
and comments, and declines anything else (a string with a prefix or a backslash, a dollar
quote, a negative number, a number run into a word). Only the plain case is routed: every
key is an integer constant that fits an int4 and all keys map to one shard. Anything else
returns None and the caller parses the original text, so this path can only be faster,
never route differently.
"""

from __future__ import annotations

from pgshard.ring import hashing
from pgshard.sql import analysis as sp
from pgshard.sql import lex as lx

_INT4_MAX = 2 ** 31 - 1
_KINDS = (sp.SELECT, sp.INSERT, sp.UPDATE, sp.DELETE)


def route(sql: str, catalog, positions) -> str | None:
    """The one shard a literal-keyed statement belongs to, or None (use the full path)."""
    n = normalize(sql)
    if n is None:
        return None
    norm, consts, base = n
    try:
        a = sp.analyze(norm, catalog.tables, positions)
    except Exception:
        return None
    if a.keys is None or a.updates_key or a.kind not in _KINDS:
        return None
    owner = None
    for k in a.keys:
        if k.param is None or k.param <= base or k.cast is not None:
            return None
        i = k.param - base - 1
        if i >= len(consts) or consts[i] is None:
            return None
        o = catalog.ring.owner(hashing.token(consts[i]))
        if owner is not None and o != owner:
            return None
        owner = o
    return owner


def normalize(sql: str) -> tuple[str, list, int] | None:
    """(sql with its constants as $n, per constant its key bytes (an int4 integer's
    decimal digits without leading zeros) or None, the highest $n of the text), or None
    when the text holds what this reading declines (or no constant)."""
    n = len(sql)
    parts = []          # the text between constants; None where a constant's $n goes
    consts = []
    base = 0
    last = 0            # sql[last:] is not yet in parts
    minus = False       # the last code character was '-'
    k = 0
    while k < n:
        c = sql[k]
        if c in " \t\n\r\f\v":
            k += 1
            continue
        # Comments are passed over (a sign before one still folds into the number after).
        if c == "-" and k + 1 < n and sql[k + 1] == "-":
            k = lx.skip_line_comment(sql, k)
            continue
        if c == "/" and k + 1 < n and sql[k + 1] == "*":
            k = lx.skip_block_comment(sql, k)
            if k > n:
                return None             # unterminated
            continue
        if "0" <= c <= "9" or c == "." and k + 1 < n and "0" <= sql[k + 1] <= "9":
            if minus:
                return None             # normalize would fold the sign into the constant
            s = k
            while k < n and "0" <= sql[k] <= "9":
                k += 1
            integer = k > s
            if k < n and sql[k] == "." and not (k + 1 < n and sql[k + 1] == "."):
                integer = False
                k += 1
                while k < n and "0" <= sql[k] <= "9":
                    k += 1
            if k < n and (sql[k] == "e" or sql[k] == "E"):
                integer = False
                k += 1
                if k < n and (sql[k] == "+" or sql[k] == "-"):
                    k += 1
                if k >= n or not "0" <= sql[k] <= "9":
                    return None
                while k < n and "0" <= sql[k] <= "9":
                    k += 1
            if k < n and _word_char(sql[k]):
                return None             # 0x1F, 1_000, 12abc: not read here
            key = None
            if integer:
                v = int(sql[s:k])
                if v <= _INT4_MAX:      # a larger one is no ICONST to PostgreSQL
                    key = str(v).encode()
            parts.append(sql[last:s])
            parts.append(None)
            consts.append(key)
            last = k
            continue
        minus = False
        if c == "'":
            s = k
            k, backslash = lx.skip_string(sql, k, False)
            if k > n or backslash:
                return None             # unterminated, or a backslash (its reading
                #                         depends on standard_conforming_strings)
            parts.append(sql[last:s])
            parts.append(None)
            consts.append(None)
            last = k
            continue
        if c == '"':
            k = lx.skip_quoted_ident(sql, k)
            if k > n:
                return None             # unterminated
            continue
        if c == "$":
            s = k
            k += 1
            while k < n and "0" <= sql[k] <= "9":
                k += 1
            if k == s + 1 or k - s > 9 or k < n and _word_char(sql[k]):
                return None             # a dollar quote, a $n run into a word, or beyond int4
            p = int(sql[s + 1:k])
            if p > base:
                base = p
            continue
        if _word_char(c):
            while k < n and _word_char(sql[k]):
                k += 1
            if k < n and (sql[k] == "'" or sql[k] == '"'):
                return None             # E'', B'', X'', N'', U&'': not read here
            continue
        minus = c == "-"
        k += 1
    if not consts:
        return None
    parts.append(sql[last:])
    j = base
    for i in range(len(parts)):
        if parts[i] is None:
            j += 1
            parts[i] = "$" + str(j)
    return "".join(parts), consts, base


def _word_char(c: str) -> bool:
    """A character that continues an identifier or keyword ([A-Za-z0-9_$] or non-ASCII)."""
    return "a" <= c <= "z" or "A" <= c <= "Z" or "0" <= c <= "9" or c == "_" or c == "$" \
        or c >= "\x80"
