"""The servers a benchmark measures: harness clusters loaded with pgbench data, and pgshard
and PgBouncer run as subprocesses in front of them, each reachable as an Endpoint.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pgshard.cluster import ClusterError, LocalCluster, find_pg_bindir, free_port
from pgshard.cluster.process import SERVICE_USER, log_tail, running_as_root, service_account

# The login the proxies accept from pgbench; the shards themselves keep the harness's user.
BENCH_USER = "bench"
BENCH_PASSWORD = "bench-secret"
CLIENT_AUTH = "scram-sha-256"   # what Postgres's pg_hba asks too: all three paths pay the same
PGBOUNCER = "pgbouncer"


class BenchSetupError(RuntimeError):
    """A server the benchmark needs could not be started; the message carries its log."""


@dataclass(frozen=True)
class Endpoint:
    """Where pgbench connects: host, port, login and database."""

    host: str
    port: int
    user: str
    password: str
    database: str


def node_endpoint(node) -> Endpoint:
    """The endpoint of a harness node (a cluster primary), logging in as the harness user."""
    return Endpoint(node.host, node.port, node.user, node.password, node.database)


def pgbench_binary() -> Path:
    """pgbench of the same PostgreSQL installation the harness runs (else the one on $PATH)."""
    candidate = find_pg_bindir() / "pgbench"
    if candidate.is_file():
        return candidate
    found = shutil.which("pgbench")
    if found is None:
        raise BenchSetupError("pgbench not found (install postgresql-client / postgresql-contrib)")
    return Path(found)


def pgbench_env(endpoint: Endpoint) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PG") or k == "PGSHARD_PG_BINDIR"}
    env["PGPASSWORD"] = endpoint.password
    return env


def connect_args(endpoint: Endpoint) -> list[str]:
    return ["-h", endpoint.host, "-p", str(endpoint.port), "-U", endpoint.user]


# -- clusters ----------------------------------------------------------------------------


def load_pgbench_data(node, scale: int) -> None:
    """`pgbench -i -s scale` straight on one primary (creates, fills and vacuums the tables)."""
    endpoint = node_endpoint(node)
    argv = [str(pgbench_binary()), "-i", "-s", str(scale), "-q", *connect_args(endpoint),
            endpoint.database]
    proc = subprocess.run(argv, capture_output=True, text=True, env=pgbench_env(endpoint),
                          timeout=1800)
    if proc.returncode != 0:
        raise BenchSetupError(f"pgbench -i on {node.name} failed (exit {proc.returncode}):\n"
                              f"{proc.stderr.strip() or proc.stdout.strip()}")


def server_version(node) -> str:
    return node.psql("SHOW server_version")


def committed_transactions(node) -> int:
    """The node's commit counter for its database (cumulative statistics; they lag by up to
    a few seconds behind idle pooled connections)."""
    return int(node.psql("SELECT xact_commit FROM pg_stat_database "
                         "WHERE datname = current_database()"))


# -- subprocesses ------------------------------------------------------------------------


class ServerProcess:
    """A long-running server subprocess whose output goes to a log file; stop() is idempotent."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, port: int,
                 env: dict[str, str] | None = None):
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.port = port
        self.env = env     # the whole environment of the child (None: this one's)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout
        while not _accepts("127.0.0.1", self.port):
            if self.proc.poll() is not None:
                raise BenchSetupError(f"{self.name} exited with status {self.proc.returncode} "
                                      f"before listening on port {self.port}:\n"
                                      f"{' '.join(self.argv)}\n{log_tail(self.log_path)}")
            if time.monotonic() > deadline:
                self.stop()
                raise BenchSetupError(f"{self.name} did not listen on port {self.port} within "
                                      f"{timeout:g}s:\n{log_tail(self.log_path)}")
            time.sleep(0.05)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        return log_tail(self.log_path, lines)

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM, then SIGKILL after timeout; reaps the process."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# -- pgshard -----------------------------------------------------------------------------


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def pgshard_config(cluster: LocalCluster, port: int, pool_size: int, store_path: Path, *,
                   tables: dict[str, str] | None = None,
                   proxy_settings: dict[str, str] | None = None) -> str:
    """The pgshard.toml for one cluster: user `bench`, every shard's primary, no sidecar.

    tables maps sharded table -> key column (default: pgbench_accounts by aid);
    proxy_settings are extra `[proxy]` lines, name -> TOML value text.
    """
    lines = [
        f"store = {_toml_str('sqlite:///' + str(store_path))}",
        'log_level = "WARNING"',
        "",
        "[proxy]",
        'host = "127.0.0.1"',
        f"port = {port}",
        f"database = {_toml_str(cluster.database)}",
        'pool_mode = "transaction"',
        f"pool_size = {pool_size}",
        "max_client_conn = 200",
        *(f"{name} = {value}" for name, value in (proxy_settings or {}).items()),
        "",
        "[sidecar]",
        "enabled = false",
        "",
        "[[users]]",
        f"name = {_toml_str(BENCH_USER)}",
        f"password = {_toml_str(BENCH_PASSWORD)}",
        f"auth = {_toml_str(CLIENT_AUTH)}",
    ]
    for shard in cluster.shards:
        lines += ["", "[[shards]]", f"name = {_toml_str(shard.name)}",
                  f"primary = {_toml_str(shard.primary.dsn)}", "replicas = []"]
    # pgbench_accounts is sharded by aid, so unhinted point reads are routed by their SQL.
    for table, key in (tables or {"pgbench_accounts": "aid"}).items():
        lines += ["", "[[tables]]", f"name = {_toml_str(table)}", f"shard_key = {_toml_str(key)}"]
    return "\n".join(lines) + "\n"


