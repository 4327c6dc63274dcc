"""Two-phase commit against real PostgreSQL: the coordinator (pgshard.proxy.twophase) over
asyncpg connections holding each shard's transaction, its decision log in a real SQLite
store, its fault points, and recovery (pgshard.control.twophase_recovery) finishing what a
crash left behind. Every outcome is checked on the primaries directly."""

from __future__ import annotations

import asyncio
import os
import random
import tempfile
import uuid

import asyncpg
import pytest

from pgshard.control.twophase_recovery import TwoPhaseRecovery
from pgshard.protocol.errors import PgError
from pgshard.proxy.decisions import DecisionLog, decision_key
from pgshard.proxy.twophase import Coordinator, Faults, SimulatedCrash
from pgshard.ring.catalog import Catalog, Shard
from pgshard.store import open_store
from tests.fixtures.clusters import temp_cluster
from tests.fixtures.twophase import TxnOwner, asyncpg_run, fetch_ids, prepared_gids

TABLE = "tp_items"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def cluster():
    """shard0, shard1 with prepared transactions; shard2 with max_prepared_transactions = 0."""
    with temp_cluster(shards=3, replicas=0,
                      shard_conf={"shard2": {"max_prepared_transactions": 0}}) as c:
        for s in c.shards:
            s.primary.psql(f"CREATE TABLE {TABLE} (id int PRIMARY KEY, "
                           "code text UNIQUE DEFERRABLE INITIALLY DEFERRED)")
        yield c


@pytest.fixture()
def dsns(cluster):
    for s in cluster.shards:
        s.primary.psql(f"TRUNCATE {TABLE}")
    return {s.name: s.primary.dsn for s in cluster.shards}


class Env:
    """A store, a decision log and open connections for one test."""

    def __init__(self, dsns):
        self.dsns = dsns
        self.conns: dict[str, asyncpg.Connection] = {}

    async def __aenter__(self):
        path = os.path.join(tempfile.mkdtemp(prefix="pgshard-2pc-"), "meta.db")
        self.store = await open_store(f"sqlite://{path}")
        self.log = DecisionLog(self.store)
        return self

    async def __aexit__(self, *exc):
        for c in self.conns.values():
            await c.close()
        await self.store.close()

    async def begin(self, writes: dict[str, list[tuple[int, str]]]):
        """A transaction on each shard holding these (id, code) rows."""
        for sh, rows in writes.items():
            conn = self.conns[sh] = await asyncpg.connect(self.dsns[sh])
            await conn.execute("BEGIN")
            for i, code in rows:
                await conn.execute(f"INSERT INTO {TABLE} VALUES ($1, $2)", i, code)
        return asyncpg_run(self.conns)

    def recovery(self, shards=("shard0", "shard1"), timeout=60.0):
        catalog = Catalog.initial([Shard(sh, primary=self.dsns[sh]) for sh in shards], {})
        return TwoPhaseRecovery(self.store, lambda: catalog, leader=lambda: True,
                                timeout=timeout)


def router() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


async def state(dsns, shards=("shard0", "shard1")):
    ids = {sh: await fetch_ids(dsns[sh], TABLE) for sh in shards}
    gids = {sh: await prepared_gids(dsns[sh]) for sh in shards}
    return ids, gids


def test_commit_across_two_shards(dsns):
    async def go():
        async with Env(dsns) as env:
            run = await env.begin({"shard0": [(1, "a")], "shard1": [(2, "b"), (3, "c")]})
            coord = Coordinator(env.log, router())
            txn = coord.new_txn_id()
            await coord.commit(txn, ["shard0", "shard1"], run)
            await coord.drain()
            assert await env.log.get(coord.router, txn) is None
            return await state(dsns)
    ids, gids = asyncio.run(go())
    assert ids == {"shard0": [1], "shard1": [2, 3]}
    assert gids == {"shard0": set(), "shard1": set()}


