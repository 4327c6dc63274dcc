"""A linear-time SQL lexer, pure: comment spans, statement spans and tokens of a text.

They are found as PostgreSQL's scanner sees them (strings, E'' escapes, dollar quotes,
quoted identifiers, nested /* */).

Everything here runs on client text on the event loop, so every step moves forward: the
only regular expressions are single character-class runs (no alternation or nesting that
could backtrack), and each character is looked at a bounded number of times.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Characters that may start something that is not plain code (a string, a quoted
# identifier, a dollar quote, a comment, a statement end).
_SPECIAL = re.compile(r"['\"$;/-]")
_NOT_SPACE = re.compile(r"[^ \t\n\r\f\v]")
# PostgreSQL: ident_start [A-Za-z\200-\377_], ident_cont adds [0-9$]; dollar-quote tags
# are identifiers without '$'.
_IDENT_CONT = re.compile(r"[A-Za-z0-9_$\x80-\U0010ffff]*")
_TAG_CONT = re.compile(r"[A-Za-z0-9_\x80-\U0010ffff]*")
_DIGITS = re.compile(r"[0-9]*")
# String bodies with possessive quantifiers: each character is taken once, never given back.
# Plain code and the literals no reading can disagree on, taken in one match (the loop in
# scan() handles the rest: other quotes, dollars, ';', comments, E'', a backslash).
_RUN_STD = re.compile(r"(?:[^'\"$;/\-eE]++|'(?:[^'\\]++|'')*+'|/(?!\*)|-(?!-)|[eE](?!'))*+")
_RUN_ESC = re.compile(r"(?:[^'\"$;/\-]++|'(?:[^'\\]++|\\.|'')*+'|/(?!\*)|-(?!-))*+", re.S)
_STD_BODY = re.compile(r"(?:[^']++|'')*+")
_E_BODY = re.compile(r"(?:[^'\\]++|\\.|'')*+", re.S)
_COMMENT_MARK = re.compile(r"/\*|\*/")   # two fixed two-character strings: no backtracking
_EOL = re.compile(r"[\n\r]")
_OPEN_PARENS = re.compile(r"[ \t\n\r\f\v(]*+")


def _is_ident_start(c: str) -> bool:
    return c.isascii() and (c.isalpha() or c == "_") or not c.isascii()


def _is_word(c: str) -> bool:
    return c.isascii() and (c.isalnum() or c in "_$") or not c.isascii()


# ------------------------------------------------------------ the pieces (shared)

def skip_open_parens(sql: str, start: int, end: int) -> int:
    """Where sql[start:end] goes on past its leading white space and opening parentheses
    (one character-class run: a statement opening with thousands of '(' costs no token
    objects before its first word)."""
    return _OPEN_PARENS.match(sql, start, end).end()


def skip_block_comment(sql: str, p: int) -> int:
    """sql[p:p+2] == '/*': the end of the (nested) comment (len(sql) + 1 if
    unterminated)."""
    depth, i, n = 1, p + 2, len(sql)
    while i < n:
        m = _COMMENT_MARK.search(sql, i)
        if m is None:
            break
        i = m.end()
        if m.group() == "/*":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return i
    return n + 1


def skip_line_comment(sql: str, p: int) -> int:
    m = _EOL.search(sql, p)
    return len(sql) if m is None else m.end()


def skip_string(sql: str, p: int, escapes: bool) -> tuple[int, bool]:
    """sql[p] == "'": the end of the literal (len(sql) + 1 if unterminated), and whether a
    backslash appeared in it. escapes: backslash escapes (E'' strings, or
    standard_conforming_strings off)."""
    body = (_E_BODY if escapes else _STD_BODY).match(sql, p + 1).end()
    saw = sql.find("\\", p + 1, body) >= 0
    if body < len(sql) and sql[body] == "'":
        return body + 1, saw
    return len(sql) + 1, saw or body < len(sql)   # unterminated (or ends in a lone '\\')


def skip_quoted_ident(sql: str, p: int) -> int:
    """sql[p] == '"': the end of the identifier (len(sql) + 1 if unterminated)."""
    i, n = p + 1, len(sql)
    while True:
        j = sql.find('"', i)
        if j < 0:
            return n + 1
        if j + 1 < n and sql[j + 1] == '"':
            i = j + 2
            continue
        return j + 1


def dollar_tag(sql: str, p: int) -> str | None:
    """sql[p] == '$' at a token start: the opening delimiter ($$ or $tag$), else None."""
    q = p + 1
    if q < len(sql) and sql[q] != "$":
        if not _is_ident_start(sql[q]):
            return None
        q = _TAG_CONT.match(sql, q).end()
    if q < len(sql) and sql[q] == "$":
        return sql[p:q + 1]
    return None


def skip_dollar(sql: str, p: int, tag: str) -> int:
    """The end of the dollar-quoted string opened at p (len(sql) + 1 if unterminated)."""
    j = sql.find(tag, p + len(tag))
    return len(sql) + 1 if j < 0 else j + len(tag)


def _escape_prefix(sql: str, p: int, floor: int) -> bool:
    """Is the quote at p an E'' string (E or e as a token of its own right before it)?"""
    e = p - 1
    if e < floor or sql[e] not in "eE":
        return False
    return e == floor or not _is_word(sql[e - 1])


# ------------------------------------------------------------ the whole text

@dataclass(frozen=True, slots=True)
class Scan:
    comments: tuple[tuple[int, int], ...]     # outermost /* */ comments, [start, end)
    statements: tuple[tuple[int, int], ...]   # non-empty statements, [start, end) w/o ';'
    ambiguous: bool                           # a backslash in a standard string: the
    #                                           text reads differently with
    #                                           standard_conforming_strings off


def scan(sql: str, backslash_escapes: bool = False) -> Scan:
    """Comment and statement spans of a SQL text. backslash_escapes: read '…' strings as
    with standard_conforming_strings = off."""
    if "'" not in sql and '"' not in sql and "$" not in sql and "-" not in sql:
        return _scan_plain(sql)
    return _scan(sql, backslash_escapes)


def _scan(sql: str, backslash_escapes: bool) -> Scan:
    """scan() of any text: plain code taken a run at a time, each special start read."""
    comments: list[tuple[int, int]] = []
    statements: list[tuple[int, int]] = []
    ambiguous = False
    n = len(sql)
    pos = 0            # everything before pos is consumed
    stmt_start = 0
    has_code = False   # the current statement has something besides space and comments
    search = _SPECIAL.search
    run = (_RUN_ESC if backslash_escapes else _RUN_STD).match
    while True:
        floor = pos    # the end of what this loop consumed last: a word starts no earlier
        pos = run(sql, pos).end()
        m = search(sql, pos)
        p = n if m is None else m.start()
        if not has_code and p > floor and _NOT_SPACE.search(sql, floor, p) is not None:
            has_code = True
        if m is None:
            break
        c = sql[p]
        if c == "'":
            esc = backslash_escapes or _escape_prefix(sql, p, floor)
            end, saw = skip_string(sql, p, esc)
            if saw and not esc:
                ambiguous = True
            pos, has_code = end, True
        elif c == '"':
            pos, has_code = skip_quoted_ident(sql, p), True
        elif c == "$":
            i = p
            while i > floor and _is_word(sql[i - 1]):
                i -= 1
            if i < p and not "0" <= sql[i] <= "9":
                # inside an identifier (a$b): the identifier runs on
                pos = _IDENT_CONT.match(sql, p).end()
            else:
                tag = dollar_tag(sql, p)
                if tag is not None:
                    pos = skip_dollar(sql, p, tag)
                else:
                    pos = _DIGITS.match(sql, p + 1).end()   # $1, or a stray '$'
                    pos = max(pos, p + 1)
            has_code = True
        elif c == ";":
            if has_code:
                statements.append((stmt_start, p))
            pos = stmt_start = p + 1
            has_code = False
        elif c == "/":
            if p + 1 < n and sql[p + 1] == "*":
                end = skip_block_comment(sql, p)
                if end <= n:   # an unterminated comment is a syntax error, not a hint
                    comments.append((p, end))
                pos = end
            else:
                pos, has_code = p + 1, True
        else:  # '-'
            if p + 1 < n and sql[p + 1] == "-":
                pos = skip_line_comment(sql, p)
            else:
                pos, has_code = p + 1, True
    if has_code:
        statements.append((stmt_start, n))
    return Scan(tuple(comments), tuple(statements), ambiguous)


def _scan_plain(sql: str) -> Scan:
    """scan() of a text without quotes, dollars or dashes (no string, quoted identifier,
    dollar quote or line comment can start): only ';' and /* */ matter, found with
    str.find (each found position is kept until passed, so the text is read once)."""
    comments: list[tuple[int, int]] = []
    statements: list[tuple[int, int]] = []
    n = len(sql)
    pos = stmt_start = 0
    has_code = False
    semi = sql.find(";")
    mark = sql.find("/*")
    while True:
        floor = pos
        if 0 <= semi < pos:
            semi = sql.find(";", pos)
        if 0 <= mark < pos:
            mark = sql.find("/*", pos)
        p = min(semi if semi >= 0 else n, mark if mark >= 0 else n)
        if not has_code and p > floor and _NOT_SPACE.search(sql, floor, p) is not None:
            has_code = True
        if p >= n:
            break
        if p == semi:
            if has_code:
                statements.append((stmt_start, p))
            pos = stmt_start = p + 1
            has_code = False
        else:
            end = skip_block_comment(sql, p)
            if end <= n:   # an unterminated comment is a syntax error, not a hint
                comments.append((p, end))
            pos = end
    if has_code:
        statements.append((stmt_start, n))
    return Scan(tuple(comments), tuple(statements), False)


def comment_body(sql: str, span: tuple[int, int]) -> str | None:
    """The text inside a terminated /* */ comment, else None."""
    s, e = span
    if e - s < 4 or sql[e - 2:e] != "*/":
        return None
    return sql[s + 2:e - 2]


# ------------------------------------------------------------ tokens

IDENT, QIDENT, STRING, NUMBER, PARAM, OP = "ident", "qident", "string", "number", "param", "op"
UNTERMINATED = "unterminated"   # a string, identifier or comment that never ends


class Token:
    """One token: kind, [start, end) in the text, the text as written, and for a STRING
    its flavor ("", "E", "U&", "$", or "B" for b''/x'';
    N'' is the word N and a string, as in PostgreSQL's scanner). A plain slotted class:
    tokens are made by the thousand on the event loop."""

    __slots__ = ("kind", "start", "end", "text", "flavor")

    def __init__(self, kind: str, start: int, end: int, text: str, flavor: str = ""):
        self.kind = kind
        self.start = start
        self.end = end
        self.text = text
        self.flavor = flavor

    def __repr__(self) -> str:
        return f"Token({self.kind}, {self.start}, {self.end}, {self.text!r})"


_TOKEN_SRC = r"""
 (?P<ws>[ \t\n\r\f\v]++)
|(?P<other>[,()\[\];])
|(?P<ident>(?![eEbBxX]'|[uU]&['"])[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*+)
|(?P<num>(?:[0-9]++(?:\.(?!\.)[0-9]*+)?|\.[0-9]++)(?:[eE][+-]?+[0-9]++)?)
|(?P<str>'BODY(?P<sclose>')?)
|(?P<line>--[^\n\r]*+)
|(?P<block>/\*)
|(?P<op>[~!@#^&|`?+\-*/%<>=]++)
|(?P<estr>[eE]'(?:[^'\\]++|\\.|'')*+(?P<eclose>')?)
|(?P<ustr>[uU]&'(?:[^']++|'')*+(?P<uclose>')?)
|(?P<uqid>[uU]&"(?:[^"]++|"")*+(?P<uqclose>")?)
|(?P<bstr>[bBxX]'[^']*+(?P<bclose>')?)
|(?P<qid>"(?:[^"]++|"")*+(?P<qclose>")?)
|(?P<dollar>\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*+)?\$)
|(?P<param>\$[0-9]++)
|(?P<cast>::|:=|\.\.)
|(?P<any>.)
"""
# One token per match. Every repetition is possessive (nothing is given back) and the
# alternatives start with different characters (an identifier is not E'', U&'', b'' or
# x''; comments come before operators), so a match costs the length it consumes plus a
# constant. The commonest tokens come first: the engine tries alternatives in order.
_TOKEN = re.compile(_TOKEN_SRC.replace("BODY", r"(?:[^']++|'')*+"), re.X | re.S)
_TOKEN_ESC = re.compile(_TOKEN_SRC.replace("BODY", r"(?:[^'\\]++|\\.|'')*+"), re.X | re.S)
_CLOSE = {"estr": "eclose", "ustr": "uclose", "uqid": "uqclose", "str": "sclose",
          "qid": "qclose", "bstr": "bclose"}
_KIND = {"estr": (STRING, "E"), "ustr": (STRING, "U&"), "uqid": (QIDENT, "U&"),
         "str": (STRING, ""), "qid": (QIDENT, ""), "bstr": (STRING, "B"),
         "param": (PARAM, ""),
         "ident": (IDENT, ""), "num": (NUMBER, ""), "cast": (OP, ""), "other": (OP, ""), "any": (OP, "")}


def tokens(sql: str, start: int = 0, end: int | None = None, backslash_escapes: bool = False):
    """The tokens of sql[start:end], comments and space skipped, lazily (a caller that needs
    the first few pays for the first few). Something left open at the end is one
    UNTERMINATED token, and the last."""
    # Dollar quotes and comments are looked for in the whole text (one that ends past n
    # is unterminated here); everything else stops at n.
    text = sql
    n = len(text) if end is None else end
    match = (_TOKEN_ESC if backslash_escapes else _TOKEN).match
    i = start
    while i < n:
        m = match(text, i, n)
        g = m.lastgroup
        j = m.end()
        if g == "ws" or g == "line":
            pass
        elif g == "ident" or g == "other" or g == "num" or g == "any" or g == "cast" \
                or g == "param":
            kind, flavor = _KIND[g]
            yield Token(kind, i, j, m.group(), flavor)
        elif g == "op":
            for a, b in _operator_spans(text, i, j):
                yield Token(OP, a, b, text[a:b])
                j = b
        else:
            if g == "block":
                j = skip_block_comment(text, i)
                kind, flavor = UNTERMINATED, "/*"
            elif g == "dollar":
                j = skip_dollar(text, i, m.group())
                kind, flavor = STRING, "$"
            else:   # a quoted string or identifier
                kind, flavor = _KIND[g]
                if m.start(_CLOSE[g]) < 0:
                    j = n + 1               # runs to the end
            if j > n:
                yield Token(UNTERMINATED, i, n, text[i:n], flavor or kind)
                return
            if g != "block":
                yield Token(kind, i, j, text[i:j], flavor)
        i = j


def _operator_spans(text: str, i: int, j: int) -> list[tuple[int, int]]:
    """PostgreSQL's operator rule for the run of operator characters text[i:j]: cut
    before a comment start, and trailing + or - dropped unless the operator has one of
    ~!@#^&|`?% (each dropped character is then an operator of its own). PostgreSQL
    re-scans the dropped tail; here it is split in one pass, so a long run costs linear
    time. The spans may end before j (at a comment)."""
    for mark in ("/*", "--"):
        k = text.find(mark, i, j)
        if k > i:
            j = min(j, k)
    j = max(j, i + 1)
    op = text[i:j]
    if len(op) == 1 or any(ch in op for ch in "~!@#^&|`?%"):
        return [(i, j)]
    k = j
    while k - i > 1 and text[k - 1] in "+-":
        k -= 1
    return [(i, k)] + [(t, t + 1) for t in range(k, j)]
