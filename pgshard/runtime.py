"""Process lifecycle: `serve` (proxy + control plane from a config) and `demo` (local cluster,
proxy and control plane), all in one event loop."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import secrets
import signal
import socket
from pathlib import Path
from urllib.parse import quote

from pgshard.config import Config, ProxyConfig, UserConfig, config_from_dict
from pgshard.proxy.listener import Proxy

log = logging.getLogger("pgshard")

ROLES = ("all", "router")
STORE_TIMEOUT = 2.0
ADMIN_PASSWORD_ENV = "PGSHARD_ADMIN_PASSWORD"


class StartupError(Exception):
    """pgshard could not start; the message says why (store unreachable, no catalog, …)."""


class Runtime:
    """One pgshard process: the proxy plus its control plane.

    role "all": router, sidecar (REST API) and manager candidate; role "router": a stateless
    router that follows the catalog in the store and serves /health and /metrics only.
    """

    def __init__(self, config: Config, role: str = "all", worker=None):
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        self.config = config
        self.role = role
        self.worker = worker   # pgshard.worker_link.WorkerInfo under `serve --workers N`
        self.node_id = config.node_id or (
            f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}")
        if worker is not None:
            self.node_id = worker.node_id(self.node_id)
        self.store = None
        self.proxy: Proxy | None = None
        self.plane = None
        self.sidecar = None
        self.recovery = None    # two-phase commit recovery (manager only)
        self.global_ids = None  # sequences set to each shard's id slot (manager only)

    @property
    def api_url(self) -> str | None:
        return self.sidecar.url if self.sidecar is not None else None

    async def start(self) -> None:
        from pgshard.store import StoreError, open_store

        try:
            self.store = await open_store(self.config.store, cluster=self.config.cluster,
                                          timeout=STORE_TIMEOUT)
        except (StoreError, ValueError, OSError) as exc:
            raise StartupError(f"cannot open the metadata store {_redact(self.config.store)}: "
                               f"{exc}") from None
        try:
            await self._start_parts()
        except BaseException:
            await self.stop()
            raise

    async def _start_parts(self) -> None:
        from pgshard.control.app import Sidecar
        from pgshard.control.catalog_sync import CatalogFollower, load_or_seed
        from pgshard.control.execute import INTERNAL_USER, QueryExecutor
        from pgshard.control.membership import Membership, StoreStatus
        from pgshard.control.metrics import Metrics
        from pgshard.control.plane import ControlPlane
        from pgshard.control.twophase_recovery import set_coordinator, start_twophase
        from pgshard.store import StoreError

        config, store = self.config, self.store
        try:
            catalog, revision = await load_or_seed(store, config.catalog)
        except LookupError as exc:
            raise StartupError(str(exc)) from None
        except StoreError as exc:
            raise StartupError(f"cannot load the catalog: {exc}") from None

        manager = self.role == "all"
        worker = self.worker
        exec_password = worker.exec_password() if worker else secrets.token_urlsafe(24)
        proxy_config = config
        if manager or worker is not None:
            # /v1/execute enters through the proxy's own listener as this internal user
            # (with workers, whichever worker the kernel gives its connection to).
            proxy_config = dataclasses.replace(config, users=(
                *[u for u in config.users if u.name != INTERNAL_USER],
                UserConfig(name=INTERNAL_USER, password=exec_password)))
        self.proxy = proxy = Proxy(proxy_config, catalog)
        if worker is not None:
            proxy.worker_index, proxy.workers = worker.index, worker.count
        # The coordinator is in place before the first client: one that came in earlier
        # saw two-phase commit as off and had its cross-shard work refused.
        set_coordinator(config, store, proxy, self.node_id)
        await proxy.start()

        status = StoreStatus()
        from pgshard.control.lease_gate import LeaseGate
        proxy.lease_gate = gate = LeaseGate(proxy, config.store, status)
        membership = Membership(store, status, self.node_id, role=self.role,
                                ttl=config.lease_ttl, campaign=manager, info={}, gate=gate)
        membership.catalog_version = catalog.version
        follower = CatalogFollower(store, proxy, status, revision,
                                   on_applied=lambda c: membership.serving(c.version))
        gate.reload = follower.fetch
        plane = ControlPlane(config=config, role=self.role, node_id=self.node_id, store=store,
                             proxy=proxy, status=status, membership=membership,
                             follower=follower, metrics=None)
        plane.metrics = Metrics(proxy, plane.metrics_status)
        proxy.metrics = plane.metrics
        from pgshard.control.ha_status import HaMetrics
        plane.ha_metrics = HaMetrics(plane.metrics.registry, proxy)
        self.plane = plane
        if worker is not None:
            from pgshard.worker_link import WorkerLink
            plane.workers = proxy.link = WorkerLink(worker, proxy,
                                                    lambda: plane.metrics.render()[0])

        if manager:
            await self._start_manager(plane, exec_password, QueryExecutor)
        if config.sidecar.enabled and (worker is None or worker.index == 0):
            self.sidecar = Sidecar(plane)
            await self.sidecar.start()

        membership.info = {"proxy": f"{config.proxy.host}:{proxy.port}", "api": self.api_url}
        try:
            await membership.beat()
        except StoreError as exc:
            status.failed(exc)
        membership.start()
        follower.start()
        if plane.failover is not None:
            plane.failover.start()   # acts only while this process holds the leader lease
        from pgshard.control.fence_ack import FenceAcker
        plane.fence_acker = FenceAcker(store, proxy, self.node_id)
        from pgshard.reshard.metrics import ReshardMetrics
        proxy.fence_metrics = ReshardMetrics(plane.metrics.registry, lambda: plane.reshard)
        plane.fence_acker.start()
        if plane.reshard is not None:
            plane.reshard.start()
        self.recovery = start_twophase(config, store, proxy, membership, plane.metrics,
                                       self.node_id, manager)
        plane.twophase_recovery = self.recovery   # its warnings go into /health
        if manager:
            from pgshard.control.global_ids import GlobalIds
            self.global_ids = GlobalIds(store, lambda: proxy.catalog,
                                        lambda: membership.is_leader)
            self.global_ids.start()
        if plane.workers is not None:
            await plane.workers.start()   # the parent takes its socket for "ready"
        log.info("pgshard %s node %s serving catalog version %d on %s:%d%s", self.role,
                 self.node_id, catalog.version, config.proxy.host, proxy.port,
                 f", API {self.api_url}" if self.api_url else "")

    async def _start_manager(self, plane, exec_password: str, executor_cls) -> None:
        from pgshard.control.audit import AuditLog
        from pgshard.control.auth import TokenIssuer, load_jwt_secret
        from pgshard.control.catalog_ops import CatalogService
        from pgshard.control.users import UserDirectory

        sc = self.config.sidecar
        plane.tokens = TokenIssuer(await load_jwt_secret(self.store, sc.jwt_secret), sc.token_ttl)
        plane.users = UserDirectory(self.store)
        plane.audit = AuditLog(self.store, self.node_id)
        plane.catalog_ops = CatalogService(
            self.store, databases=lambda: tuple(d.server_database
                                                for d in self.proxy.config.databases))
        from pgshard.control.failover import FailoverManager
        plane.failover = FailoverManager(self.config.ha, self.proxy, plane.membership,
                                         plane.catalog_ops, plane.ha_metrics)
        plane.ha_metrics.failover = plane.failover
        from pgshard.reshard.runner import ReshardService
        plane.reshard = ReshardService(
            self.store, plane.catalog_ops, lambda: plane.membership.is_leader,
            # A job moves the rows of every logical database: the ring is one for all.
            databases=lambda: tuple(d.server_database for d in self.proxy.config.databases))
        plane.executor = executor_cls(self.proxy, exec_password, pool_size=sc.execute_pool_size,
                                      timeout=sc.execute_timeout, max_rows=sc.execute_max_rows)
        password = os.environ.get(ADMIN_PASSWORD_ENV) or sc.admin_password
        if password:
            if await plane.users.ensure_admin(sc.admin_user, password):
                log.info("bootstrap admin %r set up", sc.admin_user)
        elif not await plane.users.list():
            log.warning("no API users exist: set %s or [sidecar] admin_password to create the "
                        "bootstrap admin %r", ADMIN_PASSWORD_ENV, sc.admin_user)

    async def stop(self) -> None:
        """Stop everything that started (idempotent): the registration lease is revoked."""
        plane, self.plane = self.plane, None
        if plane is not None and plane.workers is not None:
            await plane.workers.stop()
        recovery, self.recovery = self.recovery, None
        if recovery is not None:
            await recovery.stop()
        ids, self.global_ids = self.global_ids, None
        if ids is not None:
            await ids.stop()
        if self.sidecar is not None:
            await self.sidecar.stop()
            self.sidecar = None
        if plane is not None:
            for part in (plane.reshard, plane.fence_acker):
                if part is not None:
                    await part.stop()
            if plane.failover is not None:
                await plane.failover.stop()
            await plane.follower.stop()
            await plane.membership.stop()
            if plane.executor is not None:
                await plane.executor.close()
        if self.proxy is not None and not self.proxy.closing:
            await self.proxy.stop()
        if self.proxy is not None and self.proxy.twophase is not None:
            await self.proxy.twophase.drain()   # commits under way finish with the store
        if self.store is not None:
            await self.store.close()
            self.store = None


async def _until_signalled(on_hup=None) -> int:
    """Wait for SIGINT or SIGTERM (returned); SIGHUP calls on_hup and never stops anything."""
    loop = asyncio.get_running_loop()
    stop = loop.create_future()

    def request(sig: int) -> None:
        if not stop.done():
            stop.set_result(sig)

    def hup() -> None:
        if on_hup is None:
            log.info("SIGHUP: this process has no config file to reload")
            return
        try:
            on_hup()
        except Exception as exc:   # a bad file is reported; the process keeps running
            log.error("SIGHUP: config not reloaded: %s", exc)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, request, sig)
    loop.add_signal_handler(signal.SIGHUP, hup)
    return await stop


async def _drain(runtime: Runtime) -> None:
    """SIGTERM: let open transactions finish (shutdown_timeout); a SIGINT or a second
    SIGTERM meanwhile stops at once."""
    from pgshard.proxy.drain import drain

    loop = asyncio.get_running_loop()
    timeout = runtime.proxy.config.proxy.shutdown_timeout
    task = loop.create_task(drain(runtime.proxy, timeout))

    def fast(sig: int) -> None:
        log.info("pgshard: %s while draining: stopping at once", signal.Signals(sig).name)
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, fast, sig)
    await asyncio.wait([task])


async def serve_forever(config: Config, role: str = "all", config_path: str | None = None,
                        worker=None) -> None:
    """Run the proxy and its control plane until SIGINT (stop at once) or SIGTERM (drain
    first); SIGHUP reloads config_path. worker: this process's WorkerInfo under
    `serve --workers N`."""
    from pgshard.reload import reload

    runtime = Runtime(config, role, worker=worker)
    try:
        await runtime.start()
    except StartupError as exc:
        raise SystemExit(f"pgshard: {exc}") from None
    runtime.proxy.reload = on_hup = lambda: reload(runtime, config_path)
    if worker is not None:
        from pgshard.workers import reload_everywhere
        runtime.proxy.reload = lambda: reload_everywhere(on_hup)
    try:
        sig = await _until_signalled(on_hup if config_path else None)
        if sig == signal.SIGTERM:
            log.info("pgshard node %s: SIGTERM, draining", runtime.node_id)
            await _drain(runtime)
    finally:
        log.info("pgshard node %s stopping", runtime.node_id)
        await runtime.stop()


DEMO_TABLE = "accounts"
CONSOLE_USER = "console"   # the demo's admin console user (psql -d pgshard), admin's password
DEMO_DDL = (f"CREATE TABLE IF NOT EXISTS {DEMO_TABLE} "
            "(id bigint PRIMARY KEY, owner text NOT NULL, balance numeric NOT NULL DEFAULT 0)")


def _create_demo_table(cluster, databases: tuple[str, ...] = ()) -> None:
    """The example sharded table, on every primary (replicas get it by replication), in the
    cluster's database and in each of databases (the catalog applies to all of them)."""
    for shard in cluster.shards:
        shard.primary.psql(DEMO_DDL)
        for name in databases:
            shard.primary.psql(DEMO_DDL, database=name)