def test_decision_is_durable_before_any_commit_prepared(dsns):
    seen = []

    async def go():
        async with Env(dsns) as env:
            run = await env.begin({"shard0": [(10, "x")], "shard1": [(11, "y")]})
            coord = Coordinator(env.log, router())
            txn = coord.new_txn_id()

            async def watched(stmts):
                if any(sql.startswith("COMMIT PREPARED") for sql in stmts.values()):
                    d = await env.log.get(coord.router, txn)
                    seen.append(d)
                    # The gids the decision names are still prepared on both primaries.
                    for sh in stmts:
                        assert d.gids[sh] in await prepared_gids(dsns[sh])
                return await run(stmts)
            await coord.commit(txn, ["shard0", "shard1"], watched)
            await coord.drain()
            return coord.gids(txn, ["shard0", "shard1"])
    gids = asyncio.run(go())
    assert len(seen) == 1 and seen[0] is not None and seen[0].outcome == "commit"
    assert seen[0].gids == gids


def test_second_shard_unique_violation_leaves_nothing_on_the_first(dsns, cluster):
    cluster.shards[1].primary.psql(f"INSERT INTO {TABLE} VALUES (99, 'dup')")

    async def go():
        async with Env(dsns) as env:
            run = await env.begin({"shard0": [(20, "fresh")], "shard1": [(21, "dup")]})
            coord = Coordinator(env.log, router())
            txn = coord.new_txn_id()
            with pytest.raises(PgError) as err:
                await coord.commit(txn, ["shard0", "shard1"], run)
            assert await env.log.all() == {}
            return err.value, await state(dsns)
    exc, (ids, gids) = asyncio.run(go())
    assert exc.sqlstate == "23505"
    assert exc.message.startswith("shard1: ")
    assert "nothing was committed on shard0" in exc.detail
    assert ids == {"shard0": [], "shard1": [99]}
    assert gids == {"shard0": set(), "shard1": set()}


def test_aborted_shard_transaction_rolls_back_everywhere(dsns):
    async def go():
        async with Env(dsns) as env:
            run = await env.begin({"shard0": [(30, "p")], "shard1": [(31, "q")]})
            with pytest.raises(asyncpg.DivisionByZeroError):
                await env.conns["shard1"].execute("SELECT 1/0")
            coord = Coordinator(env.log, router())
            with pytest.raises(PgError) as err:
                await coord.commit(coord.new_txn_id(), ["shard0", "shard1"], run)
            return err.value, await state(dsns)
    exc, (ids, gids) = asyncio.run(go())
    assert exc.sqlstate == "40000" and exc.message.startswith("shard1: ")
    assert ids == {"shard0": [], "shard1": []}
    assert gids == {"shard0": set(), "shard1": set()}


def test_shard_without_prepared_transactions_is_a_clear_error(dsns):
    async def go():
        async with Env(dsns) as env:
            run = await env.begin({"shard0": [(40, "m")], "shard2": [(41, "n")]})
            coord = Coordinator(env.log, router())
            with pytest.raises(PgError) as err:
                await coord.commit(coord.new_txn_id(), ["shard0", "shard2"], run)
            return err.value, await state(dsns, ("shard0", "shard2"))
    exc, (ids, gids) = asyncio.run(go())
    assert exc.sqlstate == "55000"
    assert "shard2" in exc.message and "max_prepared_transactions = 0" in exc.message
    assert "max_prepared_transactions" in exc.hint and "shard2" in exc.hint
    assert ids == {"shard0": [], "shard2": []}
    assert gids == {"shard0": set(), "shard2": set()}


