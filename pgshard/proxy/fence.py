"""Resharding fences on the router: a statement whose shard key falls in a range the catalog
fences waits (up to fence_timeout) until the fence lifts, then is routed by the new catalog;
held longer, it fails with SQLSTATE 40001. What the acknowledgement waits for (transactions
open on the fenced ranges' shards) is also decided here.

The routing path calls `hold_if_fenced` (pgshard.proxy.targeting) while the catalog has
fences. A router whose store lease lapsed (pgshard.control.lease_gate) serves a catalog with
the whole ring fenced, so every statement comes here and is refused (57P03). It returns a
`FenceHeld` decision (a units.Wait, like NeedColumns): the session awaits the hold and
dispatches the message again, so a held statement neither fails nor blocks other clients.
"""

from __future__ import annotations

import asyncio
import time

from pgshard.protocol.errors import PgError
from pgshard.proxy.units import NeedColumns, Wait
from pgshard.ring import hashing
from pgshard.ring.catalog import Catalog
from pgshard.sql import classify as r

DEFAULT_FENCE_TIMEOUT = 5.0
POLL = 0.005


class SerializationFailure(PgError, code="40001"):
    """A statement held by a resharding fence for longer than fence_timeout (retryable)."""


class Hold:
    """The wait of one held statement: until none of its tokens is fenced."""

    def __init__(self, proxy, tokens: list[int], job: str, timeout: float):
        self.proxy, self.tokens, self.job = proxy, tokens, job
        self.deadline = time.monotonic() + timeout
        self.timeout = timeout

    async def wait(self) -> None:
        """Until no token is fenced; SerializationFailure past the deadline."""
        started = time.monotonic()
        metrics = getattr(self.proxy, "fence_metrics", None)
        while fenced(self.proxy.catalog, self.tokens) is not None:
            gate = getattr(self.proxy, "lease_gate", None)
            if gate is not None and gate.closed and gate.grace_left() <= 0:
                if metrics is not None:
                    metrics.fence_hold(time.monotonic() - started)
                raise gate.error()
            if time.monotonic() >= self.deadline:
                if metrics is not None:
                    metrics.fence_hold(time.monotonic() - started)
                raise SerializationFailure(
                    f"the shard key range of this statement is being moved by resharding job "
                    f"{self.job}; it waited {self.timeout:g}s (fence_timeout) for the move to "
                    "finish", hint="retry the statement: it will be routed to the range's new "
                                   "owner")
            await asyncio.sleep(POLL)
        if metrics is not None:
            metrics.fence_hold(time.monotonic() - started)


class FenceHeld(Wait):
    """A routing decision: the statement waits for a fence (or the lease gate) to lift;
    hold is a Hold or a lease_gate.GateHold."""

    __slots__ = ("hold",)

    def __init__(self, hold):
        self.hold = hold

    def run(self, session):
        return self.hold.wait()


def fenced(catalog: Catalog, tokens) -> str | None:
    """The job fencing any of the tokens, or None."""
    if not catalog.fences:
        return None
    for t in tokens:
        f = catalog.is_fenced(t)
        if f is not None:
            return f.job
    return None


def statement_tokens(session, plan: r.Plan, bind, st, sql: str | None):
    """The tokens of every shard key a statement names: its hint, bound key parameter,
    SET pgshard.shard_key, and the keys read from the SQL (a NeedColumns decision when
    reading them needs a table's column order first)."""
    keys = []
    if plan.shard_key is not None:
        keys.append(plan.shard_key)
    elif plan.key_param is not None and bind is not None and plan.key_param <= len(bind.params):
        i = plan.key_param - 1
        v = bind.params[i]
        if v is not None:
            keys.append(hashing.key_from_param(v, bind.param_format(i), st.param_oid(i)))
    else:
        key = session.local_key if session.local_key is not None else session.session_key
        if key is not None:
            keys.append(key)
    tokens = [hashing.token(k) for k in keys]
    if plan.kind != r.STATEMENT:
        return tokens
    text = sql if sql is not None else st.sql
    a = session.targeting.analyze(text)
    if type(a) is NeedColumns:
        return a
    if a.keys:
        params = bind.params if bind is not None else ()
        formats = bind.param_formats if bind is not None else ()
        oids = tuple(st.param_oid(i) for i in range(len(params))) if st is not None else ()
        for k in a.keys:
            if k.param is not None and k.param <= len(params) and params[k.param - 1] is None:
                continue
            tokens.append(hashing.token(k.resolve(params, formats, oids)))
    return tokens


def hold_if_fenced(session, plan: r.Plan, bind, st, sql: str | None) -> Wait | None:
    """A FenceHeld decision if the statement names a key in a fenced range (NeedColumns if
    finding its keys needs a table's column order first), else None. A statement of a
    transaction already open on a server is let through: the fence's acknowledgement waits
    for that transaction, and the final catch-up reads what it wrote."""
    cat = session.proxy.catalog
    if not cat.fences:
        return None
    gate = getattr(session.proxy, "lease_gate", None)
    if gate is not None and gate.closed:
        # The lease may have lapsed (pgshard.control.lease_gate): the catalog may be stale.
        # The statement waits a moment for the lease to come back, then is refused.
        if gate.grace_left() > 0:
            from pgshard.control.lease_gate import GateHold
            return FenceHeld(GateHold(gate))
        raise gate.error()
    s = session.server
    if s is not None and s.txn_status != b"I":
        return None
    if getattr(session.txn, "multi", None) is not None:
        return None   # a transaction open on several shards: the same as one open on a server
    tokens = statement_tokens(session, plan, bind, st, sql)
    if type(tokens) is NeedColumns:
        return tokens
    job = fenced(cat, tokens)
    if job is not None:
        timeout = getattr(session.proxy.config.proxy, "fence_timeout", DEFAULT_FENCE_TIMEOUT)
        return FenceHeld(Hold(session.proxy, tokens, job, timeout))
    return None


def in_transaction_on(session, shards) -> object | None:
    """The server a session holds in a transaction (or with a statement in flight) on one
    of the shards, or its multi-shard transaction holding one of them; else None."""
    multi = getattr(session.txn, "multi", None)
    if multi is not None and any(sh in shards for sh in multi.servers):
        return multi
    s = session.server
    if s is None or session.shard not in shards:
        return None
    if s.txn_status != b"I" or s.expect:
        return s
    return None


def fenced_sources(catalog: Catalog) -> frozenset[str]:
    """The shards that own the fenced ranges (before the flip: the sources)."""
    return frozenset(catalog.ring.owner(f.hi) for f in catalog.fences)
