"""The sidecar's one JSON body parser: valid objects pass, anything else is a 400 with a
reason, deep nesting included, in time linear in the body."""

from __future__ import annotations

import gc
import time

import pytest

from pgshard.control.errors import BadRequest
from pgshard.control.json_body import MAX_DEPTH, json_depth, parse_json_body


def nested_arrays(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def nested_objects(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


@pytest.mark.parametrize("raw,depth", [
    (b"{}", 1),
    (b'{"a": 1, "b": [1, 2, {"c": null}]}', 3),
    (b'{"s": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}', 1),
    (nested_objects(MAX_DEPTH), MAX_DEPTH),
    (b'{"a": ' + nested_arrays(MAX_DEPTH - 1) + b"}", MAX_DEPTH),
])
def test_accepted(raw, depth):
    assert json_depth(parse_json_body(raw)) == depth


@pytest.mark.parametrize("raw,reason", [
    (b"{not json", "not valid JSON"),
    (b"", "not valid JSON"),
    (b"\xff\xfe\x00", "not valid JSON"),
    (b'{"a": NaN}', "NaN is not valid JSON"),
    (b'{"a": -Infinity}', "not valid JSON"),
    (b"[]", "must be an object, not an array"),
    (b'"x"', "must be an object, not a string"),
    (b"null", "must be an object, not null"),
    (b"1", "must be an object, not a number"),
    (nested_objects(MAX_DEPTH + 1), f"deeper than {MAX_DEPTH}"),
    (b'{"a": ' + nested_arrays(MAX_DEPTH) + b"}", f"deeper than {MAX_DEPTH}"),
    (b'{"a": ' + nested_arrays(500) + b"}", f"deeper than {MAX_DEPTH}"),
    (b'{"a": ' + nested_arrays(10_000) + b"}", f"deeper than {MAX_DEPTH}"),
    (nested_arrays(100_000), f"deeper than {MAX_DEPTH}"),
    (nested_objects(100_000), f"deeper than {MAX_DEPTH}"),
    (b"[" * 1_000_000, f"deeper than {MAX_DEPTH}"),
])
def test_refused(raw, reason):
    with pytest.raises(BadRequest, match=reason):
        parse_json_body(raw)


def test_wide_bodies_are_checked_in_linear_time():
    # Many shallow containers: the depth walk visits each once.
    small = b'{"p": [' + b",".join([b"[[1]]"] * 10_000) + b"]}"
    big = b'{"p": [' + b",".join([b"[[1]]"] * 100_000) + b"]}"
    # CPU time of this thread, not the wall clock (the machine may be busy with others), and
    # no cyclic GC runs in between (its passes grow with the heap and blur the ratio).
    # Ten times the size: linear ~10x, quadratic ~100x.
    gc.collect()
    gc.disable()
    try:
        start = time.thread_time()
        assert json_depth(parse_json_body(small)) == 4
        t_small = time.thread_time() - start
        start = time.thread_time()
        assert json_depth(parse_json_body(big)) == 4
        t_big = time.thread_time() - start
    finally:
        gc.enable()
    assert t_big < max(40 * t_small, 1.0)


def test_array_top_level_when_asked():
    assert parse_json_body(b"[1, 2]", top=list) == [1, 2]
