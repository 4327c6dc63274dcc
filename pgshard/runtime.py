"""Process lifecycle: `serve` (proxy from a config) and `demo` (local cluster + proxy)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import signal
from pathlib import Path

from pgshard.config import Config, ProxyConfig, UserConfig, config_from_dict
from pgshard.proxy.listener import Proxy

log = logging.getLogger("pgshard")


async def _until_signalled() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve_forever(config: Config) -> None:
    proxy = Proxy(config)
    await proxy.start()
    try:
        await _until_signalled()
    finally:
        await proxy.stop()


def demo_config(cluster, port: int, pool_mode: str, password: str) -> Config:
    """The config `pgshard demo` runs with: one app user, the cluster's shards."""
    return config_from_dict({
        "proxy": {"port": port, "database": cluster.database, "pool_mode": pool_mode,
                  "pool_size": 20},
        "users": [{"name": "app", "password": password}],
        "shards": [{"name": s["name"], "primary": s["primary"], "replicas": s["replicas"]}
                   for s in cluster.describe()["shards"]],
    })


async def run_demo(data_dir: Path, shards: int, replicas: int, port: int, api_port: int,
                   pool_mode: str) -> None:
    from pgshard.cluster import LocalCluster

    data_dir.mkdir(parents=True, exist_ok=True)
    state_file = data_dir / "demo.json"
    state_file.unlink(missing_ok=True)
    cluster = LocalCluster(data_dir / "cluster", shards=shards, replicas=replicas)
    print(f"pgshard demo: starting {shards} shard(s) x (1 primary + {replicas} replica(s)) "
          f"in {cluster.base_dir} ...", flush=True)
    if cluster.exists():
        await asyncio.to_thread(cluster.start)
    else:
        await asyncio.to_thread(cluster.create)
    secret_file = data_dir / "app-password"
    if secret_file.exists():
        password = secret_file.read_text().strip()
    else:
        password = secrets.token_urlsafe(12)
        secret_file.write_text(password)
        os.chmod(secret_file, 0o600)
    config = demo_config(cluster, port, pool_mode, password)
    proxy = Proxy(config)
    try:
        await proxy.start()
        client_dsn = f"postgresql://app:{password}@127.0.0.1:{proxy.port}/{cluster.database}"
        state = {"client_dsn": client_dsn, **cluster.describe()}
        state_file.write_text(json.dumps(state, indent=2))
        print(f"pgshard demo ready. Connect with:\n  psql {client_dsn}\n"
              f"state: {state_file}   (Ctrl-C stops everything)", flush=True)
        await _until_signalled()
    finally:
        print("pgshard demo: stopping ...", flush=True)
        await proxy.stop()
        await asyncio.to_thread(cluster.stop)
        state_file.unlink(missing_ok=True)


__all__ = ["ProxyConfig", "UserConfig", "run_demo", "serve_forever", "demo_config"]