# A source checkout whose pgshard the benchmark runs instead of this one (the same harness,
# pgbench and servers: a before/after comparison in one sitting). Build its compiled core in
# place first (`python setup.py build_ext --inplace` there), or set PGSHARD_PURE=1 for both.
SOURCE_ENV = "PGSHARD_BENCH_SOURCE"


def start_pgshard(name: str, cluster: LocalCluster, work_dir: Path, pool_size: int, *,
                  tables: dict[str, str] | None = None,
                  proxy_settings: dict[str, str] | None = None,
                  store_path: Path | None = None) -> tuple[ServerProcess, Endpoint]:
    """`pgshard serve` in front of cluster, as a subprocess of this venv's interpreter.

    Each gets a store of its own unless store_path names one to share: pgshards that share
    shards and write on several of them must share the store too, or one's two-phase commit
    recovery rolls back the other's prepared transactions (no decision in its own log).
    """
    port = free_port()
    config_path = work_dir / f"{name}.toml"
    config_path.write_text(pgshard_config(cluster, port, pool_size,
                                          store_path or work_dir / f"{name}-meta.db",
                                          tables=tables, proxy_settings=proxy_settings))
    executable = Path(sys.executable).with_name("pgshard")
    argv = ([str(executable)] if executable.is_file() else [sys.executable, "-m", "pgshard"])
    env = None
    source = os.environ.get(SOURCE_ENV)
    if source:   # another checkout's pgshard (a base commit to compare with), its own .so
        argv = [sys.executable, "-m", "pgshard"]
        env = {**os.environ, "PYTHONPATH": str(Path(source).resolve())}
    server = ServerProcess(name, [*argv, "serve", "--config", str(config_path),
                                  "--log-level", "WARNING"], work_dir / f"{name}.log", port,
                           env=env)
    server.start()
    return server, Endpoint("127.0.0.1", port, BENCH_USER, BENCH_PASSWORD, cluster.database)


# -- PgBouncer ---------------------------------------------------------------------------


