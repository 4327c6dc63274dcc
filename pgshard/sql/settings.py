"""SET / RESET / SHOW read from tokens as PostgreSQL's grammar reads them, pure.

What is read: the setting's name, its value as written, and a pgshard.* setting's single
value decoded."""

from __future__ import annotations

import re

from pglast.keywords import RESERVED_KEYWORDS

from pgshard.protocol.errors import (
    CharacterNotInRepertoire,
    FeatureNotSupported,
    InvalidParameterValue,
    PgError,
)
from pgshard.sql import lex as lx

_INT4_MAX = 2**31 - 1
_WORDS_AS_VALUES = frozenset({"true", "false", "on"})   # reserved, yet allowed by var_value


class SqlSyntaxError(PgError, code="42601"):
    pass


def syntax_error(tok: lx.Token | None) -> SqlSyntaxError:
    if tok is None:
        return SqlSyntaxError("syntax error at end of input")
    if tok.kind == lx.UNTERMINATED:
        what = {"/*": "/* comment", "$": "dollar-quoted string", lx.QIDENT: "quoted identifier"}
        return SqlSyntaxError(f"unterminated {what.get(tok.flavor, 'quoted string')}")
    text = tok.text if len(tok.text) <= 64 else tok.text[:64] + "…"
    return SqlSyntaxError(f'syntax error at or near "{text}"')


def word(tok: lx.Token | None) -> str | None:
    """An unquoted word, upper-cased (keywords and identifiers)."""
    return tok.text.upper() if tok is not None and tok.kind == lx.IDENT else None


def var_name(toks: list[lx.Token], i: int) -> tuple[str | None, bool, int]:
    """var_name: ColId ('.' ColId)*, from toks[i]. Returns the name as PostgreSQL looks
    it up (lower case: GUC names are case-insensitive), whether a part was quoted, and the
    index after it; (None, False, i) when there is no name."""
    parts: list[str] = []
    quoted = False
    j = i
    while True:
        t = toks[j] if j < len(toks) else None
        if t is None:
            break
        if t.kind == lx.IDENT:
            parts.append(_downcase(t.text))
        elif t.kind == lx.QIDENT:
            quoted = True
            parts.append(_qident_value(t, toks[j + 1] if j + 1 < len(toks) else None))
        else:
            break
        j += 1
        if j < len(toks) and toks[j].kind == lx.OP and toks[j].text == ".":
            j += 1
            continue
        break
    if not parts:
        return None, False, i
    return ".".join(parts).lower(), quoted, j


def var_list(sql: str, toks: list[lx.Token], i: int) -> list[list[lx.Token]] | lx.Token | None:
    """var_list from toks[i] to the end: the token groups of each value, or the token
    where the grammar breaks (None: the input ends too soon)."""
    items: list[list[lx.Token]] = []
    n = len(toks)
    while True:
        if i >= n:
            return None
        t = toks[i]
        if t.kind == lx.OP and t.text in ("+", "-"):
            if i + 1 >= n:
                return None
            if toks[i + 1].kind != lx.NUMBER:
                return toks[i + 1]
            items.append([t, toks[i + 1]])
            i += 2
        elif t.kind == lx.STRING and t.flavor in ("", "E", "U&", "$"):
            j = i + 1
            while j < n and _continues(sql, toks[j - 1], toks[j]):
                j += 1
            items.append(toks[i:j])
            i = j
        elif t.kind in (lx.NUMBER, lx.QIDENT):
            items.append([t])
            i += 1
        elif t.kind == lx.IDENT and (t.text.lower() not in RESERVED_KEYWORDS
                                     or t.text.lower() in _WORDS_AS_VALUES):
            items.append([t])
            i += 1
        else:
            return t
        if i >= n:
            return items
        t = toks[i]
        if not (t.kind == lx.OP and t.text == ","):
            return t
        i += 1


_CONTINUATION = re.compile(r"[ \t\f\v]*[\n\r][ \t\n\r\f\v]*")


