"""The failover decision as tables: when a primary counts as failed, which replica is
promoted, and when synchronous replication forbids a promotion; plus the catalog's HA fields."""

from __future__ import annotations

import pytest

from pgshard.control.failover_rule import (
    NONE,
    PROMOTE,
    REFUSE,
    NodeFacts,
    ShardFacts,
    choose,
    decide,
    parse_sync_names,
    primary_failed,
    sync_members,
)
from pgshard.ring.catalog import Catalog, Failover, Shard

P, A, B, C = "pg://p", "pg://a", "pg://b", "pg://c"
DOWN = NodeFacts(P, reachable=False, failures=3)


def rep(dsn, lsn=100, *, reachable=True, streaming=False, recv=None, in_recovery=True):
    return NodeFacts(dsn, reachable=reachable, failures=0 if reachable else 3,
                     in_recovery=in_recovery, replay_lsn=lsn, receive_lsn=recv,
                     streaming=streaming)


def shard(primary, *replicas, sync=(), quorum=0):
    return ShardFacts("s0", primary, tuple(replicas), frozenset(sync), quorum)


@pytest.mark.parametrize("facts, failed, why", [
    (shard(NodeFacts(P, True), rep(A)), False, "answers"),
    (shard(NodeFacts(P, False, failures=2), rep(A)), False, "2 of 3"),
    # The manager lost the primary, the replica did not: a manager-side problem.
    (shard(DOWN, rep(A, streaming=True)), False, "still stream"),
    (shard(DOWN, rep(A, streaming=True), rep(B)), False, "still stream"),
    (shard(DOWN, rep(A, reachable=False)), False, "no replica is reachable"),
    (shard(DOWN), False, "no replica is reachable"),
    (shard(DOWN, rep(A)), True, "no replica streams"),
    (shard(DOWN, rep(A), rep(B, reachable=False)), True, "no replica streams"),
])
def test_primary_failed(facts, failed, why):
    got, reason = primary_failed(facts, threshold=3)
    assert got is failed and why in reason


@pytest.mark.parametrize("facts, action, candidate, why", [
    (shard(DOWN, rep(A, 100), rep(B, 200)), PROMOTE, B, "highest"),
    # Received WAL counts: promotion replays it first.
    (shard(DOWN, rep(A, 100, recv=300), rep(B, 200)), PROMOTE, A, "highest"),
    (shard(DOWN, rep(A, 200), rep(B, 200)), PROMOTE, A, "highest"),  # ties: DSN order
    (shard(DOWN, rep(A, 100), rep(B, 900, reachable=False)), PROMOTE, A, "highest"),
    (shard(DOWN, rep(A, None)), REFUSE, None, "no healthy replica"),
    (shard(DOWN, rep(A, 500, in_recovery=False), rep(B, 100)), PROMOTE, B, "highest"),
    (shard(DOWN), REFUSE, None, "no healthy replica"),
    # Synchronous: only a sync standby, never an async one even if it is ahead.
    (shard(DOWN, rep(A, 100), rep(B, 900), sync=[A], quorum=1), PROMOTE, A, "synchronous"),
    (shard(DOWN, rep(A, 100, reachable=False), rep(B, 900), sync=[A], quorum=1),
     REFUSE, None, "only 0 of 1"),
    (shard(DOWN, rep(A), sync=[], quorum=1), REFUSE, None, "no replica of the catalog"),
    # ANY 1 of two: both must be seen to know which one has every commit.
    (shard(DOWN, rep(A, 100), rep(B, 200), sync=[A, B], quorum=1), PROMOTE, B, "synchronous"),
    (shard(DOWN, rep(A, 100), rep(B, 200, reachable=False), sync=[A, B], quorum=1),
     REFUSE, None, "2 are needed"),
    # ANY 2 of three: two seen suffice.
    (shard(DOWN, rep(A, 100), rep(B, 150), rep(C, 9, reachable=False), sync=[A, B, C],
           quorum=2), PROMOTE, B, "synchronous"),
])
def test_choose(facts, action, candidate, why):
    d = choose(facts)
    assert (d.action, d.candidate) == (action, candidate) and why in d.reason, d


@pytest.mark.parametrize("to, caught_up, facts, action, why", [
    (A, False, shard(DOWN, rep(A, 100), rep(B, 200)), REFUSE, "behind"),
    (B, False, shard(DOWN, rep(A, 100), rep(B, 200)), PROMOTE, "requested"),
    (C, False, shard(DOWN, rep(A), rep(B)), REFUSE, "not a replica"),
    (B, False, shard(DOWN, rep(A), rep(B, reachable=False)), REFUSE, "not a healthy"),
    (B, False, shard(DOWN, rep(A), rep(B), sync=[A], quorum=1), REFUSE, "synchronous"),
    # A switchover target replayed everything the primary wrote: the sync rule is moot.
    (B, True, shard(DOWN, rep(A, 300), rep(B, 200), sync=[A], quorum=1), PROMOTE, "requested"),
])
def test_choose_requested(to, caught_up, facts, action, why):
    d = choose(facts, to=to, caught_up=caught_up)
    assert d.action == action and why in d.reason, d


def test_decide():
    assert decide(shard(NodeFacts(P, True), rep(A)), 3).action == NONE
    d = decide(shard(DOWN, rep(A), rep(B, 300)), 3)
    assert (d.action, d.candidate) == (PROMOTE, B) and "no replica streams" in d.reason
    d = decide(shard(DOWN, rep(A), sync=[B], quorum=1), 3)
    assert d.action == REFUSE and d.candidate is None


@pytest.mark.parametrize("setting, expected", [
    ("", (0, ())), (None, (0, ())), ("  ", (0, ())),
    ("*", (1, ("*",))),
    ("ANY 1 (*)", (1, ("*",))),
    ('ANY 1 ("shard0-replica1", "shard0-replica2")', (1, ("shard0-replica1", "shard0-replica2"))),
    ("any 2 (a, B)", (2, ("a", "b"))),
    ("FIRST 1 (a, b)", (1, ("a", "b"))),
    ("2 (a, b, c)", (2, ("a", "b", "c"))),
    ("a, b", (1, ("a", "b"))),
    ('ANY 1 ("a,b", c)', (1, ("a,b", "c"))),
])
def test_parse_sync_names(setting, expected):
    assert parse_sync_names(setting) == expected


def test_sync_members():
    apps = {A: "shard0-replica1", B: "shard0-replica2", C: None}
    assert sync_members('ANY 1 ("shard0-replica1")', apps) == ((A,), 1)
    assert sync_members("ANY 1 (*)", apps) == ((A, B, C), 1)
    assert sync_members("", apps) == ((), 0)
    assert sync_members("ANY 1 (other)", apps) == ((), 1)


def test_catalog_ha_fields_round_trip_and_stay_out_of_old_json():
    plain = Shard("s0", P, (A,))
    assert set(plain.to_json()) == {"name", "primary", "replicas", "status", "weight"}
    rec = Failover("2026-01-01T00:00:00Z", "failover", "primary down", P, A, 2.5)
    ha = Shard("s0", A, (B,), fenced=(P,), sync=(B,), sync_quorum=1, hold="switchover",
               last_failover=rec)
    cat = Catalog.initial([ha], {})
    again = Catalog.from_json(cat.to_json())
    assert again == cat and again.shard("s0").last_failover == rec
    assert again.shard("s0").to_json()["last_failover"]["from"] == P
    with pytest.raises(ValueError):
        Shard("s0", P, fenced="pg://x")
    with pytest.raises(ValueError):
        Shard.from_json({"name": "s0", "primary": P, "last_failover": {"at": 1}})