@pytest.mark.parametrize("point", ["after_prepare", "after_decision", "during_commit"])
def test_crash_points_then_recovery(dsns, point):
    """A coordinator stopped at each fault point (its router gone): recovery makes the
    transaction whole (decision recorded) or absent (not), and leaves nothing prepared."""
    async def go():
        async with Env(dsns) as env:
            run = await env.begin({"shard0": [(50, "r")], "shard1": [(51, "s")]})
            coord = Coordinator(env.log, router(), faults=Faults(point))
            txn = coord.new_txn_id()
            with pytest.raises(SimulatedCrash):
                await coord.commit(txn, ["shard0", "shard1"], run)
            for c in env.conns.values():     # the crashed router's connections go away
                await c.close()
            env.conns.clear()
            between = await state(dsns)
            report = await env.recovery().run_once()
            after = await state(dsns)
            again = await env.recovery().run_once()
            return between, report, after, again, await env.log.all()
    between, report, after, again, left = asyncio.run(go())
    prepared_between = sum(len(g) for g in between[1].values())
    assert prepared_between == {"after_prepare": 2, "after_decision": 2, "during_commit": 1}[point]
    ids, gids = after
    assert gids == {"shard0": set(), "shard1": set()}
    if point == "after_prepare":
        assert ids == {"shard0": [], "shard1": []}
        assert len(report.rolled_back) == 2 and not report.committed
    else:
        assert ids == {"shard0": [50], "shard1": [51]}
        assert len(report.committed) == prepared_between and not report.rolled_back
    assert not again.committed and not again.rolled_back and not again.in_doubt
    # A commit decision is deleted once resolved; an abort record is kept (keep_aborts).
    assert [d.outcome for d in left.values()] == (["abort"] if point == "after_prepare" else [])


def test_recovery_waits_for_a_live_young_coordinator(dsns):
    async def go():
        async with Env(dsns) as env:
            rid = router()
            lease = await env.store.grant_lease(30)
            await env.store.put(f"routers/{rid}", f'{{"id": "{rid}"}}'.encode(), lease=lease)
            run = await env.begin({"shard0": [(60, "t")], "shard1": [(61, "u")]})
            coord = Coordinator(env.log, rid, faults=Faults("after_prepare"))
            txn = coord.new_txn_id()
            with pytest.raises(SimulatedCrash):
                await coord.commit(txn, ["shard0", "shard1"], run)
            waiting = await env.recovery(timeout=60).run_once()
            expired = await env.recovery(timeout=0).run_once()
            # The coordinator, late, cannot record "commit" over recovery's "abort".
            with pytest.raises(Exception) as late:
                await env.log.record(coord.router, txn, coord.gids(txn, ["shard0", "shard1"]))
            return waiting, expired, late.value, await state(dsns)
    waiting, expired, late, (ids, gids) = asyncio.run(go())
    assert len(waiting.in_doubt) == 2 and not waiting.rolled_back
    assert len(expired.rolled_back) == 2
    assert type(late).__name__ == "CasFailed"
    assert ids == {"shard0": [], "shard1": []} and gids == {"shard0": set(), "shard1": set()}


def test_recovery_lets_a_live_coordinator_finish_its_fresh_commit(dsns):
    async def go():
        async with Env(dsns) as env:
            rid = router()
            lease = await env.store.grant_lease(30)
            await env.store.put(f"routers/{rid}", f'{{"id": "{rid}"}}'.encode(), lease=lease)
            run = await env.begin({"shard0": [(150, "g1")], "shard1": [(151, "g2")]})
            coord = Coordinator(env.log, rid, faults=Faults("after_decision"))
            with pytest.raises(SimulatedCrash):
                await coord.commit(coord.new_txn_id(), ["shard0", "shard1"], run)
            fresh = await env.recovery(timeout=60).run_once()    # within the grace
            late = await env.recovery(timeout=0).run_once()      # no grace left
            return fresh, late, await state(dsns)
    fresh, late, (ids, gids) = asyncio.run(go())
    assert len(fresh.in_doubt) == 2 and not fresh.committed
    assert len(late.committed) == 2
    assert ids == {"shard0": [150], "shard1": [151]} and gids == {"shard0": set(), "shard1": set()}


def test_recovery_names_shards_without_prepared_transactions(dsns):
    async def go():
        async with Env(dsns) as env:
            rec = env.recovery(shards=("shard0", "shard2"))
            await rec.run_once()
            return rec.disabled
    assert asyncio.run(go()) == {"shard2"}


