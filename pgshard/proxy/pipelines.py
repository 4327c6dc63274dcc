"""Pipelines whose statements run on several shards (executemany, psycopg pipeline mode, any
unit of Binds for different shards), and every extended unit of a multi-shard transaction.

Strategy: the unit is one transaction on every shard it reaches, as on one database: the
client's explicit transaction, or, outside one, the implicit transaction of the unit,
committed with two-phase commit at its Sync. Each request goes to the shard its Bind routes
to (a Parse to the shard of the Bind that uses it next); every shard's share runs at once,
ending with a Sync of its own (inside the transaction it commits nothing); each server's
replies are cut per request (protocol.opreplies) and sent to the client in the order it
asked, up to the first error, after which PostgreSQL would have skipped to the Sync — so
the transaction fails and, if it is the unit's own, is rolled back on every shard.
"""

from __future__ import annotations

from pgshard.protocol import messages as m
from pgshard.protocol import opreplies as orp
from pgshard.protocol.errors import FeatureNotSupported, PgError
from pgshard.proxy import scatter
from pgshard.proxy.backend import (
    X_BIND,
    X_CLOSE,
    X_DESC_PORTAL,
    X_DESC_STMT,
    X_EXEC,
    X_PARSE,
    X_SYNC,
)
from pgshard.proxy.units import (
    OP_BIND,
    OP_DESC_STMT,
    OP_FAKE,
    OP_FLUSH,
    OP_PARSE,
    OP_RAW,
    OP_SYNC,
    SYNC_OP,
)
from pgshard.sql import classify as r
from pgshard.sql.insert_split import group_rows, split_bound_insert

_RAW_KINDS = {X_EXEC: orp.EXEC, X_DESC_PORTAL: orp.DESC_PORTAL, X_CLOSE: orp.CLOSE}


LOCAL = ""   # the shard of an op answered here (a BEGIN/COMMIT/ROLLBACK, a fake reply)
_NONE = object()


def assign(ops, fallback: str) -> list[str]:
    """The shard of each op (LOCAL: answered here). A Bind names its shard (op.shard; None
    for BEGIN/COMMIT/ROLLBACK, answered here); the Executes, Describes and Closes after it
    go with it; a Parse or a statement Describe goes to the shard of the next Bind (else
    the last one, else fallback)."""
    out: list = [_NONE] * len(ops)
    nxt = _NONE
    for i in range(len(ops) - 1, -1, -1):   # the next Bind's shard, seen from each op
        if ops[i].kind == OP_BIND:
            nxt = ops[i].shard
        out[i] = nxt
    cur = _NONE
    for i, op in enumerate(ops):
        k = op.kind
        if k == OP_BIND:
            cur = op.shard
            out[i] = cur
        elif k == OP_RAW:
            out[i] = cur if cur is not _NONE else out[i]
        elif k not in (OP_PARSE, OP_DESC_STMT):
            out[i] = None
        if out[i] is _NONE:
            out[i] = cur if cur is not _NONE else fallback
    return [LOCAL if sh is None else sh for sh in out]


def txn_ends(ops, where) -> tuple[bool, str | None]:
    """Whether the unit opens with BEGIN, and the COMMIT/ROLLBACK kind that closes it; a
    BEGIN, COMMIT or ROLLBACK anywhere else among statements for the shards: ValueError."""
    txn = [i for i, op in enumerate(ops) if op.kind == OP_BIND and where[i] == LOCAL]
    work = [i for i, sh in enumerate(where) if sh != LOCAL]
    begins, end = False, None
    for i in txn:
        kind = ops[i].st.plan.kind
        if kind == r.BEGIN and (not work or i < work[0]) and end is None:
            begins = True
        elif kind in (r.COMMIT, r.ROLLBACK) and (not work or i > work[-1]) and end is None:
            end = kind
        else:
            raise ValueError(kind)
    return begins, end


def _kind(op) -> int:
    k = op.kind
    if k == OP_PARSE:
        return orp.PARSE
    if k == OP_BIND:
        return orp.BIND
    if k == OP_DESC_STMT:
        return orp.DESC_STMT
    return _RAW_KINDS[op.expect]


_TXN_TAGS = {r.BEGIN: "BEGIN", r.COMMIT: "COMMIT", r.ROLLBACK: "ROLLBACK"}


def local_replies(ops, where) -> dict[int, bytes]:
    """What the ops answered here reply: a BEGIN/COMMIT/ROLLBACK's Parse, Bind, Describe and
    Execute (the outcome of a COMMIT replaces its tag later), or a fake reply."""
    out: dict[int, bytes] = {}
    kind = None
    for i, (op, sh) in enumerate(zip(ops, where, strict=True)):
        if sh != LOCAL:
            continue
        k = op.kind
        if k == OP_FAKE:
            out[i] = op.reply
        elif k == OP_PARSE:
            out[i] = m.PARSE_COMPLETE
        elif k == OP_BIND:
            kind = op.st.plan.kind
            out[i] = m.BIND_COMPLETE
        elif k == OP_DESC_STMT:
            out[i] = m.parameter_description(()) + m.NO_DATA
        elif k == OP_RAW and op.expect == X_EXEC:
            out[i] = m.command_complete(_TXN_TAGS.get(kind, "SELECT 0"))
        elif k == OP_RAW and op.expect == X_DESC_PORTAL:
            out[i] = m.NO_DATA
        else:
            out[i] = m.CLOSE_COMPLETE
    return out


