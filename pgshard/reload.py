"""A changed config applied to a running process (SIGHUP, the admin console's RELOAD): what
changed, what takes effect at once (pools, users, timeouts, log level, operations settings)
and what needs a restart; never a password in a log line."""

from __future__ import annotations

import dataclasses
import logging

from pgshard.config import Config, ConfigError, load_config

log = logging.getLogger("pgshard")

# [proxy] settings read once at start: a change is reported, kept for the next start.
PROXY_RESTART = frozenset({"host", "port", "workers", "database", "tls_cert", "tls_key",
                           "statement_cache_bytes", "plan_cache_bytes", "two_phase_commit",
                           "twophase_recovery_interval", "twophase_timeout"})
TOP_RESTART = ("store", "cluster", "node_id", "lease_ttl")
_SECRET = ("password", "server_password")


def changes(old: Config, new: Config) -> tuple[list[str], list[str]]:
    """(applied, needs_restart): one human line per changed setting, old -> new."""
    applied: list[str] = []
    restart: list[str] = []
    for f in dataclasses.fields(old.proxy):
        a, b = getattr(old.proxy, f.name), getattr(new.proxy, f.name)
        if a != b:
            (restart if f.name in PROXY_RESTART else applied).append(
                f"proxy.{f.name}: {a!r} -> {b!r}")
    for section in ("sidecar", "ha"):
        o, n = getattr(old, section), getattr(new, section)
        for f in dataclasses.fields(o):
            a, b = getattr(o, f.name), getattr(n, f.name)
            if a != b:
                shown = "(changed)" if "secret" in f.name or "password" in f.name \
                    else f"{a!r} -> {b!r}"
                restart.append(f"{section}.{f.name}: {shown}")
    for name in TOP_RESTART:
        if getattr(old, name) != getattr(new, name):
            restart.append(f"{name}: {getattr(old, name)!r} -> {getattr(new, name)!r}")
    if old.log_level != new.log_level:
        applied.append(f"log_level: {old.log_level!r} -> {new.log_level!r}")
    before = {u.name: u for u in old.users}
    after = {u.name: u for u in new.users}
    for name in sorted(after.keys() - before.keys()):
        applied.append(f"user {name}: added")
    for name in sorted(before.keys() - after.keys()):
        applied.append(f"user {name}: removed")
    for name in sorted(before.keys() & after.keys()):
        for f in dataclasses.fields(before[name]):
            a, b = getattr(before[name], f.name), getattr(after[name], f.name)
            if a != b:
                shown = "changed" if f.name in _SECRET else f"{a!r} -> {b!r}"
                applied.append(f"user {name}: {f.name} {shown}")
    dbs_before = {d.name: d for d in old.databases}
    dbs_after = {d.name: d for d in new.databases}
    for name in sorted(dbs_before.keys() | dbs_after.keys()):
        a, b = dbs_before.get(name), dbs_after.get(name)
        if a != b:
            applied.append(f"database {name}: " + ("added" if a is None else "removed"
                                                   if b is None else f"{a!r} -> {b!r}"))
    return applied, restart


def merged(old: Config, new: Config, keep_users=()) -> Config:
    """The config to run with: new's reloadable settings, old's start-time ones; users named
    in keep_users (internal ones the process made itself) are kept from old."""
    proxy = dataclasses.replace(new.proxy, **{k: getattr(old.proxy, k) for k in PROXY_RESTART})
    internal = tuple(u for u in old.users if u.name in keep_users)
    users = tuple(u for u in new.users if u.name not in keep_users) + internal
    return dataclasses.replace(old, proxy=proxy, users=users, databases=new.databases,
                               log_level=new.log_level)


def apply(proxy, config: Config, log_level: str | None = None) -> None:
    """Put config into force on a running Proxy: pool settings (idle servers over a smaller
    pool_size are closed), users for new logins, client timeouts, the log level."""
    from pgshard.proxy.limits import Timeouts
    from pgshard.proxy.pool import PoolSettings

    proxy.config = config
    proxy.settings = settings = PoolSettings.of(config.proxy)
    for pool in list(proxy.pools.values()):
        own = config.user(pool.key.client) if pool.key.client else None
        db = next((d for d in config.databases if d.server_database == pool.key.database), None)
        pool.settings = settings.serving(own, db)
        size = pool.settings.pool_size
        while pool.size > size and pool.idle:
            s = pool.idle.popleft()
            s.terminate()
            s.mark_closed()
    pc = config.proxy
    proxy.limits.timeouts = Timeouts(pc.client_login_timeout, pc.client_idle_timeout,
                                     pc.idle_transaction_timeout)
    proxy.pool_registry.forget_lookups()   # pools are looked up again with the new users
    if log_level:
        logging.getLogger().setLevel(log_level.upper())


def reload(runtime, path: str | None) -> tuple[list[str], list[str]]:
    """Read path again and apply it to runtime; logs what changed. ConfigError when the file
    is unreadable or invalid (nothing is applied then)."""
    if not path:
        raise ConfigError("this process was not started from a config file: nothing to reload")
    new = load_config(path)
    from pgshard.control.execute import INTERNAL_USER

    old = runtime.proxy.config
    shown = dataclasses.replace(old, users=tuple(u for u in old.users if u.name != INTERNAL_USER))
    applied, restart = changes(shown, new)
    if new.catalog is not None and new.catalog != runtime.config.catalog:
        restart.append("[[shards]]/[[tables]]: the catalog lives in the metadata store; change "
                       "it with `pgshard shards|tables` or the REST API")
    config = merged(old, new, keep_users=(INTERNAL_USER,))
    apply(runtime.proxy, config,
          log_level=new.log_level if new.log_level != runtime.config.log_level else None)
    runtime.config = dataclasses.replace(runtime.config, proxy=config.proxy,
                                         users=new.users, databases=new.databases,
                                         log_level=new.log_level)
    if applied:
        log.info("config reloaded from %s: %s", path, "; ".join(applied),
                 extra={"event": "config.reload", "changed": applied})
    else:
        log.info("config reloaded from %s: nothing changed", path,
                 extra={"event": "config.reload", "changed": []})
    if restart:
        log.warning("config %s: these changes take effect only after a restart: %s", path,
                    "; ".join(restart), extra={"event": "config.reload", "restart": restart})
    return applied, restart