def test_recovery_leaves_foreign_prepared_transactions_and_drops_stale_decisions(dsns):
    async def go():
        async with Env(dsns) as env:
            conn = await asyncpg.connect(dsns["shard0"])
            await conn.execute("BEGIN")
            await conn.execute(f"INSERT INTO {TABLE} VALUES (70, 'v')")
            await conn.execute("PREPARE TRANSACTION 'someone-else'")
            await conn.close()
            # A commit decision whose participants all committed already (record left over).
            stale = await env.log.record("gone-router", 7, {"shard0": "pgshard:gone-router:7:shard0",
                                                            "shard1": "pgshard:gone-router:7:shard1"})
            report = await env.recovery().run_once()
            gids = await prepared_gids(dsns["shard0"])
            await (await asyncpg.connect(dsns["shard0"])).execute(
                "ROLLBACK PREPARED 'someone-else'")
            return report, gids, stale, await env.log.all()
    report, gids, stale, left = asyncio.run(go())
    assert "someone-else" in gids
    assert report.deleted == [decision_key("gone-router", 7)] and left == {}
    assert not report.committed and not report.rolled_back


async def test_runtime_runs_recovery_and_exports_metrics(cluster, dsns):
    """`pgshard serve`'s runtime: the manager resolves what a vanished router left prepared
    (a recorded decision → committed, none → rolled back) and /metrics says so."""
    import aiohttp

    from tests.fixtures.runtime import running_runtime, runtime_config, shards_of
    from tests.integration.test_metrics import samples, scrape

    store_url = f"sqlite://{os.path.join(tempfile.mkdtemp(prefix='pgshard-2pc-'), 'meta.db')}"
    shards = ["shard0", "shard1"]
    gids = {}
    for txn, base in ((1, 80), (2, 90)):   # txn 1 gets a decision, txn 2 does not
        gids[txn] = {sh: f"pgshard:vanished:{txn}:{sh}" for sh in shards}
        for k, sh in enumerate(shards):
            conn = await asyncpg.connect(dsns[sh])
            await conn.execute("BEGIN")
            await conn.execute(f"INSERT INTO {TABLE} VALUES ($1, NULL)", base + k)
            await conn.execute(f"PREPARE TRANSACTION '{gids[txn][sh]}'")
            await conn.close()
    store = await open_store(store_url)
    await DecisionLog(store).record("vanished", 1, gids[1])
    await store.close()

    cfg = runtime_config(cluster, store=store_url, shards=shards_of(cluster, set(shards)),
                         proxy={"twophase_recovery_interval": 0.2})
    async with running_runtime(cfg) as rt, aiohttp.ClientSession() as http:
        assert isinstance(rt.proxy.twophase, Coordinator)
        deadline = asyncio.get_running_loop().time() + 30
        while [g for sh in shards for g in await prepared_gids(dsns[sh])]:
            assert asyncio.get_running_loop().time() < deadline, "recovery did not run"
            await asyncio.sleep(0.2)
        fams = await scrape(http, rt.api_url)
        left = await DecisionLog(rt.store).all()
    assert await fetch_ids(dsns["shard0"], TABLE) == [80]
    assert await fetch_ids(dsns["shard1"], TABLE) == [81]
    total = "pgshard_2pc_total"
    assert samples(fams, "pgshard_2pc", total, outcome="recovered_commit")[0].value == 2
    assert samples(fams, "pgshard_2pc", total, outcome="recovered_rollback")[0].value == 2
    assert samples(fams, "pgshard_2pc_in_doubt")[0].value == 0
    assert [d.outcome for d in left.values()] == ["abort"]


