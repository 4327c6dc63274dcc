"""The resharding job model: planning against a catalog, transitions, JSON round trip; and
the changes the applier turns into statements (pure parts, no servers)."""

from __future__ import annotations

import pytest

from pgshard.protocol import pgoutput as po
from pgshard.reshard import job as jobs
from pgshard.reshard import sqltext as q
from pgshard.reshard.apply import Applier
from pgshard.reshard.job import Job, JobError
from pgshard.reshard.tables import TableInfo
from pgshard.ring.catalog import Catalog, Shard
from pgshard.ring.hashing import token
from pgshard.ring.ranges import RangeMove


def catalog() -> Catalog:
    cat = Catalog.initial([Shard("s0", "postgresql://a/x"), Shard("s1", "postgresql://b/x")],
                          {"t": "id"}, vnodes_per_shard=8)
    return cat.evolve(shards=(*cat.shards, Shard("s2", "postgresql://c/x")))


PLAN_REFUSALS = [
    ("explode", "s0", "s2", 422),
    ("split", "nope", "s2", 404),
    ("split", "s0", "nope", 404),
    ("split", "s0", "s1", 409),        # target owns vnodes
    ("split", "s2", "s0", 409),        # source owns nothing
    ("split", "s0", "s0", 422),
    ("split", None, "s2", 422),
    ("merge", "s0", "s2", 409),        # merge target owns nothing
    ("rebalance", "s0", "s2", 422),    # a rebalance names no source
    ("rebalance", None, "s1", 409),
]


@pytest.mark.parametrize("kind, source, target, status", PLAN_REFUSALS)
def test_plan_refusals(kind, source, target, status):
    with pytest.raises(JobError) as e:
        jobs.plan(catalog(), kind, source, target)
    assert e.value.status == status


@pytest.mark.parametrize("kind, source, target", [
    ("split", "s0", "s2"), ("merge", "s1", "s0"), ("rebalance", None, "s2")])
def test_plans_move_ranges_to_the_target(kind, source, target):
    j = jobs.plan(catalog(), kind, source, target, job_id="j1")
    assert j.moves and all(m.dst == target for m in j.moves)
    if source:
        assert j.sources == (source,)
    assert j.state == "pending" and j.step == "preconditions" and j.phase == "schema"
    assert j.slot == "pgshard_j1"
    assert Job.from_json(j.to_json()) == j


def test_transitions():
    j = jobs.plan(catalog(), "split", "s0", "s2", job_id="j1")
    j = j.advance("schema").advance("capture").advance("copy", rows_copied=5)
    assert j.state == "running" and j.phase == "copy" and j.view()["progress"]["rows_copied"] == 5
    with pytest.raises(JobError):
        j.advance("schema")                    # never backwards
    j = j.request_cancel()
    assert j.cancel_requested and not j.flipped
    j = j.start_rollback(None)
    with pytest.raises(JobError):
        j.advance("catchup")                   # rolling back: no forward step
    assert j.finish_rollback().state == "cancelled"
    failed = jobs.plan(catalog(), "split", "s0", "s2").start_rollback("boom").finish_rollback()
    assert failed.state == "failed" and failed.error == "boom" and failed.phase is None


def test_no_cancel_or_rollback_past_the_flip():
    j = jobs.plan(catalog(), "split", "s0", "s2").advance("flip")
    with pytest.raises(JobError):
        j.request_cancel()
    j = j.advance("cleanup")
    assert j.flipped
    with pytest.raises(JobError):
        j.start_rollback("x")
    done = j.done()
    assert done.state == "done" and done.phase is None
    with pytest.raises(JobError):
        done.request_cancel()


def test_advance_clears_a_retried_error():
    j = jobs.plan(catalog(), "split", "s0", "s2").note_error("copy: shard down")
    assert j.error and j.advance("schema").error is None


def test_multirange_and_checksum_text():
    spans = [RangeMove(-1, 10, "a", "b"), RangeMove(20, 30, "a", "b")]
    assert q.multirange(spans) == "'{(-1,10],(20,30]}'::int8multirange"
    sql = q.checksum("public.T", ["id", "v"], "id", spans)
    assert "ARRAY[0,21]::bigint[]" in sql and '"public"."t"' in sql


def _applier(spans):
    info = TableInfo("t", "id", ("id", "v", "big"), ("bigint", "text", "text"), ("id",))
    app = Applier([info], spans)
    rel = po.Relation(7, "public", "t", "d", (po.Column("id", 20, -1, True),
                                              po.Column("v", 25, -1, False),
                                              po.Column("big", 25, -1, False)))
    return app, rel


