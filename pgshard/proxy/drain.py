"""A graceful stop (SIGTERM): stop accepting, close clients as soon as they are idle outside a
transaction, let open transactions finish for up to shutdown_timeout, then close the rest."""

from __future__ import annotations

import asyncio
import logging
import time

from pgshard.protocol import messages as m
from pgshard.protocol.errors import AdminShutdown, PgError
from pgshard.proxy.limits import _waiting_for_client

log = logging.getLogger("pgshard.proxy")

TICK = 0.05


def _shutdown_error() -> PgError:
    return AdminShutdown("terminating connection due to administrator command: pgshard is shutting "
                         "down", severity="FATAL")


def idle_outside_txn(session) -> bool:
    """The client waits for nothing and holds no transaction open anywhere."""
    if session.pid == 0 or session.txn.multi is not None:
        return False
    if getattr(session, "admin", None) is not None:
        return True
    return _waiting_for_client(session) and session._status() == b"I"


def close_client(session, exc: PgError) -> None:
    tr = session.transport
    if tr is None or session.closed or tr.is_closing():
        return
    try:
        tr.write(m.error_from(exc))
    except Exception:
        pass
    tr.close()


async def drain(proxy, timeout: float) -> int:
    """Returns how many clients were still in a transaction when the timeout ran out (the
    caller's stop then closes them: their transactions roll back)."""
    proxy.closing = True            # a login under way is refused (57P03)
    proxy._stop_listening()         # new connections are refused by the kernel
    deadline = time.monotonic() + timeout
    first = True
    while True:
        busy = 0
        for s in list(proxy.limits.sessions()):
            if s.closed:
                continue
            if s.pid == 0 or idle_outside_txn(s):
                close_client(s, _shutdown_error())
            else:
                busy += 1
        if first:
            log.info("draining: no new connections; waiting up to %gs for %d client(s) in a "
                     "transaction", timeout, busy)
            first = False
        if not busy:
            return 0
        if time.monotonic() >= deadline:
            log.warning("shutdown_timeout (%gs) reached with %d client(s) still in a "
                        "transaction: closing them (their transactions roll back)",
                        timeout, busy)
            return busy
        await asyncio.sleep(TICK)
