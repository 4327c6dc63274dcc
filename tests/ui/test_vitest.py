"""The console's component tests (Vitest, jsdom) and its type check, run from pytest so that
`make test` runs them; the bundle is (re)built first when stale, as bootstrap does."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UI = ROOT / "ui"


def _run(cmd: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_bundle_builds():
    done = _run([str(ROOT / "scripts" / "build-ui.sh")], ROOT, 600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    index = ROOT / "pgshard" / "control" / "static" / "ui" / "index.html"
    html = index.read_text()
    assert '<div id="root">' in html and "/ui/assets/" in html
    # Offline: the page loads nothing from another origin.
    assert "http://" not in html and "https://" not in html


def test_vitest_component_tests_pass():
    _run([str(ROOT / "scripts" / "build-ui.sh")], ROOT, 600)   # npm ci when needed
    done = _run(["npm", "test", "--", "--run", "--reporter=verbose"], UI, 600)
    out = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr)
    assert done.returncode == 0, out[-6000:]
    # Vitest's summary line, not test names (one mentions a "failed job"): "Tests  54 passed".
    summary = re.search(r"^\s*Tests\s+(.*)$", out, re.M)
    assert summary is not None and "passed" in summary.group(1), out[-3000:]
    assert "failed" not in summary.group(1), out[-3000:]


def test_typescript_type_check_passes():
    done = _run(["npm", "run", "typecheck", "--silent"], UI, 300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
