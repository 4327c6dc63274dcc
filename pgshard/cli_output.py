"""What the `pgshard` REST commands print: JSON as the API answered, or aligned text tables
and fields."""

from __future__ import annotations

import json
from collections.abc import Callable

import click


def answer(reply, as_json: bool, show: str | Callable[[object], None]) -> None:
    """The reply as JSON with --json, else show: a line to print, or what prints the reply."""
    if as_json:
        echo_json(reply)
    elif isinstance(show, str):
        click.echo(show)
    else:
        show(reply)


def items(reply, key: str):
    """The list in a reply that is either the list itself or {key: list, ...}."""
    if isinstance(reply, dict) and key in reply:
        return reply[key]
    return reply if isinstance(reply, list | dict) else []


def item(reply, key: str) -> dict:
    if isinstance(reply, dict) and isinstance(reply.get(key), dict):
        return reply[key]
    return reply if isinstance(reply, dict) else {"value": reply}


def echo_json(doc) -> None:
    click.echo(json.dumps(doc, indent=2))


def echo_notes(reply) -> None:
    # The sidecar explains follow-ups (e.g. that a rebalance job is needed) in these fields.
    if isinstance(reply, dict):
        for key in ("message", "detail", "note", "warning"):
            if isinstance(reply.get(key), str) and reply[key]:
                click.echo(reply[key])


def cell(key: str, value) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | tuple):
        return ", ".join(cell(key, v) for v in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key == "ownership" and isinstance(value, int | float):
        return f"{100 * value:.1f}%"
    return str(value)


def echo_table(rows, columns: list[str] | None, *, empty: str = "none") -> None:
    """Rows of dicts as an aligned text table; columns the rows lack are left out."""
    rows = [r if isinstance(r, dict) else {"value": r} for r in rows or []]
    if not rows:
        click.echo(f"({empty})")
        return
    seen = list(dict.fromkeys(k for r in rows for k in r))
    columns = [c for c in columns if c in seen] if columns else seen
    cells = [[cell(c, r.get(c)) for c in columns] for r in rows]
    headers = [c.upper().replace("_", " ") for c in columns]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]
    for line in [headers, *cells]:
        click.echo("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())


def echo_fields(obj: dict) -> None:
    width = max((len(k) for k in obj), default=0)
    for key, value in obj.items():
        click.echo(f"{key.ljust(width)}  {cell(key, value)}")


def flatten(obj: dict, prefix: str = "") -> dict:
    """Nested objects as dotted keys: {"store": {"reachable": true}} → {"store.reachable": true}."""
    out = {}
    for key, value in obj.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
