#!/usr/bin/env python3
"""Fill ${NAME} placeholders of a pgshard.toml from the environment (secrets stay out of the
file). Values are escaped for TOML basic strings, so put each placeholder inside "…"; an
unset variable is an error, not an empty string; comment lines are left as they are.
Usage: render-config.py FILE > OUT"""

import os
import re
import sys

PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def render(text: str, env: dict) -> str:
    lines = text.splitlines(keepends=True)
    active = [line for line in lines if not line.lstrip().startswith("#")]
    missing = sorted({m for line in active for m in PLACEHOLDER.findall(line) if m not in env})
    if missing:
        raise SystemExit(f"pgshard-render-config: unset environment variables: "
                         f"{', '.join(missing)}")

    def value(m: re.Match) -> str:
        v = env[m.group(1)]
        return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "".join(line if line.lstrip().startswith("#") else PLACEHOLDER.sub(value, line)
                   for line in lines)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    with open(sys.argv[1], encoding="utf-8") as f:
        sys.stdout.write(render(f.read(), dict(os.environ)))
