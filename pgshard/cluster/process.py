"""Running PostgreSQL's client and server programs: finding them, as which OS user, errors."""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path

# The OS account that owns data directories when we run as root (postgres refuses root).
SERVICE_USER = "postgres"


class ClusterError(RuntimeError):
    """A local cluster operation failed; the message carries the output / server log tail."""


def find_pg_bindir() -> Path:
    """Return the directory holding initdb, pg_ctl, postgres, psql and pg_basebackup.

    Order: $PGSHARD_PG_BINDIR, `pg_config --bindir`, the newest /usr/lib/postgresql/*/bin,
    /usr/pgsql-*/bin or /usr/local/pgsql/bin, then the directory of `initdb` on $PATH.
    """
    return _find_pg_bindir()


@cache
def _find_pg_bindir() -> Path:
    candidates: list[Path] = []
    if os.environ.get("PGSHARD_PG_BINDIR"):
        candidates.append(Path(os.environ["PGSHARD_PG_BINDIR"]))
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                 timeout=10, check=True).stdout.strip()
            candidates.append(Path(out))
        except (OSError, subprocess.SubprocessError):
            pass
    versioned = glob.glob("/usr/lib/postgresql/*/bin") + glob.glob("/usr/pgsql-*/bin")
    candidates += sorted((Path(p) for p in versioned), key=_version_key, reverse=True)
    candidates.append(Path("/usr/local/pgsql/bin"))
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    for bindir in candidates:
        if all((bindir / prog).is_file() for prog in ("initdb", "pg_ctl", "postgres", "psql")):
            return bindir
    raise ClusterError(
        "PostgreSQL server binaries not found (looked at $PGSHARD_PG_BINDIR, pg_config, "
        "/usr/lib/postgresql/*/bin, $PATH); install postgresql or set PGSHARD_PG_BINDIR")


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", str(path))) or (0,)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def running_as_root() -> bool:
    return os.geteuid() == 0


@cache
def service_account() -> tuple[int, int]:
    """(uid, gid) that owns data directories: `postgres` under root, else ourselves."""
    if not running_as_root():
        return os.getuid(), os.getgid()
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        raise ClusterError(f"running as root needs an OS user {SERVICE_USER!r} to own the "
                           "data directories (PostgreSQL refuses to run as root)") from None
    return entry.pw_uid, entry.pw_gid


def run(cmd: Sequence[str | os.PathLike], *, as_service: bool = False,
        env: Mapping[str, str] | None = None, cwd: str | os.PathLike | None = None,
        input: str | None = None, timeout: float = 120,
        log_path: Path | None = None, what: str | None = None) -> str:
    """Run a program, return its stdout; raise ClusterError with its output on failure.

    as_service: under root, run it as the `postgres` OS user (initdb, pg_ctl, pg_basebackup).
    log_path: a server log whose tail is appended to the error message.
    """
    argv = [os.fspath(c) for c in cmd]
    if as_service and running_as_root():
        service_account()
        argv = ["runuser", "-u", SERVICE_USER, "--", *argv]
    full_env = dict(os.environ)
    full_env.update(env or {})
    # A client's own libpq settings must not leak into ours (PGHOST, PGSERVICE, ...).
    for var in ("PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE", "PGOPTIONS"):
        if var not in (env or {}):
            full_env.pop(var, None)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env=full_env, cwd=cwd,
                              input=input, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(_describe(what, argv, f"timed out after {timeout:g}s",
                                     _text(exc.stdout) + _text(exc.stderr), log_path)) from None
    except OSError as exc:
        raise ClusterError(_describe(what, argv, str(exc), "", log_path)) from None
    if proc.returncode != 0:
        raise ClusterError(_describe(what, argv, f"exit status {proc.returncode}",
                                     proc.stdout + proc.stderr, log_path))
    return proc.stdout


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def _describe(what: str | None, argv: list[str], reason: str, output: str,
              log_path: Path | None) -> str:
    shown = [a for a in argv if not a.startswith("postgresql://")]  # never print passwords
    lines = [f"{what or shown[-1]} failed ({reason}): {' '.join(shown)}"]
    if output.strip():
        lines.append(output.strip())
    if log_path is not None:
        tail = log_tail(log_path)
        if tail:
            lines.append(f"--- last lines of {log_path} ---\n{tail}")
    return "\n".join(lines)


def log_tail(path: Path, lines: int = 30) -> str:
    """The last lines of a server log ('' when there is none)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16384))
            data = fh.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])
