"""The one configuration loader: TOML file (stdlib tomllib) → typed, validated settings."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pgshard.ring.catalog import Catalog, Shard

POOL_MODES = ("transaction", "session")
AUTH_METHODS = ("scram-sha-256", "md5", "trust")
CONSISTENCIES = ("strong", "eventual", "session")
MAX_WORKERS = 64


class ConfigError(ValueError):
    """The configuration is invalid; the message says where."""


@dataclass(frozen=True)
class UserConfig:
    name: str
    password: str = ""          # plaintext, a SCRAM verifier, or an md5 hash
    auth: str = "scram-sha-256"
    server_user: str | None = None      # default: the credentials in the shard DSN
    server_password: str | None = None
    pool_mode: str | None = None
    pool_size: int | None = None
    default_consistency: str = "strong"


@dataclass(frozen=True)
class DatabaseConfig:
    """A logical database besides [proxy] database: its name on every shard and the pool
    settings it overrides (a user's own pool_size/pool_mode still win, as in PgBouncer)."""

    name: str                            # the name clients give in their startup packet
    dbname: str | None = None            # the database on every shard (default: name)
    pool_size: int | None = None         # default: [proxy] pool_size
    min_pool_size: int | None = None     # default: [proxy] min_pool_size
    pool_mode: str | None = None         # default: [proxy] pool_mode

    @property
    def server_database(self) -> str:
        return self.dbname or self.name


@dataclass(frozen=True)
class ProxyConfig:
    host: str = "127.0.0.1"
    port: int = 6432
    workers: int = 1                    # router processes on the port (pgshard.workers)
    database: str = "app"               # the logical database clients connect to
    pool_mode: str = "transaction"
    # Session pooling: a server its client left is reset (DISCARD ALL) and reused, or closed.
    session_server_reset: str = "discard"
    pool_size: int = 20
    min_pool_size: int = 0
    server_idle_timeout: float = 600.0
    server_lifetime: float = 3600.0
    connect_timeout: float = 5.0
    query_wait_timeout: float = 30.0
    max_client_conn: int = 1000         # client sockets, counted from accept (pgshard.proxy.limits)
    client_login_timeout: float = 15.0  # seconds to finish startup + authentication (0: off)
    client_idle_timeout: float = 0.0    # seconds idle outside a transaction (0: off)
    idle_transaction_timeout: float = 0.0   # seconds idle inside a transaction (0: off)
    max_message_size: int = 64 * 1024 * 1024
    tls_cert: str | None = None
    tls_key: str | None = None
    max_replica_lag: float = 10.0
    statement_cache_bytes: int = 64 * 1024 * 1024   # prepared statements kept, by SQL bytes
    plan_cache_bytes: int = 16 * 1024 * 1024        # routing plans kept, by SQL bytes
    fanout_buffer_bytes: int = 8 * 1024 * 1024      # per client: shard replies buffered in a fan-out
    # Transactions that wrote on several shards commit with two-phase commit (off: refused).
    two_phase_commit: bool = True
    twophase_recovery_interval: float = 10.0   # seconds between the manager's recovery rounds
    twophase_timeout: float = 60.0   # a prepared txn older than this, without decision: rolled back
    fence_timeout: float = 5.0   # seconds a statement on a range being resharded waits (then 40001)
    # Operations (pgshard.ops, pgshard.proxy.admin, pgshard.proxy.slowlog)
    shutdown_timeout: float = 30.0   # SIGTERM: seconds open transactions may take to finish
    slow_query_ms: float = -1        # log statements slower than this (ms; 0: all, -1: off)
    admin_users: tuple[str, ...] = ()   # users that get the admin console (database "pgshard")


@dataclass(frozen=True)
class SidecarConfig:
    """The REST control plane (pgshard.control): listener, auth and request limits."""

    host: str = "127.0.0.1"
    port: int = 8081
    enabled: bool = True
    jwt_secret: str | None = None        # HS256 key; default: generated once, kept in the store
    token_ttl: float = 3600.0            # seconds a login token stays valid
    admin_user: str = "admin"            # bootstrap admin, created/updated at start when a
    admin_password: str | None = None    # password is set here or in PGSHARD_ADMIN_PASSWORD
    cors_origins: tuple[str, ...] = ()   # browser origins allowed to call the API ("*": any)
    max_body_size: int = 1024 * 1024     # bytes; larger requests get 413
    tls_cert: str | None = None
    tls_key: str | None = None
    execute_pool_size: int = 4           # /v1/execute connections to the proxy's own listener
    execute_timeout: float = 30.0
    execute_max_rows: int = 10000
    # Login throttling (pgshard.control.login_limits): 429 + Retry-After when exceeded.
    login_max_failures: int = 5          # consecutive failures that lock a user (0: off)
    login_lockout: float = 30.0          # first lockout, seconds; doubles per further failure
    login_lockout_max: float = 900.0     #   up to this
    login_rate_per_ip: float = 20.0      # failed logins per minute per client address (0: off)


@dataclass(frozen=True)
class HaConfig:
    """High availability (pgshard.control.failover, pgshard.proxy.failover_hold)."""

    auto_failover: bool = True          # the elected manager promotes a replica of a dead primary
    check_interval: float = 1.0         # seconds between health checks of every server
    failure_threshold: int = 3          # failed checks of a primary before it may be failed over
    failover_hold: float = 10.0         # routers hold a failing shard's statements this long
    switchover_timeout: float = 10.0    # seconds a switchover waits for drain and catch-up
    # A LocalCluster base directory (`pgshard demo`, the tests): the manager may then stop,
    # start and rejoin those servers itself (switchover stops the old primary; rejoin).
    local_cluster: str | None = None


@dataclass(frozen=True)
class Config:
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    sidecar: SidecarConfig = field(default_factory=SidecarConfig)
    ha: HaConfig = field(default_factory=HaConfig)
    users: tuple[UserConfig, ...] = ()
    databases: tuple[DatabaseConfig, ...] = ()   # [[databases]]: logical databases besides
    catalog: Catalog | None = None               # [proxy] database (same sharded tables)
    store: str = "sqlite:///pgshard-meta.db"
    cluster: str = "default"
    log_level: str = "INFO"
    node_id: str | None = None          # this process in routers/<id> and the leader key
    lease_ttl: float = 5.0              # router registration and manager election leases

    def user(self, name: str) -> UserConfig | None:
        for u in self.users:
            if u.name == name:
                return u
        return None

    def database(self, name: str) -> DatabaseConfig | None:
        """The [[databases]] entry clients reach as name (None: not one of them)."""
        for d in self.databases:
            if d.name == name:
                return d
        return None


def _build(cls, data: dict, where: str):
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(sorted(unknown))}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def config_from_dict(data: dict) -> Config:
    """Build a Config from the parsed TOML document (also used by `pgshard demo`)."""
    data = dict(data)
    proxy_data = dict(data.pop("proxy", {}))
    if isinstance(proxy_data.get("admin_users"), list):
        proxy_data["admin_users"] = tuple(proxy_data["admin_users"])
    proxy = _build(ProxyConfig, proxy_data, "[proxy]")
    if not all(isinstance(u, str) and u for u in proxy.admin_users) \
            or isinstance(proxy.admin_users, str):
        raise ConfigError("[proxy] admin_users must be a list of user names")
    for name, least in (("shutdown_timeout", 0), ("slow_query_ms", -1)):
        value = getattr(proxy, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < least:
            raise ConfigError(f"[proxy] {name} must be a number >= {least}")
    if proxy.pool_mode not in POOL_MODES:
        raise ConfigError(f"[proxy] pool_mode must be one of {POOL_MODES}")
    if proxy.session_server_reset not in ("discard", "close"):
        raise ConfigError('[proxy] session_server_reset must be "discard" or "close"')
    if proxy.pool_size < 1 or proxy.min_pool_size < 0 or proxy.min_pool_size > proxy.pool_size:
        raise ConfigError("[proxy] need 0 <= min_pool_size <= pool_size and pool_size >= 1")
    for name in ("client_login_timeout", "client_idle_timeout", "idle_transaction_timeout"):
        value = getattr(proxy, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigError(f"[proxy] {name} must be a number of seconds >= 0 (0: off)")
    for name, least in (("statement_cache_bytes", 0), ("plan_cache_bytes", 0),
                        ("fanout_buffer_bytes", 65536)):
        value = getattr(proxy, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"[proxy] {name} must be an integer of at least {least}")
    if isinstance(proxy.workers, bool) or not isinstance(proxy.workers, int) \
            or not 1 <= proxy.workers <= MAX_WORKERS:
        raise ConfigError(f"[proxy] workers must be an integer from 1 to {MAX_WORKERS}")
    if not isinstance(proxy.two_phase_commit, bool):
        raise ConfigError("[proxy] two_phase_commit must be true or false")
    for name in ("twophase_recovery_interval", "twophase_timeout", "fence_timeout"):
        value = getattr(proxy, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"[proxy] {name} must be a positive number of seconds")
    sidecar_data = dict(data.pop("sidecar", {}))
    if isinstance(sidecar_data.get("cors_origins"), list):
        sidecar_data["cors_origins"] = tuple(sidecar_data["cors_origins"])
    sidecar = _build(SidecarConfig, sidecar_data, "[sidecar]")
    _check_sidecar(sidecar)
    ha = _build(HaConfig, data.pop("ha", {}), "[ha]")
    if (not isinstance(ha.auto_failover, bool) or ha.check_interval <= 0
            or isinstance(ha.failure_threshold, bool) or not isinstance(ha.failure_threshold, int)
            or ha.failure_threshold < 1 or ha.failover_hold < 0 or ha.switchover_timeout <= 0):
        raise ConfigError("[ha] need auto_failover true/false, check_interval > 0, "
                          "failure_threshold >= 1, failover_hold >= 0, switchover_timeout > 0")
    users = []
    for i, u in enumerate(data.pop("users", [])):
        uc = _build(UserConfig, u, f"[[users]] #{i + 1}")
        if uc.auth not in AUTH_METHODS:
            raise ConfigError(f"user {uc.name}: auth must be one of {AUTH_METHODS}")
        if uc.pool_mode and uc.pool_mode not in POOL_MODES:
            raise ConfigError(f"user {uc.name}: pool_mode must be one of {POOL_MODES}")
        if uc.default_consistency not in CONSISTENCIES:
            raise ConfigError(f"user {uc.name}: default_consistency must be one of {CONSISTENCIES}")
        if uc.auth != "trust" and not uc.password:
            raise ConfigError(f"user {uc.name}: a password is required for {uc.auth}")
        users.append(uc)
    databases = _databases(data.pop("databases", []), proxy)
    vnodes = int(data.pop("vnodes_per_shard", 256))
    shards = []
    for i, s in enumerate(data.pop("shards", [])):
        if "name" not in s or "primary" not in s:
            raise ConfigError(f"[[shards]] #{i + 1}: name and primary are required")
        check_dsn(s["primary"], f"shard {s['name']} primary")
        for r in s.get("replicas", []):
            check_dsn(r, f"shard {s['name']} replica")
        shards.append(Shard(name=s["name"], primary=s["primary"],
                            replicas=tuple(s.get("replicas", ()))))
    if len({s.name for s in shards}) != len(shards):
        raise ConfigError("[[shards]]: shard names must be unique")
    tables = {}
    for t in data.pop("tables", []):
        if "name" not in t or "shard_key" not in t:
            raise ConfigError("[[tables]]: name and shard_key are required")
        tables[t["name"]] = t["shard_key"]
    catalog = Catalog.initial(shards, tables, vnodes_per_shard=vnodes) if shards else None
    rest = {k: data.pop(k) for k in ("store", "cluster", "log_level", "node_id", "lease_ttl")
            if k in data}
    if data:
        raise ConfigError(f"unknown top-level setting(s): {', '.join(sorted(data))}")
    if not isinstance(rest.get("lease_ttl", 5.0), int | float) or rest.get("lease_ttl", 5.0) < 1:
        raise ConfigError("lease_ttl must be a number of seconds >= 1")
    for d in databases:
        for sh in shards:
            if parse_dsn(sh.primary).database == d.server_database:
                raise ConfigError(f"[[databases]] {d.name}: dbname {d.server_database!r} is the "
                                  f"database of shard {sh.name}'s DSN, which serves [proxy] "
                                  f"database {proxy.database!r}")
    return Config(proxy=proxy, sidecar=sidecar, ha=ha, users=tuple(users), databases=databases,
                  catalog=catalog, **rest)


def _databases(items: list, proxy: ProxyConfig) -> tuple[DatabaseConfig, ...]:
    """[[databases]], validated: unique names and shard databases, sane pool settings."""
    if not isinstance(items, list):
        raise ConfigError("[[databases]] must be an array of tables")
    out: list[DatabaseConfig] = []
    for i, d in enumerate(items):
        where = f"[[databases]] #{i + 1}"
        if not isinstance(d, dict) or "name" not in d:
            raise ConfigError(f"{where}: name is required")
        db = _build(DatabaseConfig, d, where)
        for attr in ("name", "dbname"):
            value = getattr(db, attr)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"{where}: {attr} must be a non-empty string")
        if db.name == proxy.database:
            raise ConfigError(f"{where}: {db.name!r} is [proxy] database, whose settings are "
                              "[proxy]'s")
        if db.name == "pgshard":
            raise ConfigError(f"{where}: 'pgshard' is the admin console's database")
        for attr, least in (("pool_size", 1), ("min_pool_size", 0)):
            value = getattr(db, attr)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < least):
                raise ConfigError(f"{where}: {attr} must be an integer >= {least}")
        if (db.min_pool_size or 0) > (db.pool_size or proxy.pool_size):
            raise ConfigError(f"{where}: min_pool_size must not exceed pool_size")
        if db.pool_mode is not None and db.pool_mode not in POOL_MODES:
            raise ConfigError(f"{where}: pool_mode must be one of {POOL_MODES}")
        out.append(db)
    if len({d.name for d in out}) != len(out):
        raise ConfigError("[[databases]]: names must be unique")
    if len({d.server_database for d in out}) != len(out):
        raise ConfigError("[[databases]]: two entries name the same dbname on the shards")
    return tuple(out)


