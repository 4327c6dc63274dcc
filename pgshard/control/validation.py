"""A small JSON Schema validator for the subset the OpenAPI request schemas use.

Keywords: type (name or list), enum, properties, required, additionalProperties (bool or
schema), items, minItems, maxItems, minProperties, minLength, maxLength, pattern (the whole
string must match), minimum, maximum. Unknown keywords (description, example) are ignored.
"""

from __future__ import annotations

import re
from functools import lru_cache


class SchemaError(ValueError):
    """The instance does not match the schema; `path` says where (JSONPath-like)."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


@lru_cache(maxsize=256)
def _regex(pattern: str) -> re.Pattern:
    # Schemas anchor with ^...$; fullmatch keeps "abc\n" from passing as Python's $ would.
    body = pattern.removeprefix("^").removesuffix("$")
    return re.compile(body)


def matches(pattern: str, s: str) -> bool:
    """Whether the whole of `s` matches a schema pattern."""
    return _regex(pattern).fullmatch(s) is not None


def validate(instance, schema: dict, path: str = "$") -> None:
    """Raise SchemaError at the first place `instance` breaks `schema`."""
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else types
        if not any(_TYPES[t](instance) for t in names):
            raise SchemaError(path, f"expected {' or '.join(names)}, got {_json_type(instance)}")
    if "enum" in schema and instance not in schema["enum"]:
        raise SchemaError(path, "must be one of " + ", ".join(map(str, schema["enum"])))
    if isinstance(instance, dict):
        _validate_object(instance, schema, path)
    elif isinstance(instance, list):
        if len(instance) < schema.get("minItems", 0):
            raise SchemaError(path, f"needs at least {schema['minItems']} item(s)")
        if "maxItems" in schema and len(instance) > schema["maxItems"]:
            raise SchemaError(path, f"allows at most {schema['maxItems']} item(s)")
        if "items" in schema:
            for i, item in enumerate(instance):
                validate(item, schema["items"], f"{path}[{i}]")
    elif isinstance(instance, str):
        if len(instance) < schema.get("minLength", 0):
            raise SchemaError(path, f"must be at least {schema['minLength']} character(s) long")
        if "maxLength" in schema and len(instance) > schema["maxLength"]:
            raise SchemaError(path, f"must be at most {schema['maxLength']} characters long")
        if "pattern" in schema and not _regex(schema["pattern"]).fullmatch(instance):
            raise SchemaError(path, f"does not match {schema['pattern']}")
    elif _TYPES["number"](instance):
        if "minimum" in schema and instance < schema["minimum"]:
            raise SchemaError(path, f"must be >= {schema['minimum']}")
        if "maximum" in schema and instance > schema["maximum"]:
            raise SchemaError(path, f"must be <= {schema['maximum']}")


def _validate_object(instance: dict, schema: dict, path: str) -> None:
    props = schema.get("properties", {})
    for name in schema.get("required", ()):
        if name not in instance:
            raise SchemaError(path, f"missing required field {name!r}")
    if len(instance) < schema.get("minProperties", 0):
        raise SchemaError(path, f"needs at least {schema['minProperties']} field(s)")
    extra = schema.get("additionalProperties", True)
    for name, value in instance.items():
        where = f"{path}.{name}"
        if name in props:
            validate(value, props[name], where)
        elif extra is False:
            raise SchemaError(where, "unknown field")
        elif isinstance(extra, dict):
            validate(value, extra, where)


def _json_type(v) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _TYPES[name](v):
            return name
    return type(v).__name__
