"""Client JSON bodies → Python values: the one parser every REST handler uses, answering 400
(never a 500 or a logged traceback) for invalid JSON, absurd nesting or a wrong top-level type."""

from __future__ import annotations

import json

from pgshard.control.errors import BadRequest

# No request schema nests deeper than 3; 64 leaves room while keeping every later recursive
# walk (schema validation, json.dumps of /v1/execute parameters) far from the stack limit.
MAX_DEPTH = 64

_TYPE_NAMES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
               int: "a number", float: "a number", type(None): "null"}


def _no_constants(name: str):
    # json.loads accepts NaN/Infinity, which are not JSON (RFC 8259) and not in any schema.
    raise ValueError(f"{name} is not valid JSON")


def parse_json_body(raw: bytes, *, max_depth: int = MAX_DEPTH, top: type = dict):
    """The JSON value in `raw`; BadRequest unless it is valid JSON of type `top` nested at
    most `max_depth` levels deep (a scalar is depth 0, `[]` and `{}` depth 1)."""
    try:
        data = json.loads(raw, parse_constant=_no_constants)
    except RecursionError:
        # The C decoder gives up near the interpreter's recursion limit (~1000 levels).
        raise BadRequest(f"the JSON body nests deeper than {max_depth} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, top):
        raise BadRequest(f"the body must be {_TYPE_NAMES.get(top, top.__name__)}, not "
                         f"{_TYPE_NAMES.get(type(data), type(data).__name__)}")
    # Every level opens with a bracket, so a body with few brackets cannot be deep.
    if raw.count(b"[") + raw.count(b"{") > max_depth and json_depth(data) > max_depth:
        raise BadRequest(f"the JSON body nests deeper than {max_depth} levels")
    return data


def json_depth(value) -> int:
    """How deeply `value` nests containers, counted without recursion."""
    deepest = 0
    stack = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, dict | list))
    return deepest