def _span_of(key: str) -> RangeMove:
    t = token(key.encode())
    return RangeMove(t - 1, t, "a", "b")


def test_applier_keeps_only_moving_rows():
    app, rel = _applier([_span_of("1")])
    stmts = app.statements([rel, po.Insert(7, ("1", "a", "b")), po.Insert(7, ("2", "a", "b")),
                            po.Delete(7, ("2", None, None)), po.Delete(7, ("1", None, None))])
    assert [s[1] for s in stmts] == [("1", "a", "b"), ("1",)]
    assert stmts[0][0].startswith('INSERT INTO "t"') and "ON CONFLICT" in stmts[0][0]
    assert stmts[1][0].startswith('DELETE FROM "t"')


def test_applier_unchanged_toast_updates_what_it_has():
    app, rel = _applier([_span_of("1")])
    (sql, args), = app.statements([rel, po.Update(7, ("1", "new", po.UNCHANGED_TOAST))])
    assert sql.startswith('UPDATE "t" SET "id" = $2::text::bigint, "v" = $3::text::text')
    assert args == ("1", "1", "new")


def test_applier_key_change_out_of_the_range_deletes_the_old_row():
    app, rel = _applier([_span_of("1")])
    stmts = app.statements([rel, po.Update(7, ("2", "v", "b"), ("1", None, None), True)])
    assert len(stmts) == 1 and stmts[0][0].startswith("DELETE") and stmts[0][1] == ("1",)


def test_applier_truncate_deletes_the_ranges_and_ignores_unknown_relations():
    app, rel = _applier([_span_of("1")])
    other = po.Relation(8, "public", "other", "d", (po.Column("id", 20, -1, True),))
    stmts = app.statements([rel, other, po.Insert(8, ("1",)), po.Truncate((7, 8))])
    assert len(stmts) == 1 and stmts[0][0].startswith('DELETE FROM "t" WHERE pgshard.hash')


def test_applier_records_the_moving_keys_it_changes():
    app, rel = _applier([_span_of("1"), _span_of("3")])
    app.statements([rel, po.Insert(7, ("1", "a", "b")), po.Insert(7, ("2", "a", "b")),
                    po.Update(7, ("4", "v", "b"), ("3", None, None), True)])
    assert app.touched == {"t": {("1",), ("3",)}}     # 2 and 4 do not move
    app.statements([po.Truncate((7,))])
    assert app.touched == {"t": None}                  # a truncate touched every row


def test_index_friendly_copy_and_key_lookup_text():
    spans = [RangeMove(-1, 10, "a", "b"), RangeMove(20, 30, "a", "b")]
    sql = q.select_ranges("t", ["id", "v"], "id", spans, indexed=True)
    assert "<@" not in sql and sql.count(" OR ") == 1 and '> 20 AND' in sql
    assert "<@" in q.select_ranges("t", ["id", "v"], "id", spans)
    sql = q.rows_by_key("t", ["a", "b", "v"], ["a", "b"], ["text", "integer"])
    assert "unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(k0, k1, i)" in sql
    assert 't."b" = k.k1::integer' in sql


def test_catalog_transitions_of_a_job():
    from pgshard.reshard.transitions import fence_lifted, finished, flipped, reads_unfiltered
    from pgshard.ring.catalog import Fence

    cat = catalog()
    j = jobs.plan(cat, "split", "s0", "s2", job_id="j1")
    fenced = cat.evolve(fences=(Fence(1, 2, "j1"), Fence(3, 4, "other")),
                        filter_reads=("s0", "s2", "s1"))
    after = flipped(fenced, j)
    assert after.ring == j.new_ring and [f.job for f in after.fences] == ["other"]
    assert flipped(after, j) is None                       # a retried flip changes nothing
    with pytest.raises(JobError, match="ring changed"):
        flipped(cat.evolve(ring=jobs.plan(cat, "split", "s1", "s2", job_id="x").new_ring), j)
    done = finished(after, j)
    assert set(done.filter_reads) == {"s1"} and finished(done, j) is None
    lifted = fence_lifted(fenced, j)
    assert lifted.ring == cat.ring and [f.job for f in lifted.fences] == ["other"]
    assert fence_lifted(lifted, j) is None
    assert set(reads_unfiltered(fenced, j).filter_reads) == {"s1"}
    assert reads_unfiltered(cat, j) is None
    merged = jobs.plan(cat, "merge", "s1", "s0", job_id="j2")
    gone = finished(flipped(cat, merged), merged)
    assert "s1" not in gone.shard_names() and "s1" not in gone.ring.shards()
