"""`pgshard status` and /health warn about a shard that cannot take part in two-phase commit
(max_prepared_transactions = 0), as the elected manager's recovery service finds it; a real
runtime over a real 2-shard cluster, the CLI run in-process."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
from click.testing import CliRunner

from pgshard.cli import main
from tests.fixtures.clusters import temp_cluster
from tests.fixtures.runtime import running_runtime, runtime_config


@pytest.fixture(scope="module")
def cluster():
    with temp_cluster(shards=2, replicas=0,
                      shard_conf={"shard1": {"max_prepared_transactions": 0}}) as c:
        yield c


def _status(api: str, tmp_path, *args: str):
    env = {"PGSHARD_API": api, "PGSHARD_CONFIG_DIR": str(tmp_path / "cfg"),
           "PGSHARD_TOKEN": None, "PGSHARD_USER": None, "PGSHARD_CA_FILE": None}
    return CliRunner(env=env).invoke(main, ["status", *args])


async def _health_with_warnings(api: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            async with http.get(api + "/health") as resp:
                health = await resp.json()
            if health.get("warnings") or time.monotonic() > deadline:
                return health
            await asyncio.sleep(0.2)


def test_status_warns_about_a_shard_without_prepared_transactions(cluster, tmp_path):
    cfg = runtime_config(cluster, proxy={"twophase_recovery_interval": 0.5})

    async def go():
        async with running_runtime(cfg) as rt:
            health = await _health_with_warnings(rt.api_url)
            text = await asyncio.to_thread(_status, rt.api_url, tmp_path)
            as_json = await asyncio.to_thread(_status, rt.api_url, tmp_path, "--json")
            return health, text, as_json

    health, text, as_json = asyncio.run(go())
    assert health["status"] == "ok"             # a warning, not a degraded cluster
    assert len(health["warnings"]) == 1
    warning = health["warnings"][0]
    assert warning.startswith("shard1: max_prepared_transactions = 0")
    assert "shard0" not in warning
    assert text.exit_code == 0, text.output
    assert f"warning: {warning}" in text.stderr
    assert "warning:" not in text.stdout
    doc = json.loads(as_json.stdout)
    assert doc["health"]["warnings"] == [warning]


def test_no_warning_when_two_phase_commit_is_off(cluster, tmp_path):
    cfg = runtime_config(cluster, proxy={"twophase_recovery_interval": 0.5,
                                         "two_phase_commit": False})

    async def go():
        async with running_runtime(cfg) as rt:
            # The recovery round has run (and seen shard1) once it reports.
            deadline = time.monotonic() + 30
            while rt.recovery.last is None and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert rt.recovery.disabled == {"shard1"}
            return await asyncio.to_thread(_status, rt.api_url, tmp_path, "--json")

    doc = json.loads(asyncio.run(go()).stdout)
    assert doc["health"]["status"] == "ok" and doc["health"]["warnings"] == []
