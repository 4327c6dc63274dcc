"""The per-query modules built with Cython: which run compiled, and PGSHARD_PURE to run none.

The same .py sources are compiled when the build has Cython and a C compiler (setup.py reads
HOT_MODULES from here) and run as plain Python otherwise. `PGSHARD_PURE=1` at build time
builds no extension; at run time it makes pgshard import the .py sources even where compiled
modules are installed beside them (`PGSHARD_PURE=client,backend`: just those). In a source checkout a compiled module older than its .py
is ignored (status() lists it as stale), so an edit is never shadowed by an old build.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from importlib.machinery import EXTENSION_SUFFIXES, ModuleSpec, SourceFileLoader
from pathlib import Path

# The modules on the per-query path, in the order setup.py compiles them. Not
# pgshard.proxy.client: compiled as it is (untyped), it costs MORE instructions per -M simple
# query than CPython 3.11's specialising interpreter (whose inline caches make its many
# `self.x` lookups cheap; Cython's generic attribute lookups do not): 152.8k vs 140.3k per
# query in the proxy's handlers (make bench-instructions), while it saves 3.7k of 190.7k in
# -M extended. It belongs here once its classes are declared (cdef class / .pxd).
HOT_MODULES = (
    "pgshard.protocol.encoding",
    "pgshard.protocol.framing",
    "pgshard.protocol.messages",
    "pgshard.protocol.replies",
    "pgshard.proxy.backend",
    "pgshard.proxy.units",
    "pgshard.proxy.statements",
    "pgshard.ring.hashing",
    "pgshard.ring.ring",
    "pgshard.sql.classify",
    "pgshard.sql.fastkey",
    "pgshard.sql.lex",
    "pgshard.sql.sticky",
    "pgshard.sql.textmemo",
)

PURE_ENV = "PGSHARD_PURE"
_PACKAGE_DIR = Path(__file__).resolve().parent


def pure_modules() -> set[str]:
    """The hot modules PGSHARD_PURE asks to run from source: all for 1/true/yes, else a
    comma-separated list of module names (full, or their last part: client,backend)."""
    value = os.environ.get(PURE_ENV, "").strip()
    if value.lower() in ("", "0", "false", "no"):
        return set()
    if value.lower() in ("1", "true", "yes", "all"):
        return set(HOT_MODULES)
    wanted = {w.strip() for w in value.split(",") if w.strip()}
    return {n for n in HOT_MODULES if n in wanted or n.rsplit(".", 1)[1] in wanted}


def pure_requested() -> bool:
    """PGSHARD_PURE set: every hot module (or the ones it lists) runs from source."""
    return bool(pure_modules())


def _source_checkout() -> bool:
    """True when pgshard runs from its source tree (an editable install), not a wheel."""
    return (_PACKAGE_DIR.parent / "setup.py").is_file()


def _paths(name: str) -> tuple[Path, list[Path]]:
    """The module's .py and any compiled files beside it."""
    rel = Path(*name.split(".")[1:])
    base = _PACKAGE_DIR / rel
    return base.with_suffix(".py"), [base.with_name(base.name + s) for s in EXTENSION_SUFFIXES
                                     if base.with_name(base.name + s).is_file()]


def stale(name: str) -> bool:
    """A compiled file of name is older than its .py or .pxd (in a source checkout only)."""
    source, built = _paths(name)
    if not built or not source.is_file() or not _source_checkout():
        return False
    decl = source.with_suffix(".pxd")   # Cython declarations beside the .py, if any
    newest = max(source.stat().st_mtime, decl.stat().st_mtime if decl.is_file() else 0)
    return any(b.stat().st_mtime < newest for b in built)


def needs_build() -> list[str]:
    """Hot modules with no compiled file beside their .py, or an older one."""
    return [n for n in HOT_MODULES if not _paths(n)[1] or stale(n)]


class _SourceFinder:
    """A meta path finder that imports the hot modules from their .py sources."""

    def __init__(self, names: set[str]):
        self.names = names

    def find_spec(self, fullname: str, path=None, target=None) -> ModuleSpec | None:
        if fullname not in self.names:
            return None
        source, _ = _paths(fullname)
        if not source.is_file():
            return None
        return importlib.util.spec_from_file_location(
            fullname, source, loader=SourceFileLoader(fullname, str(source)))


def install_finder() -> None:
    """Called by pgshard/__init__: route PGSHARD_PURE and stale compiled modules to .py."""
    names = pure_modules() | {n for n in HOT_MODULES if stale(n)}
    if names:
        sys.meta_path.insert(0, _SourceFinder(names))


def is_compiled(module) -> bool:
    origin = getattr(getattr(module, "__spec__", None), "origin", None) or ""
    return any(origin.endswith(s) for s in EXTENSION_SUFFIXES)


def status() -> dict:
    """{"compiled": any hot module runs compiled, "modules": those, "stale": compiled files
    ignored as older than their source, "pure": PGSHARD_PURE}.

    Imports the hot modules (the proxy imports them all anyway)."""
    compiled = [name for name in HOT_MODULES if is_compiled(importlib.import_module(name))]
    return {"compiled": bool(compiled), "modules": compiled, "pure": pure_requested(),
            "stale": [n for n in HOT_MODULES if n not in compiled and stale(n)]}


def describe() -> str:
    """One line for `pgshard --version`."""
    s = status()
    if s["compiled"]:
        return f"compiled core: yes ({len(s['modules'])}/{len(HOT_MODULES)} modules)"
    return "compiled core: no (PGSHARD_PURE)" if s["pure"] else "compiled core: no"