PGBOUNCER_ENV = "PGSHARD_BENCH_PGBOUNCER"   # path of the pgbouncer binary to compare with
# A second, newer PgBouncer (1.21+ serves -M prepared in transaction pooling): its own column
# when this variable (or bench's --pgbouncer-new) names its binary, skipped otherwise.
PGBOUNCER_NEW_ENV = "PGSHARD_BENCH_PGBOUNCER_NEW"


def pgbouncer_binary() -> str:
    """The PgBouncer to compare with: $PGSHARD_BENCH_PGBOUNCER, else the one on PATH."""
    return os.environ.get(PGBOUNCER_ENV) or shutil.which(PGBOUNCER) or "/usr/sbin/pgbouncer"


def _supports_prepared(version: str) -> bool:
    """PgBouncer 1.21 and newer keep prepared statements across transaction pooling."""
    try:
        major, minor = (int(x) for x in version.split()[1].split(".")[:2])
    except (IndexError, ValueError):
        return False
    return (major, minor) >= (1, 21)


def pgbouncer_config(node, port: int, pool_size: int, userlist: Path,
                     version: str | None = None) -> str:
    """A transaction-pooling pgbouncer.ini for one primary, logging in to it as the harness user."""
    return "\n".join([
        "[databases]",
        f"{node.database} = host={node.host} port={node.port} dbname={node.database} "
        f"user={node.user} password={node.password}",
        "",
        "[pgbouncer]",
        "listen_addr = 127.0.0.1",
        f"listen_port = {port}",
        "unix_socket_dir =",
        f"auth_type = {CLIENT_AUTH}",
        f"auth_file = {userlist}",
        "pool_mode = transaction",
        f"default_pool_size = {pool_size}",
        "max_client_conn = 200",
        "logfile =",
        "pidfile =",
        "log_connections = 0",
        "log_disconnections = 0",
        "ignore_startup_parameters = extra_float_digits",
    ] + (["max_prepared_statements = 200"]
         if _supports_prepared(version or pgbouncer_version()) else [])
    ) + "\n"


def start_pgbouncer(node, work_dir: Path, pool_size: int, *, binary: str | None = None,
                    name: str = PGBOUNCER) -> tuple[ServerProcess, Endpoint]:
    """PgBouncer in front of one primary; under root it drops to the postgres OS user.

    binary: which pgbouncer (default pgbouncer_binary()); name: its files and log in work_dir.
    """
    binary = binary or pgbouncer_binary()
    if not Path(binary).is_file():
        raise BenchSetupError(f"pgbouncer not found at {binary} (apt-get install pgbouncer)")
    port = free_port()
    userlist = work_dir / f"{name}-userlist.txt"
    userlist.write_text(f'"{BENCH_USER}" "{BENCH_PASSWORD}"\n')
    ini = work_dir / f"{name}.ini"
    ini.write_text(pgbouncer_config(node, port, pool_size, userlist, pgbouncer_version(binary)))
    argv = [binary]
    if running_as_root():
        # PgBouncer refuses to run as root; -u makes it switch to the service account.
        uid, gid = service_account()
        for path in (userlist, ini):
            os.chown(path, uid, gid)
        argv += ["-u", SERVICE_USER]
    for path in (userlist, ini):
        path.chmod(0o600)
    server = ServerProcess(name, [*argv, str(ini)], work_dir / f"{name}.log", port)
    server.start()
    return server, Endpoint("127.0.0.1", port, BENCH_USER, BENCH_PASSWORD, node.database)


def pgbouncer_version(binary: str | None = None) -> str:
    binary = binary or pgbouncer_binary()
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    except OSError:
        return "unknown"
    return out.stdout.splitlines()[0] if out.stdout else "unknown"


__all__ = ["BenchSetupError", "ClusterError", "Endpoint", "ServerProcess", "committed_transactions",
           "PGBOUNCER_NEW_ENV", "load_pgbench_data", "node_endpoint", "pgbench_binary", "pgbouncer_version",
           "server_version", "start_pgbouncer", "start_pgshard"]
