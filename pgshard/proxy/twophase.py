"""The two-phase commit coordinator: PREPARE TRANSACTION on every participant, the decision
written to the metadata store, then COMMIT PREPARED everywhere; plus the adapter that runs
its statements on a session's held servers (scatter.MultiTxn).

Interface for the session:

    coord = Coordinator(DecisionLog(store), router_id=node_id, metrics=proxy.metrics)
    txn_id = coord.new_txn_id()
    await coord.commit(txn_id, shards, make_run(multi))   # raises PgError on failure
    ...
    await coord.drain()     # at shutdown, before the store closes: pending record deletes

`run(shard_to_sql)` sends one simple-protocol statement to each named shard's server of the
transaction, in parallel, and returns per shard the CommandComplete tag (str) or the error
(PgError; a lost connection is one too, SQLSTATE 08006). It never raises for one shard's
failure.

Strategy: the decision record is the commit point. Before it is durable in the store any
failure rolls back every participant (ROLLBACK PREPARED where PREPARE succeeded, ROLLBACK
where it did not) and the client gets the participant's error; once it is durable the
transaction is committed whatever happens next: a COMMIT PREPARED that fails is left to
recovery (pgshard.control.twophase_recovery), which finds the gid in `pg_prepared_xacts` and
the decision in the store. A store write whose outcome is unknown (StoreUnavailable: down
or timed out, the write may have landed) leaves the participants prepared for recovery,
which resolves them consistently either way, and the client gets 08007 (transaction
resolution unknown); a write the store refused (another StoreError) rolls back (58000).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable

from pgshard.protocol import messages as m
from pgshard.protocol.errors import (
    ConnectionFailure,
    ObjectNotInPrerequisiteState,
    PgError,
    ProtocolViolation,
    SystemError_,
    TransactionResolutionUnknown,
    TransactionRollback,
)
from pgshard.proxy.decisions import DecisionLog, make_gid, quote_gid, router_part
from pgshard.store import CasFailed, StoreError, StoreUnavailable

log = logging.getLogger("pgshard.twophase")

Result = str | PgError
Run = Callable[[dict[str, str]], Awaitable[dict[str, Result]]]

PREPARED_TAG = "PREPARE TRANSACTION"
FAULT_ENV = "PGSHARD_2PC_FAULT"          # test only: "<point>[@N]" (crash at the N-th hit)
FAULT_POINTS = ("after_prepare", "after_decision", "during_commit")
# What PostgreSQL says when max_prepared_transactions = 0.
DISABLED_MESSAGE = "prepared transactions are disabled"


class SimulatedCrash(BaseException):
    """Raised by an in-process fault point: stops the coordinator mid-commit (tests)."""


class Faults:
    """Test-only fault points. `point` crashes the commit there on the `at`-th time it is
    reached: by os._exit (exit=True; what a SIGKILL leaves behind) or by raising
    SimulatedCrash (in-process tests)."""

    def __init__(self, point: str | None = None, *, at: int = 1, exit: bool = False):
        if point is not None and point not in FAULT_POINTS:
            raise ValueError(f"unknown 2PC fault point {point!r}; one of {FAULT_POINTS}")
        self.point = point
        self.at = at
        self.exit = exit
        self.hits = 0

    @classmethod
    def from_env(cls) -> Faults | None:
        """`PGSHARD_2PC_FAULT=after_decision@5`: os._exit at the 5th commit's decision."""
        spec = os.environ.get(FAULT_ENV)
        if not spec:
            return None
        point, _, at = spec.partition("@")
        return cls(point, at=int(at or 1), exit=True)

    def reached(self, point: str) -> None:
        if point != self.point:
            return
        self.hits += 1
        if self.hits < self.at:
            return
        if self.exit:
            log.error("2PC fault point %s reached: exiting (test fault injection)", point)
            os._exit(137)
        raise SimulatedCrash(point)


