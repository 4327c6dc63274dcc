"""Build: the per-query modules (pgshard.compiled.HOT_MODULES) compiled with Cython.

Pure-Python mode: the same .py sources become extension modules when Cython and a C
compiler are there, and stay plain Python otherwise (each extension is optional: a failed
compile warns and the .py is used). PGSHARD_PURE=1 builds no extension at all.
"""

import os
import re
import shutil
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
# Directives: Python semantics kept as they are (annotations are not C types; only what a
# module declares through the `cython` shadow module or a .pxd beside it is typed).
DIRECTIVES = {
    "language_level": 3,
    "annotation_typing": False,
    "binding": True,
    "embedsignature": True,
}


def hot_modules() -> list[str]:
    """HOT_MODULES read from pgshard/compiled.py's text (the package is not importable yet)."""
    text = (ROOT / "pgshard" / "compiled.py").read_text()
    block = re.search(r"HOT_MODULES = \((.*?)\)", text, re.S).group(1)
    return re.findall(r'"([\w.]+)"', block)


def extensions() -> list:
    if os.environ.get("PGSHARD_PURE", "").strip().lower() not in ("", "0", "false", "no"):
        return []
    try:
        from Cython.Build import cythonize
        from Cython.Compiler import Options
    except ImportError:
        print("pgshard: Cython not found, building without compiled modules")
        return []
    # A name Python would look up at run time (and maybe fail on) is no compile error.
    Options.error_on_unknown_names = False
    out = []
    for name in hot_modules():
        ext = Extension(name, [str(Path(*name.split(".")).with_suffix(".py"))], optional=True)
        try:
            out += cythonize([ext], compiler_directives=DIRECTIVES, quiet=True)
        except Exception as exc:   # Cython's CompileError: this module stays plain Python
            print(f"pgshard: {name} not compiled ({exc}); it runs as Python")
    return out


class BuildExt(build_ext):
    """build_ext whose in-place copy replaces a compiled module atomically: a running
    pgshard has the old file mapped, and overwriting it in place could crash it."""

    def copy_file(self, infile, outfile, *args, **kwargs):
        if not str(outfile).endswith(tuple(EXTENSION_SUFFIXES)):
            return super().copy_file(infile, outfile, *args, **kwargs)
        tmp = f"{outfile}.tmp-{os.getpid()}"
        shutil.copyfile(infile, tmp)
        os.replace(tmp, outfile)
        return outfile, True


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
