"""The control plane's parts as one object the REST handlers reach through the app."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pgshard.compiled import status as compiled_status
from pgshard.config import Config
from pgshard.control.audit import AuditLog
from pgshard.control.auth import TokenIssuer
from pgshard.control.catalog_ops import CatalogService
from pgshard.control.catalog_sync import CatalogFollower
from pgshard.control.execute import QueryExecutor
from pgshard.control.login_limits import LoginLimiter
from pgshard.control.membership import Membership, StoreStatus
from pgshard.control.metrics import Metrics
from pgshard.control.users import UserDirectory
from pgshard.store import MetadataStore


@dataclass
class ControlPlane:
    config: Config
    role: str                       # "all" (router + sidecar + manager) or "router"
    node_id: str
    store: MetadataStore
    proxy: object                   # pgshard.proxy.listener.Proxy
    status: StoreStatus
    membership: Membership
    follower: CatalogFollower
    metrics: Metrics
    tokens: TokenIssuer | None = None
    users: UserDirectory | None = None
    audit: AuditLog | None = None
    catalog_ops: CatalogService | None = None
    executor: QueryExecutor | None = None
    login_limiter: LoginLimiter | None = None   # default: from the [sidecar] login_* settings
    reshard: object | None = None               # pgshard.reshard.runner.ReshardService (manager)
    fence_acker: object | None = None           # pgshard.control.fence_ack.FenceAcker
    failover: object | None = None              # pgshard.control.failover.FailoverManager
    ha_metrics: object | None = None            # pgshard.control.ha_status.HaMetrics
    twophase_recovery: object | None = None     # control.twophase_recovery.TwoPhaseRecovery
    workers: object | None = None               # pgshard.worker_link.WorkerLink (--workers N)
    started_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.login_limiter is None:
            self.login_limiter = LoginLimiter.from_settings(self.config.sidecar)

    def health(self) -> dict:
        """Liveness facts: the served catalog version and whether the store answers."""
        catalog = self.proxy.catalog
        reachable = self.status.reachable
        from pgshard.control.ha_status import degraded_summary, shard_states
        shards = shard_states(self.proxy, self.failover)
        degraded = degraded_summary(shards)
        gate = getattr(self.proxy, "lease_gate", None)
        routing = gate is None or not gate.closed
        if not routing:
            degraded.insert(0, "not routing statements (57P03): the lease in the metadata "
                               "store may have lapsed")
        if not reachable:
            degraded.insert(0, f"metadata store unreachable: {self.status.last_error}")
        # Warnings do not degrade the status: only cross-shard commits are affected.
        recovery = self.twophase_recovery
        warnings = (recovery.warnings() if recovery is not None
                    and self.config.proxy.two_phase_commit else [])
        return {
            "status": "degraded" if degraded else "ok",
            "degraded": degraded,
            "warnings": warnings,
            "shards": shards,
            "node_id": self.node_id,
            "role": self.role,
            "catalog_version": catalog.version if catalog is not None else None,
            "store": {"backend": self.config.store.split("://", 1)[0], **self.status.to_json()},
            "serving_last_known_catalog": not reachable,
            "routing": routing,
            "leader": self.membership.is_leader,
            "proxy": {"port": self.proxy.port, "clients": len(self.proxy.clients)},
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "compiled": compiled_status(),
        }

    def metrics_status(self) -> dict:
        catalog = self.proxy.catalog
        return {"catalog_version": catalog.version if catalog is not None else 0,
                "store_reachable": self.status.reachable, "leader": self.membership.is_leader,
                "shards": len(catalog.shards) if catalog is not None else 0}
