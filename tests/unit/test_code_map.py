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


def test_every_class_of_the_data_plane_has_a_docstring():
    bare = []
    for p in sorted((PACKAGE / "proxy").glob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ClassDef) and not ast.get_docstring(node):
                bare.append(f"{p.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not bare, f"classes without a docstring: {bare}"


def test_the_client_session_is_composed_not_mixed_in():
    """ClientSession's bases are the asyncio protocol and the server-callback protocol;
    its parts are objects it holds (README, Code map)."""
    from pgshard.proxy.backend import ServerClient
    from pgshard.proxy.client import ClientSession
    assert [b.__name__ for b in ClientSession.__bases__] == ["Protocol", ServerClient.__name__]
