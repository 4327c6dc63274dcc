"""The login limiter's pure core on a fake clock: per-user lockout with exponential back-off,
per-address failure budget, in-flight attempts, forgetting, bounded memory."""

from __future__ import annotations

import pytest

from pgshard.config import ConfigError, config_from_dict
from pgshard.control.login_limits import LoginLimiter, LoginThrottled


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(**kw) -> tuple[LoginLimiter, Clock]:
    clock = Clock()
    settings = {"max_failures": 3, "lockout": 10.0, "lockout_max": 40.0, "rate_per_ip": 0,
                **kw}
    return LoginLimiter(clock=clock, **settings), clock


def fail(lim: LoginLimiter, user: str = "u", ip: str | None = "10.0.0.1"):
    return lim.failed(lim.begin(user, ip))


def throttled(lim: LoginLimiter, user: str = "u", ip: str | None = "10.0.0.1") -> float:
    with pytest.raises(LoginThrottled) as info:
        lim.begin(user, ip)
    return info.value.retry_after


def test_user_locked_after_max_failures_then_backs_off_exponentially():
    lim, clock = limiter()
    assert [fail(lim) for _ in range(2)] == [None, None]
    lockout = fail(lim)
    assert (lockout.user, lockout.failures, lockout.seconds) == ("u", 3, 10.0)
    assert throttled(lim) == pytest.approx(10.0)
    assert throttled(lim, ip="10.9.9.9") == pytest.approx(10.0)  # from any address
    clock.now += 4
    assert throttled(lim) == pytest.approx(6.0)
    clock.now += 6
    # After the window one more guess is allowed; failing it locks for twice as long.
    assert fail(lim).seconds == 20.0
    clock.now += 20
    assert fail(lim).seconds == 40.0
    clock.now += 40
    assert fail(lim).seconds == 40.0   # capped at lockout_max
    lim.succeeded(lim.begin("other", "10.0.0.1"))   # other users are unaffected


def test_success_ends_the_streak():
    lim, clock = limiter()
    fail(lim)
    fail(lim)
    lim.succeeded(lim.begin("u", "10.0.0.1"))
    assert [fail(lim) for _ in range(2)] == [None, None]
    assert fail(lim).seconds == 10.0


def test_quiet_streak_is_forgotten():
    lim, clock = limiter()
    fail(lim)
    fail(lim)
    clock.now += 41    # lockout_max without a failure
    assert [fail(lim) for _ in range(2)] == [None, None]


def test_parallel_guesses_cannot_slip_past_the_limit():
    lim, _ = limiter()
    attempts = [lim.begin("u", f"10.0.0.{i}") for i in range(3)]
    assert throttled(lim, ip="10.0.0.9") == 1.0
    assert [lim.failed(a) for a in attempts][-1].seconds == 10.0
    # Reporting an attempt twice counts it once.
    assert lim.failed(attempts[0]) is None


def test_per_ip_budget_blocks_only_that_address():
    lim, clock = limiter(max_failures=0, rate_per_ip=6)   # 6 a minute: one per 10 s
    for i in range(6):
        assert fail(lim, f"user{i}") is None
    assert throttled(lim, "admin") == pytest.approx(10.0)
    lim.succeeded(lim.begin("admin", "10.0.0.2"))         # another address is unaffected
    clock.now += 5
    assert throttled(lim, "admin") == pytest.approx(5.0)
    clock.now += 5
    lim.succeeded(lim.begin("admin", "10.0.0.1"))         # refilled one, and got it back
    assert fail(lim, "x") is None
    assert throttled(lim, "y") == pytest.approx(10.0)


def test_success_refunds_the_address_token_and_abandoned_learns_nothing():
    lim, _ = limiter(rate_per_ip=2)
    for _ in range(5):
        lim.succeeded(lim.begin("u", "10.0.0.1"))
    for _ in range(5):
        lim.abandoned(lim.begin("u", "10.0.0.1"))
    assert fail(lim) is None and fail(lim) is None
    throttled(lim)


def test_disabled_limits_and_no_address():
    lim, _ = limiter(max_failures=0, rate_per_ip=0)
    for _ in range(100):
        assert fail(lim) is None
    lim, _ = limiter(rate_per_ip=1)
    for _ in range(2):
        assert fail(lim, ip=None) is None   # no address known: only the user limit applies


def test_tracked_entries_are_bounded():
    lim = LoginLimiter(max_failures=3, rate_per_ip=5, max_tracked=100)
    for i in range(1000):
        lim.failed(lim.begin(f"user{i}", f"10.0.{i // 250}.{i % 250}"))
    assert len(lim._users) <= 100 and len(lim._ips) <= 100


def test_retry_after_header_is_whole_seconds():
    assert LoginThrottled("x", 0.2).retry_after_header == "1"
    assert LoginThrottled("x", 2.01).retry_after_header == "3"


@pytest.mark.parametrize("settings,ok", [
    ({}, True),
    ({"login_max_failures": 0, "login_rate_per_ip": 0}, True),
    ({"login_max_failures": -1}, False),
    ({"login_max_failures": 2.5}, False),
    ({"login_lockout": 0}, False),
    ({"login_lockout": "30"}, False),
    ({"login_lockout_max": -1}, False),
    ({"login_rate_per_ip": True}, False),
])
def test_login_settings_are_validated(settings, ok):
    if ok:
        sc = config_from_dict({"sidecar": settings}).sidecar
        LoginLimiter.from_settings(sc)
    else:
        with pytest.raises(ConfigError, match="login_"):
            config_from_dict({"sidecar": settings})


def test_openapi_documents_the_429_of_login():
    from pgshard.control.openapi import build_document
    from pgshard.control.routes import ROUTES

    doc = build_document(ROUTES)
    responses = doc["paths"]["/api/v1/auth/login"]["post"]["responses"]
    assert "Retry-After" in responses["429"]["headers"]
    assert all("429" not in op["responses"] for path, ops in doc["paths"].items()
               for op in ops.values() if path != "/api/v1/auth/login")
