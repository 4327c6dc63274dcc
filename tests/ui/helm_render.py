"""A small renderer for Helm chart templates, for tests on machines without `helm`: Go's
text/template (actions, trim markers, comments, if/else/range/with/define, variables,
pipelines) and the Sprig/Helm functions the pgshard chart uses. Values print as Helm prints
them (numbers from YAML are float64 in Helm: 5.0 prints as 5). Unknown functions and
fields of non-maps raise, so a template this cannot render fails its test."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

_ACTION = re.compile(r"{{(-\s)?(.*?)(\s-)?}}", re.S)
_TOKEN = re.compile(r"""\s*(?:
    (?P<str>"(?:[^"\\]|\\.)*") | (?P<raw>`[^`]*`) | (?P<num>-?\d+(?:\.\d+)?) |
    (?P<decl>:=|=) | (?P<pipe>\|) | (?P<lp>\() | (?P<rp>\)) | (?P<comma>,) |
    (?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*) | (?P<field>(?:\.[A-Za-z0-9_]+)+|\.) |
    (?P<ident>[A-Za-z_][A-Za-z0-9_]*))""", re.X)


class RenderError(Exception):
    pass


# ---------------------------------------------------------------------- parsing

@dataclass
class Node:
    kind: str                       # text | out | if | range | with | define | decl
    text: str = ""
    pipe: list = field(default_factory=list)
    body: list = field(default_factory=list)
    other: list = field(default_factory=list)   # else branch
    names: list = field(default_factory=list)   # declared variables


def tokenize(src: str) -> list[tuple[str, str]]:
    """Text and action pieces, with {{- and -}} whitespace trimming applied."""
    out: list[tuple[str, str]] = []
    pos, trim_next = 0, False
    for m in _ACTION.finditer(src):
        text = src[pos:m.start()]
        if trim_next:
            text = text.lstrip()
        if m.group(1):
            text = text.rstrip()
        out.append(("text", text))
        inner = m.group(2).strip()
        if not (inner.startswith("/*") and inner.endswith("*/")):
            out.append(("action", inner))
        trim_next = bool(m.group(3))
        pos = m.end()
    text = src[pos:]
    out.append(("text", text.lstrip() if trim_next else text))
    return out


def lex(expr: str) -> list[tuple[str, str]]:
    toks, pos = [], 0
    expr = expr.rstrip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None or m.end() == pos:
            raise RenderError(f"cannot lex {expr[pos:]!r}")
        kind = m.lastgroup
        toks.append((kind, m.group(kind)))
        pos = m.end()
    return toks


def parse(src: str) -> tuple[list[Node], dict[str, list[Node]]]:
    pieces = tokenize(src)
    defines: dict[str, list[Node]] = {}
    nodes, i = _parse_block(pieces, 0, defines, top=True)
    return nodes, defines


def _parse_block(pieces, i, defines, top=False):
    nodes: list[Node] = []
    while i < len(pieces):
        kind, s = pieces[i]
        i += 1
        if kind == "text":
            if s:
                nodes.append(Node("text", text=s))
            continue
        word = s.split(None, 1)[0] if s else ""
        rest = s[len(word):].strip()
        if word in ("end", "else"):
            if top:
                raise RenderError(f"unexpected {{{{ {s} }}}}")
            return nodes, i - 1
        if word in ("if", "with", "range", "define"):
            node = Node(word)
            if word == "define":
                name = json.loads(rest)
            elif word == "range" and ":=" in rest:
                names, expr = rest.split(":=", 1)
                node.names = [n.strip() for n in names.split(",")]
                node.pipe = lex(expr)
            else:
                node.pipe = lex(rest)
            node.body, i = _parse_block(pieces, i, defines)
            if pieces[i][1].startswith("else"):
                node.other, i = _parse_block(pieces, i + 1, defines)
            if pieces[i][1] != "end":
                raise RenderError(f"expected end, got {pieces[i][1]!r}")
            i += 1
            if word == "define":
                defines[name] = node.body
            else:
                nodes.append(node)
            continue
        toks = lex(s)
        if len(toks) >= 2 and toks[0][0] == "var" and toks[1][0] == "decl":
            nodes.append(Node("decl", names=[toks[0][1]], pipe=toks[2:]))
        else:
            nodes.append(Node("out", pipe=toks))
    return nodes, i


# ---------------------------------------------------------------------- evaluation

def go_str(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() and abs(v) < 1e21 else repr(v)
    if isinstance(v, (dict, list)):
        raise RenderError(f"printing a {type(v).__name__} directly: {v!r}")
    return str(v)


def truthy(v) -> bool:
    return not (v is None or v is False or v == 0 or v == "" or v == [] or v == {})


def _to_yaml(v) -> str:
    if v is None:
        return "null"
    # Helm marshals through JSON: a float64 that is a whole number is written as an integer.
    return yaml.safe_dump(_whole_as_int(v), sort_keys=True,
                          default_flow_style=False).rstrip("\n")


def _whole_as_int(v):
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, dict):
        return {k: _whole_as_int(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_whole_as_int(x) for x in v]
    return v


def _indent(n, s):
    pad = " " * int(n)
    return pad + str(s).replace("\n", "\n" + pad)


def _required(msg, v):
    if v is None or v == "":
        raise RenderError(f"required: {msg}")
    return v


def _printf(fmt, *args):
    return re.sub(r"%[sdv]", "{}", fmt).format(*(go_str(a) for a in args))


def _dict(*kv):
    return {kv[i]: kv[i + 1] for i in range(0, len(kv), 2)}


class Renderer:
    """Renders one chart: its templates' defines are shared, as in Helm."""

    def __init__(self, chart_dir: Path, values: dict, release: str = "rel"):
        self.chart_dir = chart_dir
        meta = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
        chart = {"Name": meta["name"], "Version": meta["version"],
                 "AppVersion": meta.get("appVersion")}
        self.templates = {p.name: p.read_text() for p in sorted((chart_dir / "templates")
                                                                  .iterdir())}
        self.defines: dict[str, list[Node]] = {}
        self.parsed: dict[str, list[Node]] = {}
        for name, src in self.templates.items():
            nodes, defines = parse(src)
            self.defines.update(defines)
            self.parsed[name] = nodes
        self.root = {"Values": _numbers_as_float(values), "Chart": chart,
                     "Release": {"Name": release, "Namespace": "default", "Service": "Helm"},
                     "Template": {"BasePath": f"{meta['name']}/templates"}}
        self.funcs = {
            "include": self._include, "quote": lambda v: json.dumps(go_str(v)),
            "toYaml": _to_yaml, "nindent": lambda n, s: "\n" + _indent(n, s),
            "indent": _indent, "required": _required, "printf": _printf,
            "print": lambda *a: "".join(go_str(x) for x in a),
            "trunc": lambda n, s: s[:int(n)], "trimSuffix": lambda suf, s: s.removesuffix(suf),
            "default": lambda d, v=None: v if truthy(v) else d, "dict": _dict,
            "eq": lambda a, b: a == b, "not": lambda v: not truthy(v),
            "sha256sum": lambda s: hashlib.sha256(s.encode()).hexdigest(),
        }

    def render(self, name: str) -> str:
        return self._exec(self.parsed[name], self.root, {"$": self.root})

    def render_all(self) -> dict[str, str]:
        return {n: self.render(n) for n in self.parsed if not n.startswith("_")}

    def _include(self, name, data):
        if name in self.templates:     # include (print $.Template.BasePath "/x.yaml")
            return self.render(name)
        base = f"{self.root['Template']['BasePath']}/"
        if name.startswith(base) and name[len(base):] in self.templates:
            return self.render(name[len(base):])
        if name not in self.defines:
            raise RenderError(f"include of undefined template {name!r}")
        return self._exec(self.defines[name], data, {"$": data})

    def _exec(self, nodes, dot, scope) -> str:
        out = []
        scope = dict(scope)
        for n in nodes:
            if n.kind == "text":
                out.append(n.text)
            elif n.kind == "out":
                out.append(go_str(self._pipeline(n.pipe, dot, scope)))
            elif n.kind == "decl":
                scope[n.names[0]] = self._pipeline(n.pipe, dot, scope)
            elif n.kind == "if":
                branch = n.body if truthy(self._pipeline(n.pipe, dot, scope)) else n.other
                out.append(self._exec(branch, dot, scope))
            elif n.kind == "with":
                v = self._pipeline(n.pipe, dot, scope)
                out.append(self._exec(n.body, v, scope) if truthy(v)
                           else self._exec(n.other, dot, scope))
            elif n.kind == "range":
                v = self._pipeline(n.pipe, dot, scope)
                items = list(v.items()) if isinstance(v, dict) else list(enumerate(v or []))
                if not items:
                    out.append(self._exec(n.other, dot, scope))
                for k, item in items:
                    inner = dict(scope)
                    if len(n.names) == 2:
                        inner[n.names[0]], inner[n.names[1]] = k, item
                    elif len(n.names) == 1:
                        inner[n.names[0]] = item
                    out.append(self._exec(n.body, item, inner))
        return "".join(out)

    def _pipeline(self, toks, dot, scope):
        commands, depth, cur = [], 0, []
        for t in toks:
            if t[0] == "lp":
                depth += 1
            elif t[0] == "rp":
                depth -= 1
            if t[0] == "pipe" and depth == 0:
                commands.append(cur)
                cur = []
            else:
                cur.append(t)
        commands.append(cur)
        value, first = None, True
        for cmd in commands:
            value = self._command(cmd, dot, scope, None if first else (value,))
            first = False
        return value

    def _command(self, toks, dot, scope, piped):
        operands, i = [], 0
        while i < len(toks):
            kind, s = toks[i]
            if kind == "lp":
                depth, j = 1, i + 1
                while depth:
                    depth += {"lp": 1, "rp": -1}.get(toks[j][0], 0)
                    j += 1
                operands.append(("value", self._pipeline(toks[i + 1:j - 1], dot, scope)))
                i = j
                continue
            operands.append((kind, s))
            i += 1
        head_kind, head = operands[0]
        if head_kind == "ident" and head not in ("true", "false", "nil"):
            if head not in self.funcs:
                raise RenderError(f"unknown function {head!r}")
            args = [self._operand(o, dot, scope) for o in operands[1:]]
            return self.funcs[head](*args, *(piped or ()))
        if len(operands) != 1 or piped:
            raise RenderError(f"cannot apply {operands!r}")
        return self._operand(operands[0], dot, scope)

    def _operand(self, op, dot, scope):
        kind, s = op
        if kind == "value":
            return s
        if kind == "str":
            return json.loads(s)
        if kind == "raw":
            return s[1:-1]
        if kind == "num":
            return float(s) if "." in s else int(s)
        if kind == "ident":
            return {"true": True, "false": False, "nil": None}[s]
        if kind == "field":
            return dot if s == "." else _walk(dot, s[1:].split("."))
        if kind == "var":
            name, _, path = s.partition(".")
            if name not in scope:
                raise RenderError(f"undefined variable {name}")
            return _walk(scope[name], path.split(".")) if path else scope[name]
        raise RenderError(f"unexpected operand {op!r}")


def _walk(v, path):
    for key in path:
        if v is None:
            return None
        if not isinstance(v, dict):
            raise RenderError(f"field {key} of a non-map {v!r}")
        v = v.get(key)
    return v


def _numbers_as_float(v):
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        return float(v)
    if isinstance(v, dict):
        return {k: _numbers_as_float(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_numbers_as_float(x) for x in v]
    return v


def merge(base: dict, override: dict) -> dict:
    """Values with overrides applied, as --set/-f do (maps merged, the rest replaced)."""
    out = dict(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