class PipelineRunner:
    """Units of one ClientSession whose statements run on several shards (held as
    `session.pipes`): a pipeline's Binds routed one by one, an INSERT split per shard, and
    the multi-shard transaction a unit runs in. The session is reached through `session`."""

    __slots__ = ("session", "proxy")

    def __init__(self, session):
        self.session = session
        self.proxy = session.proxy

    async def split_unit(self, ops, sync: bool) -> None:
        session = self.session
        ops = [op for op in ops if op.kind not in (OP_SYNC, OP_FLUSH)]
        multi = session.txn.multi
        where = assign(ops, multi.shards[0] if multi is not None and multi.shards
                       else session.targeting.any_shard())
        try:
            begins, end = txn_ends(ops, where)
        except ValueError:
            raise FeatureNotSupported(
                "BEGIN, COMMIT or ROLLBACK between statements for several shards in one "
                "pipeline", hint="send a Sync after COMMIT/ROLLBACK, or BEGIN first") from None
        if multi is None:
            multi = await self.multi_for_unit()
        if begins:
            multi.implicit = False   # the client's own transaction starts here
        local = local_replies(ops, where)
        per: dict[str, list] = {}
        for op, sh in zip(ops, where, strict=True):
            if sh != LOCAL:
                per.setdefault(sh, []).append(op)
        shards = list(per)
        out: list[bytes] = []
        ok = True
        if shards:
            def emit(s, i):
                session.ext.emit_ops(s, per[shards[i]] + [SYNC_OP])
            try:
                replies = await multi.run(shards, emit)
            except PgError:
                multi.failed = True
                if multi.implicit:
                    await session.fan.multi_end(r.ROLLBACK)
                raise
            groups = {}
            for sh, frames in zip(shards, replies, strict=True):
                kinds = [_kind(op) for op in per[sh]] + [orp.SYNC]
                groups[sh] = iter(orp.cut(kinds, frames)[:-1])   # their own Syncs: not sent on
            for i, sh in enumerate(where):
                if sh == LOCAL:
                    out.append(local[i])
                    continue
                g = next(groups[sh])
                out.extend(raw for _, raw in g)
                if orp.failed(g):
                    ok = False
                    break
        else:
            out.extend(local[i] for i in range(len(ops)))
        if not ok:
            multi.failed = True
            if multi.implicit:
                await session.fan.multi_end(r.ROLLBACK)
        elif end is not None:
            # The COMMIT/ROLLBACK closing the unit: its Execute's reply is the outcome.
            done = await session.fan.multi_end(end)
            if done[:1] == b"E" and out[-1:] and out[-1].startswith(b"C"):
                out[-1] = done
            elif done[:1] == b"E":
                out.append(done)
        elif sync and multi.implicit:
            done = await session.fan.multi_end(r.COMMIT)
            if done[:1] == b"E":
                out.append(done)   # the commit failed (at PREPARE): nothing was committed
        if sync:
            out.append(m.ready_for_query(session._status()))
        elif not ok:
            session.ext.skip_until_sync = True
        session.write(b"".join(out))

    async def insert_ext(self, fan, ops, sync: bool) -> None:
        """A multi-row INSERT with bound parameters whose rows belong to several shards:
        each shard gets its own rows, as its own statement with its parameters renumbered
        (sql.insert_split), inside the unit's transaction; one reply, counts summed."""
        session = self.session
        await session.fan.check_fanout(fan)   # the transaction it runs in (see FanoutRunner.check_fanout)
        bop = next(op for op in ops if op.kind == OP_BIND)
        st, bind = bop.st, bop.bind
        oids = tuple(st.param_oid(i) for i in range(len(bind.params)))
        ring = self.proxy.catalog.ring
        groups = group_rows(fan.analysis.insert_rows, bind.params, bind.param_formats, oids,
                            ring.shard_for_key)
        parts = split_bound_insert(st.sql, groups, bind.params, bind.param_formats, oids)
        per: dict[str, list] = {}
        for sh, part in parts.items():
            msgs = []
            parsed = False
            for op in ops:
                k = op.kind
                if k == OP_PARSE:
                    msgs.append((m.parse("", part.sql, part.oids), X_PARSE, False))
                    parsed = True
                elif k == OP_BIND:
                    if not parsed:
                        msgs.append((m.parse("", part.sql, part.oids), X_PARSE, True))
                    msgs.append((m.bind(bind.portal, "", part.params, part.formats,
                                        bind.result_formats), X_BIND, False))
                elif k == OP_DESC_STMT:
                    msgs.append((m.describe(b"S", ""), X_DESC_STMT, False))
                elif k == OP_RAW:
                    msgs.append((op.raw, op.expect, False))
                elif k == OP_SYNC:
                    msgs.append((m.SYNC, X_SYNC, False))
            if not sync:
                msgs.append((m.SYNC, X_SYNC, False))
            per[sh] = msgs
        if not sync:
            session.ext.owe_z = True
        shards = sorted(per)
        out = await session.fan.run_fanout(type(fan)("insert", shards, fan.analysis, groups), per)
        await session.fan.end_ext_unit(out, sync)

    async def multi_for_unit(self):
        session = self.session
        # (see split_unit)
        """The transaction a pipeline across shards runs in: the client's own (its server
        joins, or its held-back BEGIN opens on each shard), else the unit's."""
        if session.server is not None and await session.simple.join_multi():
            return session.txn.multi
        session.fan.release_if_idle()
        if session.server is not None:   # session pooling: the server stays the client's
            session.att.detach()
        if session.txn.pending is not None:
            multi = scatter.MultiTxn(session, [], session.txn.pending)
            session.txn.opened()
        else:
            multi = scatter.MultiTxn(session, [], "BEGIN")
            multi.implicit = True
        session.txn.multi = multi
        return multi