async def test_make_run_commits_over_a_multitxn_on_real_pools(cluster, dsns):
    """The adapter the session uses: statements on a MultiTxn's held servers (real pools,
    real server connections), then a two-phase commit through them."""
    from pgshard.config import config_from_dict
    from pgshard.proxy.listener import Proxy
    from pgshard.proxy.scatter import MultiTxn
    from pgshard.proxy.twophase import make_run
    from tests.fixtures.runtime import shards_of

    shards = ["shard0", "shard1"]
    proxy = Proxy(config_from_dict({"proxy": {"database": "app"},
                                    "shards": shards_of(cluster, set(shards))}))
    async with Env(dsns) as env:
        try:
            coord = Coordinator(env.log, router())
            multi = MultiTxn(TxnOwner(proxy), shards)
            await multi.open("BEGIN")
            run = make_run(multi)
            wrote = await run({"shard0": f"INSERT INTO {TABLE} VALUES (100, 'a')",
                               "shard1": f"INSERT INTO {TABLE} VALUES (101, 'b'), (102, 'c')"})
            assert wrote == {"shard0": "INSERT 0 1", "shard1": "INSERT 0 2"}
            await coord.commit(coord.new_txn_id(), shards, run)
            await coord.drain()
            multi.release()

            multi = MultiTxn(TxnOwner(proxy), shards)
            await multi.open("BEGIN")
            run = make_run(multi)
            wrote = await run({"shard0": f"INSERT INTO {TABLE} VALUES (103, 'd')",
                               "shard1": f"INSERT INTO {TABLE} VALUES (104, 'c')"})
            assert wrote == {"shard0": "INSERT 0 1", "shard1": "INSERT 0 1"}  # deferred
            with pytest.raises(PgError) as err:
                await coord.commit(coord.new_txn_id(), shards, run)
            await coord.drain()
            multi.release()
            assert err.value.sqlstate == "23505" and err.value.message.startswith("shard1: ")

            multi = MultiTxn(TxnOwner(proxy), shards)
            await multi.open("BEGIN")
            failed = await make_run(multi)({"shard1": "SELECT 1/0"})
            assert isinstance(failed["shard1"], PgError)
            assert failed["shard1"].sqlstate == "22012"
            multi.release()
        finally:
            await proxy.stop()
        ids, gids = await state(dsns)
    assert ids == {"shard0": [100], "shard1": [101, 102]}
    assert gids == {"shard0": set(), "shard1": set()}


def test_recovery_abort_recorded_first_wins_over_the_coordinator(dsns):
    """Recovery wrote "abort" for this transaction before the coordinator's decision: the
    coordinator rolls back and says so, nothing is committed anywhere."""
    async def go():
        async with Env(dsns) as env:
            run = await env.begin({"shard0": [(110, "a1")], "shard1": [(111, "b1")]})
            coord = Coordinator(env.log, router())
            txn = coord.new_txn_id()
            await env.log.abort(coord.router, txn, coord.gids(txn, ["shard0", "shard1"]))
            with pytest.raises(PgError) as err:
                await coord.commit(txn, ["shard0", "shard1"], run)
            return err.value, await state(dsns), await env.log.get(coord.router, txn)
    exc, (ids, gids), record = asyncio.run(go())
    assert exc.sqlstate == "40000" and "recovery" in exc.message
    assert ids == {"shard0": [], "shard1": []} and gids == {"shard0": set(), "shard1": set()}
    assert record.outcome == "abort"


def test_coordinator_past_its_decision_deadline_rolls_back(dsns):
    async def go():
        async with Env(dsns) as env:
            run = await env.begin({"shard0": [(120, "a2")], "shard1": [(121, "b2")]})
            coord = Coordinator(env.log, router(), decision_deadline=0)
            with pytest.raises(PgError) as err:
                await coord.commit(coord.new_txn_id(), ["shard0", "shard1"], run)
            return err.value, await state(dsns), await env.log.all()
    exc, (ids, gids), left = asyncio.run(go())
    assert exc.sqlstate == "40000" and "too long" in exc.message
    assert ids == {"shard0": [], "shard1": []} and gids == {"shard0": set(), "shard1": set()}
    assert left == {}


