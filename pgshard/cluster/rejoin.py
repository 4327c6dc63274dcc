"""Rejoining a former primary's data directory as a standby of a new primary: stop it,
pg_rewind (or, when asked, a pg_basebackup clone), standby settings, start, wait until it
streams. Used by LocalCluster.rejoin and by `pgshard node rejoin` on the server's host.

Strategy: pg_rewind copies the source's configuration files along with its data, so the
target's own top-level *.conf files (postgresql.conf, postgresql.auto.conf, pg_hba.conf, …)
are saved before and put back after, then standby.signal and primary_conninfo are written
(postgresql.auto.conf, where ALTER SYSTEM would put it). A server that was killed is shut
down cleanly by pg_rewind itself (single-user crash recovery, PostgreSQL 13+).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from pgshard.cluster.process import ClusterError, log_tail, run, running_as_root

AUTO_CONF = "postgresql.auto.conf"
CONNECT_TIMEOUT = 5
# Settings of the old primary's postgresql.auto.conf (ALTER SYSTEM) that a standby must not
# keep, since a rejoined replica promoted later must take writes: its upstream (written
# anew), the read-only fence a switchover's demotion may have set, and the synchronous
# standbys it waited for as a primary (promoted, it would wait for servers that are gone
# or are its own primary; the manager names its standbys when it promotes it).
DROPPED_SETTINGS = ("primary_conninfo", "default_transaction_read_only",
                    "synchronous_standby_names")
REWIND, CLONE = "rewind", "clone"


class RejoinError(ClusterError):
    """A rejoin step failed; the message says which and what to do."""


@dataclass(frozen=True)
class Upstream:
    """The new primary a rejoined server streams from."""

    host: str
    port: int
    user: str
    password: str = ""
    dbname: str = "postgres"
    application_name: str | None = None  # default: the standby's cluster_name

    @classmethod
    def from_dsn(cls, dsn: str, application_name: str | None = None) -> Upstream:
        from pgshard.config import parse_dsn

        try:
            d = parse_dsn(dsn)
        except ValueError as exc:
            raise RejoinError(f"--primary: {exc}") from None
        if not d.user:
            raise RejoinError(f"--primary {d.host}:{d.port}: the DSN names no user (a "
                              "replication-capable role, e.g. postgresql://USER:PASSWORD@HOST"
                              ":PORT/postgres)")
        return cls(d.host, d.port, d.user, d.password, d.database, application_name)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def conninfo(self, *, password: bool = False, dbname: str | None = None) -> str:
        """libpq key/value conninfo (with the password only when asked: primary_conninfo)."""
        parts = {"host": self.host, "port": str(self.port), "user": self.user,
                 "dbname": dbname or self.dbname, "connect_timeout": str(CONNECT_TIMEOUT)}
        if password and self.password:
            parts["password"] = self.password
        if self.application_name:
            parts["application_name"] = self.application_name
        return " ".join(f"{k}={_kv_quote(v)}" for k, v in parts.items())

    def env(self) -> dict[str, str]:
        return {"PGPASSWORD": self.password} if self.password else {}


def _kv_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _conf_quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# ---------------------------------------------------------------- the steps


def check_data_dir(data_dir: Path) -> None:
    if not (data_dir / "PG_VERSION").is_file() or not (data_dir / "global").is_dir():
        raise RejoinError(f"{data_dir} is not a PostgreSQL data directory (no PG_VERSION)")


def psql(bindir: Path, conninfo: str, sql: str, *, env: dict | None = None,
         timeout: float = 30, what: str = "psql") -> str:
    return run([bindir / "psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
                "-d", conninfo, "-c", sql], env=env, timeout=timeout,
               what=what).removesuffix("\n")


def check_upstream(bindir: Path, up: Upstream) -> None:
    """The new primary answers and is a primary (before anything is done to the target)."""
    try:
        in_recovery = psql(bindir, up.conninfo(), "SELECT pg_is_in_recovery()", env=up.env(),
                           timeout=CONNECT_TIMEOUT * 3, what=f"connecting to {up.address}")
    except ClusterError as exc:
        raise RejoinError(f"the new primary {up.address} does not answer: "
                          f"{_first_line(exc)}") from None
    if in_recovery != "f":
        raise RejoinError(f"{up.address} is a standby, not the new primary")


def is_running(bindir: Path, data_dir: Path) -> bool:
    try:
        run([bindir / "pg_ctl", "status", "-D", data_dir], as_service=True, timeout=30,
            what="pg_ctl status")
        return True
    except ClusterError:
        return False


def stop(bindir: Path, data_dir: Path, timeout: float = 60) -> None:
    if is_running(bindir, data_dir):
        run([bindir / "pg_ctl", "stop", "-D", data_dir, "-m", "fast", "-w", "-t",
             str(int(timeout)), "-s"], as_service=True, timeout=timeout + 10,
            what=f"pg_ctl stop {data_dir}")


def start(bindir: Path, data_dir: Path, log_path: Path, timeout: float = 60) -> None:
    run([bindir / "pg_ctl", "start", "-D", data_dir, "-l", log_path, "-w", "-t",
         str(int(timeout)), "-s"], as_service=True, cwd=data_dir.parent,
        timeout=timeout + 10, log_path=log_path, what=f"pg_ctl start {data_dir}")


def checkpoint(bindir: Path, up: Upstream) -> None:
    """A just-promoted primary's control file names its new timeline only after a
    checkpoint; before it pg_rewind would find "no rewind required" and be wrong."""
    psql(bindir, up.conninfo(), "CHECKPOINT", env=up.env(), timeout=120,
         what=f"CHECKPOINT on {up.address}")


def rewind(bindir: Path, data_dir: Path, up: Upstream, timeout: float = 300) -> None:
    run([bindir / "pg_rewind", "--target-pgdata", data_dir, "--source-server",
         up.conninfo()], as_service=True, cwd=data_dir.parent, env=up.env(),
        timeout=timeout, what=f"pg_rewind {data_dir} from {up.address}")


def clone(bindir: Path, data_dir: Path, up: Upstream, timeout: float = 600,
          no_sync: bool = False) -> None:
    """Replace data_dir by a fresh pg_basebackup of the upstream."""
    shutil.rmtree(data_dir, ignore_errors=True)
    run([bindir / "pg_basebackup", "-D", data_dir, "-X", "stream", "-c", "fast",
         *(("--no-sync",) if no_sync else ()), "--no-manifest", "-d", up.conninfo(), "-w"],
        as_service=True, cwd=data_dir.parent, env=up.env(), timeout=timeout,
        what=f"pg_basebackup {data_dir} from {up.address}")


def save_config(data_dir: Path) -> dict[str, bytes]:
    """The data directory's own top-level configuration files."""
    return {p.name: p.read_bytes() for p in data_dir.glob("*.conf") if p.is_file()}