def _continues(sql: str, prev: lx.Token, nxt: lx.Token) -> bool:
    """'a'<newline>'b' is one literal 'ab' (SQL standard string continuation)."""
    if nxt.kind != lx.STRING or nxt.flavor != "" or prev.flavor == "$":
        return False
    # [ \t]*newline[space]*: the first run cannot give back what the second takes, so
    # this never backtracks more than once per character.
    return _CONTINUATION.fullmatch(sql, prev.end, nxt.start) is not None


def single_value(sql: str, toks: list[lx.Token], i: int, name: str) -> str | None:
    """The one value of SET <pgshard.name> = …, decoded as PostgreSQL would store it; None
    for DEFAULT. Raises 42601 for what PostgreSQL would not parse, 22023 for a list."""
    if i < len(toks) and word(toks[i]) == "DEFAULT":
        if i + 1 < len(toks):
            raise syntax_error(toks[i + 1])
        return None
    got = var_list(sql, toks, i)
    if got is None:
        raise syntax_error(None)
    if isinstance(got, lx.Token):
        raise syntax_error(got)
    if len(got) > 1:
        raise InvalidParameterValue(f"SET pgshard.{name} takes only one argument")
    value = _decode_value(got[0], toks[i + 1] if i + 1 < len(toks) else None)
    if "\x00" in value:
        raise CharacterNotInRepertoire("invalid byte sequence for encoding \"UTF8\": 0x00")
    return value


def check_list(sql: str, toks: list[lx.Token], i: int) -> bool:
    """Is toks[i:] a var_list PostgreSQL's SET accepts (or DEFAULT)?"""
    if i < len(toks) and word(toks[i]) == "DEFAULT":
        return i + 1 == len(toks)
    got = var_list(sql, toks, i)
    return isinstance(got, list)


def _decode_value(group: list[lx.Token], after: lx.Token | None) -> str:
    t = group[0]
    if t.kind == lx.OP:   # a signed number
        v = _number(group[1].text)
        if t.text == "+":
            return v
        return v[1:] if v.startswith("-") else "-" + v
    if t.kind == lx.NUMBER:
        return _number(t.text)
    if t.kind == lx.STRING:
        return "".join(_string_value(s) for s in group)
    if t.kind == lx.QIDENT:
        return _qident_value(t, after)
    return _downcase(t.text)


def _number(text: str) -> str:
    """PostgreSQL keeps an integer that fits int4 as a number (007 -> 7) and any other
    numeric literal as written."""
    if text.isdigit():
        v = int(text)
        if v <= _INT4_MAX:
            return str(v)
    return text


def _downcase(s: str) -> str:
    """Unquoted identifiers: ASCII letters folded to lower case (PostgreSQL's rule)."""
    return s.translate(_LOWER)


_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _qident_value(t: lx.Token, after: lx.Token | None) -> str:
    if t.flavor == "U&":
        if word(after) == "UESCAPE":
            raise FeatureNotSupported("UESCAPE in a setting name is not supported by pgshard")
        v = _unicode_escapes(t.text[3:-1].replace('""', '"'))
    else:
        v = t.text[1:-1].replace('""', '"')
    if not v:
        raise SqlSyntaxError("zero-length delimited identifier")
    return v


def _string_value(t: lx.Token) -> str:
    text = t.text
    if t.flavor == "$":
        k = text.index("$", 1) + 1
        return text[k:len(text) - k]
    if t.flavor == "E":
        return _backslash_escapes(text[2:-1])
    if t.flavor == "U&":
        return _unicode_escapes(text[3:-1].replace("''", "'"))
    return text[1:-1].replace("''", "'")


_SIMPLE_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _backslash_escapes(body: str) -> str:
    """The value of an E'' string body (PostgreSQL's escapes)."""
    out: list[str] = []
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        if c == "'":            # a doubled quote
            out.append("'")
            i += 2
            continue
        if c != "\\" or i + 1 >= n:
            out.append(c)
            i += 1
            continue
        d = body[i + 1]
        if d in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[d])
            i += 2
        elif d in "01234567":
            j = i + 1
            while j < n and j < i + 4 and body[j] in "01234567":
                j += 1
            out.append(chr(int(body[i + 1:j], 8) & 0xFF))
            i = j
        elif d == "x" and i + 2 < n and body[i + 2] in "0123456789abcdefABCDEF":
            j = i + 2
            while j < n and j < i + 4 and body[j] in "0123456789abcdefABCDEF":
                j += 1
            out.append(chr(int(body[i + 2:j], 16)))
            i = j
        elif d in "uU":
            width = 4 if d == "u" else 8
            digits = body[i + 2:i + 2 + width]
            if len(digits) != width or any(h not in "0123456789abcdefABCDEF" for h in digits):
                raise InvalidParameterValue("invalid Unicode escape",
                                            hint="Unicode escapes must be \\uXXXX or \\UXXXXXXXX.")
            out.append(_code_point(int(digits, 16)))
            i += 2 + width
        else:
            out.append(d)
            i += 2
    return "".join(out)