def _check_sidecar(sc: SidecarConfig) -> None:
    if not all(isinstance(o, str) for o in sc.cors_origins):
        raise ConfigError("[sidecar] cors_origins must be a list of origins")
    if not isinstance(sc.max_body_size, int) or sc.max_body_size < 1024:
        raise ConfigError("[sidecar] max_body_size must be at least 1024 bytes")
    if not isinstance(sc.token_ttl, int | float) or sc.token_ttl <= 0:
        raise ConfigError("[sidecar] token_ttl must be a positive number of seconds")
    if bool(sc.tls_cert) != bool(sc.tls_key):
        raise ConfigError("[sidecar] tls_cert and tls_key go together")
    if sc.execute_pool_size < 1 or sc.execute_max_rows < 1 or sc.execute_timeout <= 0:
        raise ConfigError("[sidecar] execute_pool_size, execute_max_rows and execute_timeout "
                          "must be positive")
    if not isinstance(sc.login_max_failures, int) or sc.login_max_failures < 0:
        raise ConfigError("[sidecar] login_max_failures must be an integer >= 0")
    for name, least in (("login_lockout", 0.001), ("login_lockout_max", 0),
                        ("login_rate_per_ip", 0)):
        value = getattr(sc, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < least:
            raise ConfigError(f"[sidecar] {name} must be a number of at least {least:g}")


def load_config(path: str | Path) -> Config:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return config_from_dict(data)


@dataclass(frozen=True)
class Dsn:
    host: str
    port: int
    user: str
    password: str
    database: str


def check_dsn(dsn: str, what: str = "DSN") -> Dsn:
    try:
        return parse_dsn(dsn)
    except ValueError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def parse_dsn(dsn: str) -> Dsn:
    """host/port/user/password/database of a postgresql:// URL."""
    u = urlsplit(dsn)
    if u.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"not a postgresql:// URL: {dsn!r}")
    try:
        port = u.port or 5432
    except ValueError:
        raise ValueError(f"bad port in {dsn!r}") from None
    return Dsn(host=u.hostname or "127.0.0.1", port=port, user=unquote(u.username or ""),
               password=unquote(u.password or ""), database=unquote(u.path.lstrip("/")) or "postgres")


def dsn_address(dsn: str) -> str:
    """host:port of a postgresql:// URL, for logs and status pages (never its password)."""
    try:
        d = parse_dsn(dsn)
    except ValueError:
        return "<unparseable DSN>"
    return f"{d.host}:{d.port}"


def to_toml(data: dict) -> str:
    """Render a config document (the shape config_from_dict reads) as TOML."""

    def val(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(val(x) for x in v) + "]"
        raise TypeError(f"cannot render {type(v).__name__} as TOML")

    lines: list[str] = []
    for k, v in data.items():
        if not isinstance(v, (dict, list)) or (isinstance(v, list) and v and not isinstance(v[0], dict)):
            lines.append(f"{k} = {val(v)}")
    for k, v in data.items():
        if isinstance(v, dict):
            lines.append(f"\n[{k}]")
            lines.extend(f"{kk} = {val(vv)}" for kk, vv in v.items() if vv is not None)
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for item in v:
                lines.append(f"\n[[{k}]]")
                lines.extend(f"{kk} = {val(vv)}" for kk, vv in item.items() if vv is not None)
    return "\n".join(lines) + "\n"
