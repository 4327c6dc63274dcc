"""Table tests for the client-limit cores: admission, the fd budget, expiry, log rate limit."""

from __future__ import annotations

import pytest

from pgshard.protocol.errors import TooManyConnections
from pgshard.proxy.limits import (
    ADMIT,
    FD_MARGIN,
    REFUSAL_SLOTS,
    REFUSAL_TIMEOUT,
    REFUSE,
    REFUSE_NOW,
    RateLimitedLog,
    Timeouts,
    admission,
    expiry,
    fd_budget,
    fd_reserve,
)


@pytest.mark.parametrize("admitted, refusing, max_conn, budget, expected", [
    (0, 0, 10, 100, (ADMIT, "")),
    (9, 0, 10, 100, (ADMIT, "")),
    (10, 0, 10, 100, (REFUSE, "max_client_conn")),          # the (max+1)-th socket
    (10, REFUSAL_SLOTS - 1, 10, 100, (REFUSE, "max_client_conn")),
    (10, REFUSAL_SLOTS, 10, 100, (REFUSE_NOW, "max_client_conn")),
    (49, 0, 1000, 50, (ADMIT, "")),
    (50, 0, 1000, 50, (REFUSE, "fd_budget")),                # the budget binds first
    (50, REFUSAL_SLOTS, 1000, 50, (REFUSE_NOW, "fd_budget")),
    (50, 0, 50, 50, (REFUSE, "max_client_conn")),            # both: the configured limit
    (0, 0, 10, 0, (REFUSE, "fd_budget")),                    # no room at all
])
def test_admission(admitted, refusing, max_conn, budget, expected):
    assert admission(admitted, refusing, max_conn, budget) == expected


@pytest.mark.parametrize("soft, in_use, reserve, expected", [
    (1024, 20, 100, 904),
    (256, 16, 112, 128),
    (100, 20, 100, 0),          # never negative
])
def test_fd_budget(soft, in_use, reserve, expected):
    assert fd_budget(soft, in_use, reserve) == expected


def test_fd_reserve_counts_every_pool_on_every_server():
    # two credentials (pool sizes 20 and 5) over 2 shards x (primary + replica) = 4 servers
    assert fd_reserve([20, 5], 4, extra=8) == 25 * 4 + 8 + REFUSAL_SLOTS + FD_MARGIN


@pytest.mark.parametrize("t, tick", [
    (Timeouts(15, 0, 0), 0.5),
    (Timeouts(1, 0, 0), 0.1),
    (Timeouts(0.1, 0, 0), 0.05),
    (Timeouts(0, 0, 2), 0.2),
    (Timeouts(0, 0, 0), REFUSAL_TIMEOUT / 10),
])
def test_tick(t, tick):
    assert t.tick() == pytest.approx(tick)


T = Timeouts(login=15, idle=60, idle_txn=30)
REFUSAL = TooManyConnections("too many client connections (max_client_conn = 5)")


@pytest.mark.parametrize("t, kw, sqlstate", [
    # not logged in: only the login timeout counts, from accept
    (T, dict(age=14.9, logged_in=False, idle_for=None), None),
    (T, dict(age=15, logged_in=False, idle_for=None), "08P01"),
    (Timeouts(0, 60, 30), dict(age=9999, logged_in=False, idle_for=None), None),   # off
    # logged in and busy: nothing expires, however long
    (T, dict(age=9999, logged_in=True, idle_for=None, status=b"T"), None),
    (T, dict(age=9999, logged_in=True, idle_for=None, status=b"I"), None),
    # idle outside a transaction
    (T, dict(age=9999, logged_in=True, idle_for=59, status=b"I"), None),
    (T, dict(age=9999, logged_in=True, idle_for=60, status=b"I"), "57P05"),
    (Timeouts(15, 0, 30), dict(age=9999, logged_in=True, idle_for=1e6, status=b"I"), None),
    # idle inside one (open or failed)
    (T, dict(age=9999, logged_in=True, idle_for=29, status=b"T"), None),
    (T, dict(age=9999, logged_in=True, idle_for=30, status=b"T"), "25P03"),
    (T, dict(age=9999, logged_in=True, idle_for=30, status=b"E"), "25P03"),
    (Timeouts(15, 60, 0), dict(age=9999, logged_in=True, idle_for=1e6, status=b"T"), None),
    # a socket admitted only to be refused gets its refusal after REFUSAL_TIMEOUT at most
    (T, dict(age=REFUSAL_TIMEOUT - 0.1, logged_in=False, idle_for=None, refusal=REFUSAL), None),
    (T, dict(age=REFUSAL_TIMEOUT, logged_in=False, idle_for=None, refusal=REFUSAL), "53300"),
    (Timeouts(1, 0, 0), dict(age=1, logged_in=False, idle_for=None, refusal=REFUSAL), "53300"),
])
def test_expiry(t, kw, sqlstate):
    kw = {"status": b"I", "refusal": None, **kw}
    exc = expiry(t, **kw)
    assert (exc.sqlstate if exc else None) == sqlstate
    if exc is not None:
        assert exc.severity == "FATAL"


def test_expiry_messages_are_postgresqls():
    idle = expiry(T, age=0, logged_in=True, refusal=None, idle_for=60, status=b"I")
    txn = expiry(T, age=0, logged_in=True, refusal=None, idle_for=30, status=b"T")
    assert idle.message == "terminating connection due to idle-session timeout"
    assert txn.message == "terminating connection due to idle-in-transaction timeout"


def test_rate_limited_log_counts_what_it_suppressed():
    lim = RateLimitedLog(interval=60)
    assert lim.due(100.0) == 0
    assert [lim.due(100.0 + i) for i in range(1, 6)] == [None] * 5
    assert lim.due(159.9) is None
    assert lim.due(160.0) == 6
    assert lim.due(161.0) is None