def _unicode_escapes(body: str) -> str:
    """The value of a U&'' body with the default escape character."""
    out: list[str] = []
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        if body.startswith("\\\\", i):
            out.append("\\")
            i += 2
            continue
        if body.startswith("+", i + 1):
            digits, i2 = body[i + 2:i + 8], i + 8
        else:
            digits, i2 = body[i + 1:i + 5], i + 5
        if not digits or any(h not in "0123456789abcdefABCDEF" for h in digits) or \
                len(digits) not in (4, 6):
            raise SqlSyntaxError("invalid Unicode escape",
                                 hint="Unicode escapes must be \\XXXX or \\+XXXXXX.")
        out.append(_code_point(int(digits, 16)))
        i = i2
    return "".join(out)


def _code_point(cp: int) -> str:
    if cp == 0 or cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
        raise SqlSyntaxError("invalid Unicode escape value")
    return chr(cp)


# ------------------------------------------------------------ set_config(…, false)

class ConfigValue(str):
    """A setting's value as `set_config(name, value, false)` gave it (the str is the
    value as an SQL literal): replayed with set_config, not SET, because the two differ
    (`SET search_path TO ''` names the schema "", set_config makes the path empty)."""

    def replay(self, name: str) -> str:
        return f"SELECT pg_catalog.set_config({quote(name)}, {self}, false)"


def quote(v: str) -> str:
    return "'" + v.replace("'", "''") + "'"


def set_config_call(toks: list[lx.Token]) -> tuple[str, ConfigValue] | None:
    """(name, value) for exactly `SELECT [pg_catalog.]set_config('name', 'value', false)`
    with plain literals (pg_dump's first statement): a session setting the proxy can
    track and replay like a SET. Anything else (other arguments, more in the SELECT)
    is None and stays a statement that pins its server."""
    words = [t.text.lower() if t.kind == lx.IDENT else t.text for t in toks]
    if words[:3] == ["select", "pg_catalog", "."]:
        words, toks = words[2:], toks[2:]
    if len(words) not in (9, 10) or words[1:3] != ["set_config", "("] \
            or words[4] != "," or words[6] != "," or words[7] != "false" or words[8] != ")" \
            or (len(words) == 10 and words[9] != ";"):
        return None
    name_t, value_t = toks[3], toks[5]
    if name_t.kind != lx.STRING or value_t.kind != lx.STRING \
            or name_t.flavor not in ("", "E", "$") or value_t.flavor not in ("", "E", "$"):
        return None
    name = _string_value(name_t).lower()
    if not name or not re.fullmatch(r"[a-z_][a-z0-9_$]*(\.[a-z_][a-z0-9_$]*)?", name) \
            or name.startswith("pgshard."):
        return None
    return name, ConfigValue(quote(_string_value(value_t)))


def loaded_prefix(sql: str) -> str | None:
    """The custom-setting prefix `LOAD 'library'` reserves, by convention the library's
    base name ('$libdir/plpgsql.so' -> "plpgsql"): loading it removes the session's
    placeholder settings of that prefix (PostgreSQL warns "removing it"). None when the
    text is not one LOAD of a string literal."""
    toks = list(lx.tokens(sql, 0, min(len(sql), 4096)))
    while toks and toks[-1].kind == lx.OP and toks[-1].text == ";":
        toks.pop()
    if len(toks) != 2 or word(toks[0]) != "LOAD" or toks[1].kind != lx.STRING:
        return None
    base = _string_value(toks[1]).rsplit("/", 1)[-1]
    if base.endswith(".so"):
        base = base[:-3]
    return base.lower() or None