def restore_config(data_dir: Path, saved: dict[str, bytes]) -> None:
    for name, content in saved.items():
        (data_dir / name).write_bytes(content)
        _own(data_dir, data_dir / name)


def write_standby(data_dir: Path, up: Upstream) -> None:
    """standby.signal, and primary_conninfo in postgresql.auto.conf (earlier ones and the
    read-only fence removed)."""
    auto = data_dir / AUTO_CONF
    lines = auto.read_text().splitlines() if auto.is_file() else []
    kept = [line for line in lines
            if line.split("=", 1)[0].strip().lower() not in DROPPED_SETTINGS]
    kept.append(f"primary_conninfo = {_conf_quote(up.conninfo(password=True))}")
    auto.write_text("\n".join(kept) + "\n")
    (data_dir / "standby.signal").write_text("")
    (data_dir / "recovery.signal").unlink(missing_ok=True)
    for path in (auto, data_dir / "standby.signal"):
        _own(data_dir, path)


def _own(data_dir: Path, path: Path) -> None:
    """Files we write belong to the data directory's owner (we may run as root)."""
    if running_as_root():
        st = data_dir.stat()
        os.chown(path, st.st_uid, st.st_gid)
        os.chmod(path, 0o600)


def rewind_or_clone(bindir: Path, data_dir: Path, up: Upstream, *, clone_if_needed: bool,
                    timeout: float = 300, no_sync: bool = False) -> str:
    """Stop the server, rewind it to the upstream's timeline (or clone it, if allowed and
    pg_rewind fails), keep its own configuration, make it a standby; returns how."""
    check_data_dir(data_dir)
    stop(bindir, data_dir)
    checkpoint(bindir, up)
    saved = save_config(data_dir)
    try:
        rewind(bindir, data_dir, up, timeout=timeout)
        how = REWIND
    except ClusterError as exc:
        if not clone_if_needed:
            raise RejoinError(f"pg_rewind failed, the server is left stopped and untouched "
                              f"by a clone (pass --clone-if-needed to copy it afresh with "
                              f"pg_basebackup instead): {exc}") from None
        clone(bindir, data_dir, up, timeout=max(timeout, 600), no_sync=no_sync)
        how = CLONE
    restore_config(data_dir, saved)
    write_standby(data_dir, up)
    return how


def local_conninfo(data_dir: Path, up: Upstream) -> str:
    """How to reach the running server in data_dir: its socket (or listen address) and port
    from postmaster.pid, as the upstream's user (its roles are the primary's now)."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().split("\n")
        port = lines[3].strip()
        host = lines[4].strip().split(",")[0] or lines[5].strip().split(",")[0]
    except (OSError, IndexError):
        raise RejoinError(f"the server in {data_dir} is not running (no postmaster.pid)") \
            from None
    if host in ("*", "0.0.0.0", ""):
        host = "127.0.0.1"
    return (f"host={_kv_quote(host)} port={port} user={_kv_quote(up.user)} dbname=postgres "
            f"connect_timeout={CONNECT_TIMEOUT}")


def wait_streaming(bindir: Path, data_dir: Path, up: Upstream, log_path: Path | None,
                   timeout: float = 120) -> str:
    """Wait until the server streams from the upstream and replayed the upstream's WAL
    flushed so far (every acknowledged commit); returns that LSN."""
    target = psql(bindir, up.conninfo(), "SELECT pg_current_wal_flush_lsn()", env=up.env(),
                  what=f"reading the WAL position of {up.address}")
    local = local_conninfo(data_dir, up)
    probe = ("SELECT coalesce((SELECT status = 'streaming' FROM pg_stat_wal_receiver), false)"
             f" AND pg_last_wal_replay_lsn() >= '{target}'::pg_lsn")
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            if psql(bindir, local, probe, env=up.env(), timeout=10) == "t":
                return target
        except ClusterError as exc:
            last = _first_line(exc)
        if time.monotonic() > deadline:
            tail = log_tail(log_path) if log_path is not None else ""
            raise RejoinError(f"{data_dir} did not stream from {up.address} up to {target} "
                              f"within {timeout:g}s{f' ({last})' if last else ''}"
                              + (f"\n--- last lines of {log_path} ---\n{tail}" if tail else ""))
        time.sleep(0.1)


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines()[1:] if line.strip()]
    return lines[0].strip() if lines else str(exc).splitlines()[0]
