"""The 2PC decision log (pgshard.proxy.decisions) on every metadata store backend (SQLite,
etcd, PostgreSQL): written once whoever comes first, read back, deleted."""

from __future__ import annotations

import pytest

from pgshard.proxy.decisions import DecisionLog
from pgshard.store import CasFailed
from tests.integration.test_store_conformance import backend, etcd_server  # noqa: F401

GIDS = {"shard0": "pgshard:r1:7:shard0", "shard1": "pgshard:r1:7:shard1"}


async def test_decision_log_on_every_backend(backend):  # noqa: F811
    log = DecisionLog(await backend.open())
    d = await log.record("r1", 7, GIDS)
    assert d.outcome == "commit" and d.revision > 0
    got = await log.get("r1", 7)
    assert (got.gids, got.outcome, got.revision) == (GIDS, "commit", d.revision)
    with pytest.raises(CasFailed):                  # a transaction is decided once
        await log.record("r1", 7, GIDS)
    # Recovery's abort finds the commit decision and follows it.
    assert (await log.abort("r1", 7, GIDS)).outcome == "commit"
    # For an undecided transaction recovery's abort wins, and a late commit cannot land.
    a = await log.abort("r1", 8, {"shard0": "pgshard:r1:8:shard0"})
    assert a.outcome == "abort"
    with pytest.raises(CasFailed):
        await log.record("r1", 8, {"shard0": "pgshard:r1:8:shard0"})
    everything = await log.all()
    assert {k: v.outcome for k, v in everything.items()} == {
        "twophase/r1:7": "commit", "twophase/r1:8": "abort"}
    with pytest.raises(CasFailed):                  # deletes compare revisions too
        await log.forget("r1", 7, revision=d.revision + 1000)
    assert await log.forget("r1", 7, revision=d.revision)
    assert await log.get("r1", 7) is None
    assert not await log.forget("r1", 7)