def demo_config(cluster, port: int, pool_mode: str, password: str, *, api_port: int = 8081,
                store: str | None = None, admin_password: str | None = None,
                local_cluster: Path | None = None, databases: tuple[str, ...] = (),
                session_reset: str = "discard") -> Config:
    """The config `pgshard demo` runs with: one app user, the cluster's shards, and a
    [[databases]] entry for each of databases (created on every shard beforehand)."""
    data = {
        "proxy": {"port": port, "database": cluster.database, "pool_mode": pool_mode,
                  "session_server_reset": session_reset, "pool_size": 20,
                  "admin_users": [CONSOLE_USER] if admin_password else []},
        "sidecar": {"port": api_port, "admin_password": admin_password},
        "users": [{"name": "app", "password": password}]
        + ([{"name": CONSOLE_USER, "password": admin_password}] if admin_password else []),
        "shards": [{"name": s["name"], "primary": s["primary"], "replicas": s["replicas"]}
                   for s in cluster.describe()["shards"]],
        "tables": [{"name": DEMO_TABLE, "shard_key": "id"}],
        "databases": [{"name": name} for name in databases],
    }
    if store:
        data["store"] = store
    if local_cluster is not None:
        # The manager may stop, start and rejoin the demo's own servers (switchover, rejoin).
        data["ha"] = {"local_cluster": str(local_cluster)}
    return config_from_dict(data)


