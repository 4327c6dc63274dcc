"""A linear-time SQL lexer, pure: comment spans, statement spans and tokens, as PostgreSQL's
scanner sees them (strings, E'' escapes, dollar quotes, quoted identifiers, nested /* */).

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
_SPACE = re.compile(r"[ \t\n\r\f\v]*")
_NOT_SPACE = re.compile(r"[^ \t\n\r\f\v]")
# PostgreSQL: ident_start [A-Za-z\200-\377_], ident_cont adds [0-9$]; dollar-quote tags
# are identifiers without '$'.
_IDENT_CONT = re.compile(r"[A-Za-z0-9_$\x80-\U0010ffff]*")
_TAG_CONT = re.compile(r"[A-Za-z0-9_\x80-\U0010ffff]*")
_DIGITS = re.compile(r"[0-9]*")
_OP_CHARS = re.compile(r"[~!@#^&|`?+\-*/%<>=]*")
_STR_STOP = re.compile(r"['\\]")
_COMMENT_MARK = re.compile(r"/\*|\*/")   # two fixed two-character strings: no backtracking
_EOL = re.compile(r"[\n\r]")


def _is_ident_start(c: str) -> bool:
    return c.isascii() and (c.isalpha() or c == "_") or not c.isascii()


def _is_word(c: str) -> bool:
    return c.isascii() and (c.isalnum() or c in "_$") or not c.isascii()


# ------------------------------------------------------------ the pieces (shared)

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
    i, n, saw = p + 1, len(sql), False
    while True:
        m = _STR_STOP.search(sql, i)
        if m is None:
            return n + 1, saw
        j = m.start()
        if sql[j] == "\\":
            saw = True
            i = j + 2 if escapes else j + 1
            continue
        if j + 1 < n and sql[j + 1] == "'":
            i = j + 2
            continue
        return j + 1, saw


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
    comments: list[tuple[int, int]] = []
    statements: list[tuple[int, int]] = []
    ambiguous = False
    n = len(sql)
    pos = 0            # everything before pos is consumed
    stmt_start = 0
    has_code = False   # the current statement has something besides space and comments
    search = _SPECIAL.search
    while True:
        m = search(sql, pos)
        p = n if m is None else m.start()
        if not has_code and p > pos and _NOT_SPACE.search(sql, pos, p) is not None:
            has_code = True
        if m is None:
            break
        c = sql[p]
        if c == "'":
            esc = backslash_escapes or _escape_prefix(sql, p, pos)
            end, saw = skip_string(sql, p, esc)
            if saw and not esc:
                ambiguous = True
            pos, has_code = end, True
        elif c == '"':
            pos, has_code = skip_quoted_ident(sql, p), True
        elif c == "$":
            i = p
            while i > pos and _is_word(sql[i - 1]):
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


def comment_body(sql: str, span: tuple[int, int]) -> str | None:
    """The text inside a terminated /* */ comment, else None."""
    s, e = span
    if e - s < 4 or sql[e - 2:e] != "*/":
        return None
    return sql[s + 2:e - 2]


# ------------------------------------------------------------ tokens

IDENT, QIDENT, STRING, NUMBER, PARAM, OP = "ident", "qident", "string", "number", "param", "op"
UNTERMINATED = "unterminated"   # a string, identifier or comment that never ends


@dataclass(frozen=True, slots=True)
class Token:
    kind: str
    start: int
    end: int
    text: str            # as written
    flavor: str = ""     # STRING: "", "E", "U&" or "$"


def tokens(sql: str, start: int = 0, end: int | None = None, backslash_escapes: bool = False):
    """The tokens of sql[start:end], comments and space skipped, lazily (a caller that needs
    the first few pays for the first few). Something left open at the end is one
    UNTERMINATED token, and the last."""
    limit = len(sql) if end is None else end
    for t in _tokens(sql, start, end, backslash_escapes):
        if t.end > limit:
            yield Token(UNTERMINATED, t.start, limit, sql[t.start:limit], t.flavor or t.kind)
            return
        yield t


def _tokens(sql: str, start: int, end: int | None, backslash_escapes: bool):
    n = len(sql) if end is None else end
    text = sql if end is None else sql[:end]
    i = start
    while True:
        i = _SPACE.match(text, i).end()
        if i >= n:
            return
        c = text[i]
        if c == "-" and text.startswith("--", i):
            i = skip_line_comment(text, i)
            continue
        if c == "/" and text.startswith("/*", i):
            j = skip_block_comment(text, i)
            if j > n:
                yield Token(UNTERMINATED, i, j, text[i:], "/*")
            i = j
            continue
        if c == "'":
            j, _ = skip_string(text, i, backslash_escapes)
            yield Token(STRING, i, j, text[i:j])
            i = j
            continue
        if c == '"':
            j = skip_quoted_ident(text, i)
            yield Token(QIDENT, i, j, text[i:j])
            i = j
            continue
        if c in "eE" and text.startswith("'", i + 1):
            j, _ = skip_string(text, i + 1, True)
            yield Token(STRING, i, j, text[i:j], "E")
            i = j
            continue
        if c in "uU" and text.startswith("&'", i + 1):
            j, _ = skip_string(text, i + 2, False)
            yield Token(STRING, i, j, text[i:j], "U&")
            i = j
            continue
        if c in "uU" and text.startswith('&"', i + 1):
            j = skip_quoted_ident(text, i + 2)
            yield Token(QIDENT, i, j, text[i:j], "U&")
            i = j
            continue
        if c == "$":
            tag = dollar_tag(text, i)
            if tag is not None:
                j = skip_dollar(text, i, tag)
                yield Token(STRING, i, j, text[i:j], "$")
            else:
                j = _DIGITS.match(text, i + 1).end()
                if j > i + 1:
                    yield Token(PARAM, i, j, text[i:j])
                else:
                    j = i + 1
                    yield Token(OP, i, j, "$")
            i = j
            continue
        if "0" <= c <= "9" or (c == "." and "0" <= text[i + 1:i + 2] <= "9"):
            j = _number_end(text, i)
            yield Token(NUMBER, i, j, text[i:j])
            i = j
            continue
        if _is_ident_start(c):
            j = _IDENT_CONT.match(text, i).end()
            yield Token(IDENT, i, j, text[i:j])
            i = j
            continue
        if c in "~!@#^&|`?+-*/%<>=":
            for a, b in _operator_spans(text, i):
                yield Token(OP, a, b, text[a:b])
                i = b
            continue
        # , ( ) [ ] . ; : and anything else: one character
        if c == ":" and text.startswith("::", i):
            yield Token(OP, i, i + 2, "::")
            i += 2
            continue
        yield Token(OP, i, i + 1, c)
        i += 1


def _number_end(text: str, i: int) -> int:
    j = _DIGITS.match(text, i).end()
    if text.startswith(".", j) and not text.startswith("..", j):
        j = _DIGITS.match(text, j + 1).end()
    if text[j:j + 1] in ("e", "E"):
        k = j + 1
        if text[k:k + 1] in ("+", "-"):
            k += 1
        d = _DIGITS.match(text, k).end()
        if d > k:
            j = d
    return j


def _operator_spans(text: str, i: int) -> list[tuple[int, int]]:
    """PostgreSQL's operator rule: the longest run of operator characters, cut before a
    comment start, and trailing + or - dropped unless the operator has one of ~!@#^&|`?%
    (each dropped character is then an operator of its own). PostgreSQL re-scans the
    dropped tail; here it is split in one pass, so a long run costs linear time."""
    j = _OP_CHARS.match(text, i).end()
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
