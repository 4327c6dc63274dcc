"""The README's Code map names every module of the pgshard package, and every module opens
with a docstring saying what it owns."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "pgshard"


def _modules():
    for p in sorted(PACKAGE.rglob("*.py")):
        if p.name != "__init__.py" and "static" not in p.parts:
            yield p


def _code_map() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Code map")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def test_every_module_is_in_the_code_map():
    section = _code_map()
    missing = [str(p.relative_to(ROOT)) for p in _modules() if f"`{p.name}`" not in section]
    assert not missing, f"modules missing from the README's Code map: {missing}"


def test_every_module_has_a_docstring():
    bare = [str(p.relative_to(ROOT)) for p in _modules()
            if p.name != "__main__.py" and not ast.get_docstring(ast.parse(p.read_text()))]
    assert not bare, f"modules without a docstring saying what they own: {bare}"