def test_store_refusing_the_decision_rolls_back(dsns):
    """The store refuses the write outright (closed here: nothing can have landed): the
    participants are rolled back and the client hears 58000."""
    async def go():
        async with Env(dsns) as env:
            run = await env.begin({"shard0": [(130, "a3")], "shard1": [(131, "b3")]})
            path = env.store.path
            await env.store.close()
            coord = Coordinator(env.log, router())
            with pytest.raises(PgError) as err:
                await coord.commit(coord.new_txn_id(), ["shard0", "shard1"], run)
            env.store = await open_store(f"sqlite://{path}")
            return err.value, await state(dsns)
    exc, (ids, gids) = asyncio.run(go())
    assert exc.sqlstate == "58000"
    assert ids == {"shard0": [], "shard1": []} and gids == {"shard0": set(), "shard1": set()}


def test_store_down_at_the_decision_is_unknown_until_recovery(dsns):
    """etcd is down when the decision is written (StoreUnavailable: it may or may not have
    landed): the client hears 08007, the participants stay prepared untouched, and once
    the store is back recovery resolves both the same way."""
    from tests.fixtures.etcd import running_etcd

    async def go(etcd):
        async with Env(dsns) as env:
            await env.store.close()
            env.store = await open_store(etcd.url, timeout=1.0)
            env.log = DecisionLog(env.store)
            run = await env.begin({"shard0": [(135, "a4")], "shard1": [(136, "b4")]})
            await asyncio.to_thread(etcd.stop)
            coord = Coordinator(env.log, router())
            with pytest.raises(PgError) as err:
                await coord.commit(coord.new_txn_id(), ["shard0", "shard1"], run)
            between = await state(dsns)
            await asyncio.to_thread(etcd.start)
            report = await env.recovery().run_once()
            return err.value, between, report, await state(dsns)
    with running_etcd() as etcd:
        exc, between, report, (ids, gids) = asyncio.run(go(etcd))
    assert exc.sqlstate == "08007"
    assert all(len(g) == 1 for g in between[1].values())
    assert len(report.rolled_back) == 2
    assert ids == {"shard0": [], "shard1": []} and gids == {"shard0": set(), "shard1": set()}


def test_recovery_resolves_prepared_transactions_in_another_database(cluster, dsns):
    primary = cluster.shards[0].primary
    primary.psql("DROP DATABASE IF EXISTS other2pc")
    primary.psql("CREATE DATABASE other2pc")
    other = dsns["shard0"].rsplit("/", 1)[0] + "/other2pc"

    async def go():
        async with Env(dsns) as env:
            conn = await asyncpg.connect(other)
            await conn.execute("CREATE TABLE o (id int)")
            await conn.execute("BEGIN")
            await conn.execute("INSERT INTO o VALUES (1)")
            await conn.execute("PREPARE TRANSACTION 'pgshard:gone:5:shard0'")
            await conn.close()
            report = await env.recovery().run_once()
            conn = await asyncpg.connect(other)
            try:
                count = await conn.fetchval("SELECT count(*) FROM o")
            finally:
                await conn.close()
            return report, count, await prepared_gids(dsns["shard0"])
    report, count, gids = asyncio.run(go())
    primary.psql("DROP DATABASE other2pc")
    assert report.rolled_back == ["pgshard:gone:5:shard0"] and count == 0 and not gids


