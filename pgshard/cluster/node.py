"""One local PostgreSQL server (primary or replica): start, stop, kill, promote, psql."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from urllib.parse import quote

from pgshard.cluster.process import ClusterError, find_pg_bindir, run

LOG_FILE = "server.log"


class Node:
    """A PostgreSQL server on 127.0.0.1 with its data directory data_dir.

    Its unix socket lives in socket_dir and its log at log_path, by default inside data_dir;
    LocalCluster puts both outside it, since pg_rewind's libpq source lists the source's
    data directory and fails on a socket there ("could not open file .s.PGSQL.N for
    reading: No such device or address") and would copy the source's log over the node's."""

    host = "127.0.0.1"

    def __init__(self, name: str, port: int, data_dir: str | os.PathLike, *,
                 database: str = "app", user: str = "pgshard", password: str = "pgshard",
                 bindir: Path | None = None, socket_dir: str | os.PathLike | None = None,
                 log_path: str | os.PathLike | None = None):
        self.name = name
        self.port = port
        self.data_dir = Path(data_dir)
        self.socket_dir = Path(socket_dir) if socket_dir is not None else self.data_dir
        self._log_path = Path(log_path) if log_path is not None else self.data_dir / LOG_FILE
        self.database = database
        self.user = user
        self.password = password
        self.bindir = bindir or find_pg_bindir()

    def __repr__(self) -> str:
        return f"Node({self.name!r}, port={self.port}, data_dir={str(self.data_dir)!r})"

    # -- addresses ---------------------------------------------------------------------

    @property
    def dsn(self) -> str:
        return self._url(self.database)

    @property
    def admin_dsn(self) -> str:
        return self._url("postgres")

    def _url(self, database: str) -> str:
        return (f"postgresql://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
                f"@{self.host}:{self.port}/{quote(database, safe='')}")

    @property
    def log_path(self) -> Path:
        return self._log_path

    def live_socket_dir(self) -> Path:
        """Where the running server's socket is (postmaster.pid says; a server started with
        an older layout has it in its data directory), else where it will be."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().split("\n")
            if len(lines) > 4 and lines[4].strip():
                return Path(lines[4].strip().split(",")[0])
        except OSError:
            pass
        return self.socket_dir

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, timeout: float = 60) -> None:
        """Start the server and wait until it accepts connections (no-op if running)."""
        if self.is_running():
            return
        self._pg_ctl("start", "-l", self.log_path, "-w", "-t", str(int(timeout)), "-s",
                     timeout=timeout + 10)

    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        """Stop the server ("smart", "fast" or "immediate"); no-op if it is not running."""
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"unknown shutdown mode {mode!r}")
        if not self.is_running():
            return
        self._pg_ctl("stop", "-m", mode, "-w", "-t", str(int(timeout)), "-s",
                     timeout=timeout + 10)

    def kill(self, timeout: float = 10) -> None:
        """SIGKILL the postmaster and its children, like a crashed host; wait until gone."""
        pid = self._postmaster_pid()
        if pid is None or not _alive(pid):
            return
        victims = [pid, *_children(pid)]
        for victim in victims:
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while any(_alive(v) for v in victims):
            if time.monotonic() > deadline:
                raise ClusterError(f"{self.name}: processes still alive after SIGKILL")
            time.sleep(0.02)
        # Nobody may reap the dead postmaster (a zombie still "exists" for kill(pid, 0)),
        # which would make the next start refuse: remove the now-stale lock files.
        for lock in (self.data_dir / "postmaster.pid",
                     self.live_socket_dir() / f".s.PGSQL.{self.port}.lock"):
            lock.unlink(missing_ok=True)

    def promote(self, wait: bool = True, timeout: float = 60) -> None:
        """Promote this standby to a primary (pg_ctl promote), optionally waiting for it."""
        self._pg_ctl("promote", *(("-w", "-t", str(int(timeout))) if wait else ("-W",)),
                     "-s", timeout=timeout + 10)

    def is_running(self) -> bool:
        """Whether the postmaster process is alive (not whether it accepts connections)."""
        pid = self._postmaster_pid()
        return pid is not None and _alive(pid)

    def is_in_recovery(self) -> bool:
        return self.psql("SELECT pg_is_in_recovery()") == "t"

    # -- SQL ---------------------------------------------------------------------------

    def psql(self, sql: str, *, database: str | None = None, timeout: float = 60) -> str:
        """Run SQL with psql -X -A -t against this node; return stdout without the last newline.

        Several statements may be given; they run as one implicit transaction (psql -c).
        """
        dsn = self.dsn if database is None else self._url(database)
        out = run([self.bindir / "psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
                   "-d", dsn, "-c", sql], timeout=timeout, what=f"psql on {self.name}")
        return out.removesuffix("\n")

    def psql_local(self, script: str, *, database: str = "postgres", user: str = "postgres",
                   timeout: float = 60) -> str:
        """Run a psql script over the node's unix socket (trusted; works before roles exist)."""
        return run([self.bindir / "psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
                    "-h", self.live_socket_dir(), "-p", str(self.port), "-U", user, "-d", database,
                    "-f", "-"], input=script, timeout=timeout, what=f"psql on {self.name}",
                   log_path=self.log_path).removesuffix("\n")

    # -- internals ---------------------------------------------------------------------

    def _pg_ctl(self, command: str, *args: object, timeout: float) -> str:
        return run([self.bindir / "pg_ctl", command, "-D", self.data_dir, *map(str, args)],
                   as_service=True, cwd=self.data_dir.parent, timeout=timeout,
                   log_path=self.log_path, what=f"pg_ctl {command} {self.name}")

    def _postmaster_pid(self) -> int | None:
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first)
        except (OSError, ValueError):
            return None


def _alive(pid: int) -> bool:
    """A process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _children(pid: int) -> list[int]:
    """Direct children of pid (PostgreSQL backends and auxiliary processes)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found
