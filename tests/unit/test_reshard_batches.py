"""Pure parts of the faster copy and cleanup, the per-database job fields and the lease
gate: batch sizing, the one-pass checksum SQL, slot names per database, the JSON round
trip, store URLs without passwords."""

from __future__ import annotations

import pytest

from pgshard.control.lease_gate import redact
from pgshard.reshard import job as jobs
from pgshard.reshard import sqltext as q
from pgshard.reshard.copy import batch_size
from pgshard.reshard.job import Job
from pgshard.ring.catalog import Catalog, Shard
from pgshard.ring.ring import TokenSpan

BATCHES = [
    # rows the last batch deleted, its ranges, target rows, most -> next batch's ranges
    (4000, 4, 100_000, 256, 100),
    (100_000, 100, 100_000, 256, 100),
    (0, 4, 100_000, 256, 256),         # nothing there: as many as allowed
    (10, 1, 100_000, 32, 32),          # capped
    (1_000_000, 4, 100_000, 256, 1),   # never below one range
    (260_000, 256, 1_000_000, 256, 256),   # the copy: all ranges in one pass
    (5_000_000, 256, 1_000_000, 256, 51),
]


@pytest.mark.parametrize("rows, ranges, target, most, want", BATCHES)
def test_batch_size(rows, ranges, target, most, want):
    assert batch_size(rows, ranges, target, most) == want


def test_checksum_total_indexed_and_hashed():
    spans = [TokenSpan(-1, 10), TokenSpan(20, 30)]
    indexed = q.checksum_total("s.t", ["id", "v"], "id", spans, True)
    assert "<@" not in indexed
    assert '(pgshard.hash(("id")::text) > -1 AND pgshard.hash(("id")::text) <= 10) OR' in indexed
    assert indexed.startswith("SELECT count(*), coalesce(sum(hashtextextended("
                              'ROW("id", "v")::text, 0)::numeric), 0)::text FROM "s"."t" WHERE')
    hashed = q.checksum_total("t", ["id"], "id", spans, False)
    assert "<@ '{(-1,10],(20,30]}'::int8multirange" in hashed
    assert q.checksum_total("t", ["id"], "id", None, False).endswith("FROM \"t\"")


def test_guard_trigger_skips_its_function_when_bypassed():
    sql = q.create_guard("t", "id", "j1")
    assert "WHEN (current_setting('pgshard.reshard_bypass', true) IS DISTINCT FROM 'on')" in sql


def _job(databases=()) -> Job:
    cat = Catalog.initial([Shard("s0", "postgresql://a/x"), Shard("s1", "postgresql://b/x")],
                          {"t": "id"}, vnodes_per_shard=8)
    cat = cat.evolve(shards=(*cat.shards, Shard("s2", "postgresql://c/x")))
    return jobs.plan(cat, "split", "s0", "s2", job_id="20260101000000abcdef",
                     databases=databases)


def test_databases_round_trip_slots_and_copy_keys():
    job = _job(("extra", "reports_db"))
    assert Job.from_json(job.to_json()) == job
    assert job.view()["databases"] == ["extra", "reports_db"]
    assert job.slot_in(None) == job.slot == "pgshard_20260101000000abcdef"
    names = {job.slot_in(d) for d in (None, "extra", "reports_db")}
    assert len(names) == 3 and all(len(n) <= 63 for n in names)
    assert job.slot_in("extra") == job.slot_in("extra")
    assert Job.copy_key("s0", None, "t") == "s0/t"        # as jobs recorded before
    assert Job.copy_key("s0", "extra", "t") == "s0/extra/t"
    # A record written before jobs had databases reads as the main database only.
    old = job.to_json()
    del old["databases"]
    assert Job.from_json(old).databases == ()


@pytest.mark.parametrize("url, want", [
    ("etcd://u:secret@h:2379", "etcd://u:***@h:2379"),
    ("postgresql://meta:pw@db/meta", "postgresql://meta:***@db/meta"),
    ("etcd://h1:2379,h2:2379", "etcd://h1:2379,h2:2379"),
    ("sqlite:///var/lib/pgshard/meta.db", "sqlite:///var/lib/pgshard/meta.db"),
])
def test_redact(url, want):
    assert redact(url) == want