class Coordinator:
    """Commits one multi-shard transaction with two-phase commit (see the module text)."""

    def __init__(self, log_: DecisionLog, router_id: str, *, faults: Faults | None = None,
                 metrics=None, decision_deadline: float = 30.0):
        self.decisions = log_
        # At most this long from commit() to the decision record: keep it well under the
        # twophase_timeout after which recovery rolls back a prepared transaction.
        self.decision_deadline = decision_deadline
        self.router = router_part(router_id)
        self.faults = faults
        self.metrics = metrics
        # Unique across restarts of a router with a fixed id: microseconds at start, counting.
        self._ids = itertools.count(time.time_ns() // 1000)
        self._tasks: set[asyncio.Task] = set()     # commits and record deletes under way

    def new_txn_id(self) -> int:
        return next(self._ids)

    def gids(self, txn_id: int, shards: list[str]) -> dict[str, str]:
        return {sh: make_gid(self.router, txn_id, sh) for sh in shards}

    async def commit(self, txn_id: int, shards: list[str], run: Run) -> None:
        """Commit the transaction held on `shards`; raises PgError if it did not commit
        (rolled back everywhere, or 08007 when that is unknown until recovery).

        A caller cancelled meanwhile (its client left) does not stop the protocol half way,
        holding prepared transactions and their locks until recovery's timeout: it runs to
        its end in a task of its own (keep the servers `run` uses until then)."""
        task = asyncio.get_running_loop().create_task(self._commit(txn_id, shards, run))
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return await asyncio.shield(task)

    def _finished(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()    # retrieved: an abandoned commit's error is not "lost"

    async def _commit(self, txn_id: int, shards: list[str], run: Run) -> None:
        started = time.monotonic()
        gids = self.gids(txn_id, shards)
        prepared = await run_quietly(run, {sh: f"PREPARE TRANSACTION {quote_gid(g)}"
                                           for sh, g in gids.items()})
        failed = {sh: r for sh, r in prepared.items() if not _is_tag(r, PREPARED_TAG)}
        if failed:
            await self._undo(gids, prepared, run)
            self._count("rolled_back")
            raise _prepare_error(shards, failed)
        self._fault("after_prepare")
        if time.monotonic() - started > self.decision_deadline:
            # Recovery may already treat these as abandoned (twophase_timeout): do not race it.
            await self._undo(gids, prepared, run)
            self._count("rolled_back")
            raise TransactionRollback(
                "two-phase commit took too long to prepare; the transaction was rolled back",
                detail=f"more than {self.decision_deadline:g} s before the decision")
        try:
            await self.decisions.record(self.router, txn_id, gids)
        except CasFailed:
            # Recovery recorded "abort" first (it found us too slow or gone): follow it.
            await self._undo(gids, prepared, run)
            self._count("rolled_back")
            raise TransactionRollback("the transaction was rolled back by two-phase commit "
                                      "recovery before its commit decision was recorded") from None
        except StoreError as exc:
            await self._decision_failed(txn_id, gids, exc, run)
        self._fault("after_decision")
        await self._commit_prepared(txn_id, gids, run)

    async def rollback(self, txn_id: int, shards: list[str], run: Run) -> None:
        """ROLLBACK on every participant (no decision is ever recorded)."""
        await run({sh: "ROLLBACK" for sh in shards})

    async def _undo(self, gids: dict[str, str], prepared: dict[str, Result], run: Run) -> None:
        undo = {sh: (f"ROLLBACK PREPARED {quote_gid(gids[sh])}" if _is_tag(r, PREPARED_TAG)
                     else "ROLLBACK") for sh, r in prepared.items()}
        done = await run_quietly(run, undo)
        for sh, r in done.items():
            if isinstance(r, PgError) and undo[sh] != "ROLLBACK":
                # Left prepared without a decision: recovery rolls it back.
                log.warning("ROLLBACK PREPARED %s on %s failed: %s", gids[sh], sh, r.message)

    async def _decision_failed(self, txn_id: int, gids: dict[str, str], exc: StoreError,
                               run: Run) -> None:
        if isinstance(exc, StoreUnavailable):
            # The write may have landed (a timeout) and recovery may act on it: touch nothing.
            self._count("unknown")
            log.error("2PC %s:%d: the commit decision may or may not be recorded (%s); "
                      "recovery resolves it", self.router, txn_id, exc)
            raise TransactionResolutionUnknown(
                "the metadata store did not confirm the commit decision; the transaction is "
                "committed or rolled back by recovery", detail=str(exc)) from None
        await self._undo(gids, dict.fromkeys(gids, PREPARED_TAG), run)
        self._count("rolled_back")
        raise SystemError_("could not record the commit decision in the metadata store; the "
                           "transaction was rolled back", detail=str(exc)) from None

    async def _commit_prepared(self, txn_id: int, gids: dict[str, str], run: Run) -> None:
        stmts = {sh: f"COMMIT PREPARED {quote_gid(g)}" for sh, g in gids.items()}
        results: dict[str, Result] = {}
        if self.faults is not None and self.faults.point == "during_commit":
            first = next(iter(stmts))
            results.update(await run_quietly(run, {first: stmts.pop(first)}))
            self._fault("during_commit")
        if stmts:
            results.update(await run_quietly(run, stmts))
        bad = {sh: r for sh, r in results.items() if not _is_tag(r, "COMMIT PREPARED")}
        if bad:
            self._count("commit_incomplete")
            for sh, r in bad.items():
                log.error("COMMIT PREPARED %s on %s failed (%s); recovery will finish it",
                          gids[sh], sh, r.message if isinstance(r, PgError) else r)
            return
        self._count("committed")
        # The client need not wait for the record's deletion: it is committed already, and
        # a record left behind (a crash meanwhile) is deleted by recovery.
        task = asyncio.get_running_loop().create_task(self._forget(txn_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forget(self, txn_id: int) -> None:
        try:
            await self.decisions.forget(self.router, txn_id)
        except StoreError as exc:
            log.warning("2PC %s:%d committed; its decision record stays until recovery "
                        "deletes it (%s)", self.router, txn_id, exc)

    async def drain(self) -> None:
        """Wait for commits under way and the deletion of finished ones' decision records
        (at shutdown, before the store closes)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _fault(self, point: str) -> None:
        if self.faults is not None:
            self.faults.reached(point)

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.twophase(outcome)


async def run_quietly(run: Run, stmts: dict[str, str]) -> dict[str, Result]:
    """run(stmts), with a run that raised turned into that error for every shard."""
    if not stmts:
        return {}
    try:
        return await run(stmts)
    except PgError as exc:
        return dict.fromkeys(stmts, exc)
    except OSError as exc:   # TimeoutError included
        return dict.fromkeys(stmts, ConnectionFailure(f"lost the server connection: {exc}"))


def _is_tag(result: Result, tag: str) -> bool:
    return isinstance(result, str) and result == tag


def _prepare_error(shards: list[str], failed: dict[str, Result]) -> PgError:
    """The client's error for a failed PREPARE: the first failed shard's, named after it."""
    sh = next(s for s in shards if s in failed)
    r = failed[sh]
    others = [s for s in shards if s != sh]
    where = f"rolled back on every shard ({', '.join(shards)})"
    if isinstance(r, str):
        # PREPARE TRANSACTION in an aborted transaction answers ROLLBACK, not an error.
        return TransactionRollback(f"{sh}: the transaction was aborted on this shard and has "
                                   "been rolled back", detail=where)
    if r.sqlstate == "55000" and DISABLED_MESSAGE in r.message:
        return ObjectNotInPrerequisiteState(
            f"{sh}: cannot commit a transaction that wrote on several shards: prepared "
            f"transactions are disabled on this shard (max_prepared_transactions = 0)",
            detail=where,
            hint=f"set max_prepared_transactions (at least max_connections) on {sh}'s primary "
                 f"and replicas and restart them, or set two_phase_commit = false to refuse "
                 f"cross-shard transactions")
    detail = "; ".join(x for x in (r.detail, where) if x)
    if others:
        detail += f"; nothing was committed on {', '.join(others)}"
    return PgError(f"{sh}: {r.message}", sqlstate=r.sqlstate, hint=r.hint, detail=detail)


def make_run(multi) -> Run:
    """`run` over a scatter.MultiTxn's held servers: one Query per shard, in parallel,
    each answer read from that server's reply (CommandComplete tag or ErrorResponse)."""
    from pgshard.proxy.backend import X_QUERY
    from pgshard.proxy.scatter import Collector

    async def run(stmts: dict[str, str]) -> dict[str, Result]:
        collectors = {}
        out: dict[str, Result] = {}
        for sh, sql in stmts.items():
            pool, s = multi.servers[sh]
            if not s.usable:    # lost already: nothing would ever answer
                out[sh] = ConnectionFailure(
                    f"lost the server connection: {s.closed_reason or 'closed'}")
                continue
            c = Collector(pool)
            collectors[sh] = c
            s.link(c)
            s.send(m.query(sql))
            s.push(X_QUERY)
            s.flush()
        done = await asyncio.gather(*(c.done for c in collectors.values()),
                                    return_exceptions=True)
        for (sh, c), outcome in zip(collectors.items(), done, strict=True):
            if isinstance(outcome, PgError):
                out[sh] = outcome
            elif isinstance(outcome, BaseException):
                out[sh] = ConnectionFailure(f"lost the server connection: {outcome}")
            else:
                out[sh] = reply_result(c.frames())
        return out

    return run


def reply_result(frames: list[tuple[int, bytes]]) -> Result:
    """One statement's reply frames → its error, else its command tag."""
    tag = None
    for t, raw in frames:
        if t == 0x45:
            return m.error_to_exception(raw[5:])
        if t == 0x43:
            tag = m.decode_query(raw[5:])
    if tag is None:
        return ProtocolViolation("the server answered without a command tag", severity="ERROR")
    return tag