@pytest.mark.parametrize("point", ["after_prepare", "after_decision", "during_commit"])
def test_process_exit_at_fault_point_then_recovery(dsns, point):
    """PGSHARD_2PC_FAULT makes a coordinating process die at the step (os._exit, as a
    SIGKILL would: no cleanup, its connections dropped by the OS); recovery then leaves the
    transaction whole or absent and nothing prepared."""
    import json
    import subprocess
    import sys

    store_url = f"sqlite://{os.path.join(tempfile.mkdtemp(prefix='pgshard-2pc-'), 'meta.db')}"
    args = {"store_url": store_url, "router": router(), "dsns": dsns, "table": TABLE,
            "rows": {"shard0": 140, "shard1": 141}}
    proc = subprocess.run(
        [sys.executable, "-c", "from tests.fixtures.twophase import main; main()",
         json.dumps(args)], env={**os.environ, "PGSHARD_2PC_FAULT": point},
        capture_output=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 137, proc.stderr.decode()[-2000:]

    async def go():
        async with Env(dsns) as env:
            await env.store.close()
            env.store = await open_store(store_url)
            env.log = DecisionLog(env.store)
            report = await env.recovery().run_once()
            return report, await state(dsns)
    report, (ids, gids) = asyncio.run(go())
    assert gids == {"shard0": set(), "shard1": set()}
    if point == "after_prepare":
        assert ids == {"shard0": [], "shard1": []} and len(report.rolled_back) == 2
    else:
        assert ids == {"shard0": [140], "shard1": [141]} and report.committed


def test_commits_racing_an_eager_recovery_stay_atomic(dsns):
    """Recovery running flat out with twophase_timeout 0 against a coordinator it sees as
    gone: it aborts whatever it finds prepared without a decision, commits whatever has one,
    while commits are in flight. Every transaction ends whole on both shards or absent from
    both, and the client's answer says which."""
    def slow_after_prepare(run):
        # A coordinator that is slow between PREPARE and its decision: recovery's window.
        async def slow(stmts):
            out = await run(stmts)
            if any(sql.startswith("PREPARE") for sql in stmts.values()):
                await asyncio.sleep(random.uniform(0, 0.05))
            return out
        return slow

    async def worker(env, coord, ids, outcomes):
        conns = {sh: await asyncpg.connect(dsns[sh]) for sh in ("shard0", "shard1")}
        try:
            for i in ids:
                for c in conns.values():
                    await c.execute("BEGIN")
                    await c.execute(f"INSERT INTO {TABLE} VALUES ($1, NULL)", i)
                try:
                    await coord.commit(coord.new_txn_id(), ["shard0", "shard1"],
                                       slow_after_prepare(asyncpg_run(conns)))
                    outcomes[i] = True
                except PgError as exc:
                    assert exc.sqlstate == "40000", exc.message
                    outcomes[i] = False
        finally:
            for c in conns.values():
                await c.close()

    async def go():
        async with Env(dsns) as env:
            coord = Coordinator(env.log, router())
            rec = env.recovery(timeout=0)
            outcomes: dict[int, bool] = {}
            stop = asyncio.Event()

            async def recover():
                while not stop.is_set():
                    await rec.run_once()
                    await asyncio.sleep(0)
            racer = asyncio.create_task(recover())
            await asyncio.gather(*(worker(env, coord, range(1000 + 100 * w, 1000 + 100 * w + 25),
                                          outcomes) for w in range(4)))
            stop.set()
            await racer
            await coord.drain()
            await rec.run_once()
            return outcomes, await state(dsns)
    outcomes, (ids, gids) = asyncio.run(go())
    assert gids == {"shard0": set(), "shard1": set()}
    assert ids["shard0"] == ids["shard1"]
    assert sorted(i for i, ok in outcomes.items() if ok) == ids["shard0"]
    assert len(outcomes) == 100


def test_a_cancelled_caller_does_not_stop_the_commit_half_way(dsns):
    """The session awaiting COMMIT is cancelled (its client left) right after PREPARE: the
    protocol still runs to its end, nothing stays prepared, the transaction is whole."""
    async def go():
        async with Env(dsns) as env:
            run = await env.begin({"shard0": [(160, "c1")], "shard1": [(161, "c2")]})
            prepared = asyncio.Event()

            async def signalling(stmts):
                out = await run(stmts)
                if any(sql.startswith("PREPARE") for sql in stmts.values()):
                    prepared.set()
                    await asyncio.sleep(0.05)
                return out
            coord = Coordinator(env.log, router())
            caller = asyncio.create_task(coord.commit(coord.new_txn_id(),
                                                      ["shard0", "shard1"], signalling))
            await prepared.wait()
            caller.cancel()
            with pytest.raises(asyncio.CancelledError):
                await caller
            await coord.drain()
            return await state(dsns), await env.log.all()
    (ids, gids), left = asyncio.run(go())
    assert ids == {"shard0": [160], "shard1": [161]}
    assert gids == {"shard0": set(), "shard1": set()} and left == {}
