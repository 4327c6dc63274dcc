"""Shard key values as a statement writes them (KeyRef) and their canonical key bytes."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pglast import ast

from pgshard.ring import hashing

# Type names a cast may give a key (the last name of the TypeName), with their OID and the
# key kind hashing understands.
_CAST_OIDS = {"int2": hashing.INT2, "int4": hashing.INT4, "int8": hashing.INT8,
              "text": hashing.TEXT, "varchar": hashing.VARCHAR, "bpchar": hashing.BPCHAR,
              "name": hashing.NAME, "uuid": hashing.UUID}
_CAST_KIND = {"int2": "int", "int4": "int", "int8": "int", "uuid": "uuid",
              "text": "text", "varchar": "text", "bpchar": "text", "name": "text"}
_CANONICAL_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")
_TEXTISH_OIDS = frozenset({hashing.TEXT, hashing.VARCHAR, hashing.BPCHAR, hashing.NAME,
                           hashing.UNKNOWN, hashing.UNSPECIFIED})


@dataclass(frozen=True, slots=True)
class KeyRef:
    """One shard key value as written in the statement: a SQL literal or a $n parameter."""

    literal: str | None = None    # the literal's text (e.g. '42', 'abc', a uuid)
    param: int | None = None      # 1-based $n
    cast: str | None = None       # type name when the value is cast (e.g. "int8")

    def resolve(self, params=(), formats=(), oids=(), kind: str = "auto") -> bytes:
        """Canonical key bytes; params/formats/oids as in Bind/Parse (formats may hold 0, 1 or
        one code per parameter). kind (auto|int|uuid|text) is the key column's type when the
        caller knows it: it canonicalises an uncast '007' or an uppercase uuid."""
        want = _CAST_KIND.get(self.cast, kind) if self.cast else kind
        if self.cast and self.cast not in _CAST_KIND:
            raise hashing.UnsupportedKeyType(f"a shard key cast to {self.cast} is not supported")
        if self.param is None:
            return hashing.key_from_literal(self.literal, want)
        i = self.param - 1
        if i >= len(params):
            raise hashing.InvalidKey(f"shard key parameter ${self.param} was not bound")
        fmt = formats[0] if len(formats) == 1 else formats[i] if i < len(formats) else 0
        oid = oids[i] if i < len(oids) else 0
        if oid in (hashing.UNSPECIFIED, hashing.UNKNOWN) and self.cast:
            oid = _CAST_OIDS[self.cast]
        raw = hashing.key_from_param(params[i], fmt, oid)
        if want in ("int", "uuid") and fmt == 0 and oid in _TEXTISH_OIDS:
            return hashing.key_from_literal(raw.decode("utf-8"), want)
        return raw


def normalize_table(name: str) -> str:
    """A table name as the catalog keys it: lower case, public schema implied."""
    name = name.lower()
    return name[len("public."):] if name.startswith("public.") else name


def key_value(node) -> KeyRef | None:
    """The KeyRef of a constant, a $n, or one of them under a single cast to a key type;
    None for anything else, and for literals whose key bytes depend on the column's type."""
    cast = None
    if isinstance(node, ast.TypeCast):
        tn = node.typeName
        if tn is None or tn.arrayBounds or tn.setof or not tn.names:
            return None
        cast = tn.names[-1].sval
        if cast not in _CAST_KIND:
            return None
        node = node.arg
    if isinstance(node, ast.ParamRef):
        return KeyRef(param=node.number, cast=cast)
    if isinstance(node, ast.A_Const) and not node.isnull:
        v = node.val
        if isinstance(v, ast.Integer):
            return KeyRef(literal=str(v.ival), cast=cast)
        if isinstance(v, ast.Float):
            # A bigint too wide for Integer is still a key; 5.0 or 1e3 compares as numeric.
            return KeyRef(literal=v.fval, cast=cast) if _CANONICAL_INT.fullmatch(v.fval) \
                else None
        if isinstance(v, ast.String):
            if cast is None and _ambiguous(v.sval):
                return None
            return KeyRef(literal=v.sval, cast=cast)
    return None


def _ambiguous(text: str) -> bool:
    """An uncast string whose key differs for a text column and an int or uuid column:
    ' 42' or '042' is 42 to a bigint; an uppercase uuid is lower case to a uuid column."""
    for kind in ("int", "uuid"):
        try:
            if hashing.key_from_literal(text, kind) != text.encode("utf-8"):
                return True
        except hashing.InvalidKey:
            pass
    return False