def _secret_file(path: Path) -> str:
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_urlsafe(12)
    path.write_text(value)
    os.chmod(path, 0o600)
    return value


async def run_demo(data_dir: Path, shards: int, replicas: int, port: int, api_port: int,
                   pool_mode: str, durable: bool = False, sync_replication: bool = False,
                   spares: int = 0, databases: tuple[str, ...] = (),
                   session_reset: str = "discard") -> None:
    from pgshard.cluster import LocalCluster

    data_dir.mkdir(parents=True, exist_ok=True)
    state_file = data_dir / "demo.json"
    state_file.unlink(missing_ok=True)
    cluster = LocalCluster(data_dir / "cluster", shards=shards, replicas=replicas,
                           durable=durable, sync_replication=sync_replication)
    durable = cluster.durable
    databases = tuple(dict.fromkeys(d for d in databases if d != cluster.database))
    if "pgshard" in databases:
        raise SystemExit("pgshard demo: 'pgshard' is the admin console's database")
    print(f"pgshard demo: starting {shards} shard(s) x (1 primary + {replicas} replica(s)) "
          f"in {cluster.base_dir} ...", flush=True)
    if not durable:
        print("pgshard demo: PostgreSQL runs with fsync off for speed; a crash can lose "
              "committed data (--durable turns fsync, synchronous_commit and "
              "full_page_writes on)", flush=True)
    if cluster.exists():
        await asyncio.to_thread(cluster.start)
    else:
        await asyncio.to_thread(cluster.create)
    for name in databases:
        await asyncio.to_thread(cluster.add_database, name)
    await asyncio.to_thread(_create_demo_table, cluster, databases)
    # Empty clusters outside the catalog, to try `pgshard shards add` + `pgshard reshard`.
    spare = LocalCluster(data_dir / "spares", shards=spares, replicas=replicas,
                         durable=durable, shard_prefix="spare") if spares else None
    if spare is not None:
        await asyncio.to_thread(spare.start if spare.exists() else spare.create)
    password = _secret_file(data_dir / "app-password")
    admin_password = _secret_file(data_dir / "admin-password")
    config = demo_config(cluster, port, pool_mode, password, api_port=api_port,
                         store=f"sqlite:///{data_dir / 'meta.db'}",
                         admin_password=admin_password, local_cluster=cluster.base_dir,
                         databases=databases, session_reset=session_reset)
    runtime = Runtime(config)
    try:
        try:
            await runtime.start()
        except StartupError as exc:
            raise SystemExit(f"pgshard demo: {exc}") from None
        client_dsn = (f"postgresql://app:{password}@127.0.0.1:{runtime.proxy.port}/"
                      f"{cluster.database}")
        database_dsns = {name: client_dsn.rsplit("/", 1)[0] + "/" + quote(name, safe="")
                         for name in (cluster.database, *databases)}
        console_dsn = (f"postgresql://{CONSOLE_USER}:{admin_password}@127.0.0.1:"
                       f"{runtime.proxy.port}/pgshard")
        state = {"client_dsn": client_dsn, "console_dsn": console_dsn,
                 "databases": database_dsns, "api": runtime.api_url,
                 "admin_user": config.sidecar.admin_user, "admin_password": admin_password,
                 **cluster.describe(),
                 "spares": spare.describe()["shards"] if spare is not None else []}
        state_file.write_text(json.dumps(state, indent=2))
        os.chmod(state_file, 0o600)
        print(f"pgshard demo ready. Connect with:\n  psql {client_dsn}\n"
              f"Example sharded table: {DEMO_TABLE}(id, owner, balance), sharded by id; try\n"
              f"  INSERT INTO {DEMO_TABLE} VALUES (1, 'ann', 10), (2, 'bob', 20);\n"
              f"  SELECT * FROM {DEMO_TABLE} ORDER BY id;\n"
              + "".join(f"Database {name} (its own tables and rows): psql {dsn}\n"
                        for name, dsn in list(database_dsns.items())[1:]) +
              "Declare your own tables with `pgshard tables add NAME --shard-key COLUMN`.\n"
              f"Admin console: psql postgresql://{CONSOLE_USER}@127.0.0.1:{runtime.proxy.port}"
              f"/pgshard (the admin password; console_dsn in {state_file})\n"
              f"REST API: {runtime.api_url} (user {config.sidecar.admin_user}, password in "
              f"{state_file})\nstate: {state_file}   (Ctrl-C stops everything)", flush=True)
        await _until_signalled()
    finally:
        print("pgshard demo: stopping ...", flush=True)
        await runtime.stop()
        await asyncio.to_thread(cluster.stop)
        if spare is not None:
            await asyncio.to_thread(spare.stop)
        state_file.unlink(missing_ok=True)


def _redact(url: str) -> str:
    from pgshard.control.catalog_ops import redact_dsn

    return redact_dsn(url) if url.startswith("postgres") else url


__all__ = ["ProxyConfig", "Runtime", "StartupError", "UserConfig", "demo_config", "run_demo",
           "serve_forever"]
